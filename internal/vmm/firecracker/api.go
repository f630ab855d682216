package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// defaultTimeout bounds an API request whose context has no deadline.
const defaultTimeout = 10 * time.Second

// APIError is a request that Firecracker's API answered with an error
// status. Firecracker explains its refusal in FaultMessage.
type APIError struct {
	// Method and Path name the request, e.g. "PUT" and "/machine-config".
	Method, Path string
	// Status is the HTTP status code.
	Status int
	// FaultMessage is the "fault_message" of Firecracker's error body, or
	// the raw body when it is not one.
	FaultMessage string
}

// Error implements error: "firecracker PUT /machine-config: 400: <fault>".
func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker %s %s: %d: %s", e.Method, e.Path, e.Status, e.FaultMessage)
}

// client talks to one Firecracker API socket. It opens a connection per
// request (keep-alives off), so it holds nothing between calls.
type client struct {
	sock string
	hc   *http.Client
}

func newClient(sock string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	return &client{sock: sock, hc: &http.Client{Transport: tr}}
}

// do sends one request with body (nil for none) encoded as JSON and decodes
// a 200 answer into out (when not nil). A context without deadline gets
// defaultTimeout.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host part is not used for routing; Firecracker ignores it.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, FaultMessage: faultMessage(raw)}
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// faultMessage extracts Firecracker's {"fault_message": "..."} error text.
func faultMessage(raw []byte) string {
	var e struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(raw, &e) == nil && e.FaultMessage != "" {
		return e.FaultMessage
	}
	if s := strings.TrimSpace(string(raw)); s != "" {
		return s
	}
	return "no error message"
}

func (c *client) put(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPut, path, body, nil)
}

func (c *client) patch(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPatch, path, body, nil)
}

// instanceInfo is GET /'s answer.
func (c *client) instanceInfo(ctx context.Context) (instanceInfo, error) {
	var info instanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// action sends PUT /actions with one action type.
func (c *client) action(ctx context.Context, typ string) error {
	return c.put(ctx, "/actions", instanceAction{ActionType: typ})
}
