// Package client is the Go client of `smolvm serve`. Its methods mirror the
// SDK's (smolvm.Host and smolvm.VM) and its errors match the SDK's error
// kinds with errors.Is, so a program can switch between a local Host and a
// remote server.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
)

// Environment variables the client reads in FromEnv.
const (
	// HostEnv is the server's URL, e.g. http://127.0.0.1:7070.
	HostEnv = "SMOLVM_HOST"
	// APIKeyEnv is the API key.
	APIKeyEnv = "SMOLVM_API_KEY"
)

// maxStdin bounds the standard input an Exec sends (it travels in the JSON body).
const maxStdin = 512 << 10

// Client talks to one server. It is safe for concurrent use.
type Client struct {
	base *url.URL
	key  string
	hc   *http.Client
}

// Option tunes New.
type Option func(*Client)

// WithHTTPClient uses hc for requests (e.g. for custom TLS roots).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// New returns a client of the server at baseURL (http or https) using key.
func New(baseURL, key string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http://HOST:PORT or https://HOST:PORT: %w", baseURL, smolvm.ErrInvalidConfig)
	}
	c := &Client{base: u, key: key, hc: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// FromEnv returns a client of $SMOLVM_HOST with $SMOLVM_API_KEY.
func FromEnv() (*Client, error) { return New(os.Getenv(HostEnv), os.Getenv(APIKeyEnv)) }

// Error is an error response of the server. It matches the SDK error kind of
// its Kind with errors.Is.
type Error struct {
	// Status is the HTTP status.
	Status int
	// Kind is the API's error kind, e.g. not_found.
	Kind string
	// Message is the server's message.
	Message string
}

// Error implements error.
func (e *Error) Error() string { return e.Message }

// Is reports whether target is the SDK kind of e.
func (e *Error) Is(target error) bool {
	k := apierr.SDKKind(e.Kind)
	return k != nil && k == target
}

// Sandbox is the server's view of a VM: its info plus metadata and timeout.
type Sandbox struct {
	smolvm.VMInfo
	// Metadata are the labels given at creation.
	Metadata map[string]string `json:"metadata"`
	// ExpiresAt is when it times out; nil without a timeout.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// OnTimeout is delete or save.
	OnTimeout string `json:"on_timeout"`
}

func (c *Client) url(p string, q url.Values) string {
	u := *c.base
	u.Path = c.base.Path + p
	u.RawQuery = q.Encode()
	return u.String()
}

// do sends a request and returns the response of a success; an error
// response becomes an *Error.
func (c *Client) do(ctx context.Context, method, p string, q url.Values, body io.Reader, ctype string, hdr map[string]string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(p, q), body)
	if err != nil {
		return nil, err
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w: %w", method, p, err, smolvm.ErrTimeout)
		}
		return nil, fmt.Errorf("%s %s: %w: %w", method, p, err, smolvm.ErrUnavailable)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

func decodeError(resp *http.Response) error {
	var b struct {
		Error struct {
			Kind    string `json:"kind"`
			Message string `json:"message"`
		} `json:"error"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := json.Unmarshal(data, &b); err != nil || b.Error.Kind == "" {
		return &Error{Status: resp.StatusCode, Kind: apierr.Internal, Message: fmt.Sprintf("server answered %s: %s", resp.Status, strings.TrimSpace(string(data)))}
	}
	return &Error{Status: resp.StatusCode, Kind: b.Error.Kind, Message: b.Error.Message}
}

// call sends in as JSON (nil: no body) and decodes the response into out (nil: none).
func (c *Client) call(ctx context.Context, method, p string, q url.Values, in, out any) error {
	var body io.Reader
	ctype := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, p, q, body, ctype, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad response: %w", method, p, err)
	}
	return nil
}

// CreateOptions are the server's own fields of a create.
type CreateOptions struct {
	// TimeoutSeconds deletes the sandbox this long after creation unless extended.
	TimeoutSeconds int
	// OnTimeout is delete (default) or save.
	OnTimeout string
	// Metadata are labels to filter lists by.
	Metadata map[string]string
}

type createBody struct {
	smolvm.VMConfig
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
	OnTimeout      string            `json:"on_timeout,omitempty"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	Start          *bool             `json:"start"`
}

func (c *Client) create(ctx context.Context, cfg smolvm.VMConfig, start bool, co []CreateOptions) (*VM, error) {
	b := createBody{VMConfig: cfg, Start: &start}
	if len(co) > 0 {
		b.TimeoutSeconds, b.OnTimeout, b.Metadata = co[0].TimeoutSeconds, co[0].OnTimeout, co[0].Metadata
	}
	var sb Sandbox
	if err := c.call(ctx, http.MethodPost, "/v1/sandboxes", nil, b, &sb); err != nil {
		return nil, err
	}
	return &VM{c: c, id: sb.VMID, sb: sb}, nil
}

// Create records a sandbox without booting it, like smolvm.Host.Create.
func (c *Client) Create(ctx context.Context, cfg smolvm.VMConfig, co ...CreateOptions) (*VM, error) {
	return c.create(ctx, cfg, false, co)
}

// New creates and boots a sandbox, like smolvm.Host.New.
func (c *Client) New(ctx context.Context, cfg smolvm.VMConfig, co ...CreateOptions) (*VM, error) {
	return c.create(ctx, cfg, true, co)
}

// Get returns a handle on the sandbox id, like smolvm.Host.Get.
func (c *Client) Get(ctx context.Context, id string) (*VM, error) {
	vm := &VM{c: c, id: id}
	if err := vm.Refresh(ctx); err != nil {
		return nil, err
	}
	return vm, nil
}

// ListOptions filter List.
type ListOptions struct {
	// Status keeps only sandboxes in this state.
	Status smolvm.VMState
	// Metadata keeps only sandboxes with all these labels.
	Metadata map[string]string
}

// Sandboxes lists the key's sandboxes with their metadata.
func (c *Client) Sandboxes(ctx context.Context, lo ListOptions) ([]Sandbox, error) {
	q := url.Values{}
	if lo.Status != "" {
		q.Set("state", string(lo.Status))
	}
	for k, v := range lo.Metadata {
		q.Set("metadata."+k, v)
	}
	var out []Sandbox
	err := c.call(ctx, http.MethodGet, "/v1/sandboxes", q, nil, &out)
	return out, err
}

// List returns the key's sandboxes' infos, oldest first, like smolvm.Host.List.
func (c *Client) List(ctx context.Context, lo smolvm.ListOptions) ([]smolvm.VMInfo, error) {
	sbs, err := c.Sandboxes(ctx, ListOptions{Status: lo.Status})
	if err != nil {
		return nil, err
	}
	out := make([]smolvm.VMInfo, len(sbs))
	for i, sb := range sbs {
		out[i] = sb.VMInfo
	}
	return out, nil
}

// Health checks that the server answers.
func (c *Client) Health(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/healthz", nil, nil, nil)
}

// VM is a handle on one sandbox of a server, like smolvm.VM.
type VM struct {
	c  *Client
	id string
	sb Sandbox
}

// ID returns the sandbox's id.
func (vm *VM) ID() string { return vm.id }

// Info returns the sandbox's last known state.
func (vm *VM) Info() smolvm.VMInfo { return vm.sb.VMInfo }

// Sandbox returns the sandbox's last known state with metadata and timeout.
func (vm *VM) Sandbox() Sandbox { return vm.sb }

// GetIP returns the guest's address, or "".
func (vm *VM) GetIP() string {
	if n := vm.sb.Network; n != nil {
		return n.GuestIP()
	}
	return ""
}

func (vm *VM) path(suffix string) string { return "/v1/sandboxes/" + url.PathEscape(vm.id) + suffix }

// Refresh re-reads the sandbox's state.
func (vm *VM) Refresh(ctx context.Context) error {
	return vm.c.call(ctx, http.MethodGet, vm.path(""), nil, nil, &vm.sb)
}

// Release does nothing: a remote handle holds no connection. It exists to
// mirror smolvm.VM.
func (vm *VM) Release() error { return nil }

func (vm *VM) op(ctx context.Context, op string) error {
	return vm.c.call(ctx, http.MethodPost, vm.path("/"+op), nil, nil, &vm.sb)
}

// Start boots the sandbox.
func (vm *VM) Start(ctx context.Context) error { return vm.op(ctx, "start") }

// Stop powers the sandbox off (its disk is kept).
func (vm *VM) Stop(ctx context.Context) error { return vm.op(ctx, "stop") }

// Pause stops the sandbox's vCPUs.
func (vm *VM) Pause(ctx context.Context) error { return vm.op(ctx, "pause") }

// Resume restarts a paused sandbox's vCPUs.
func (vm *VM) Resume(ctx context.Context) error { return vm.op(ctx, "resume") }

// Delete stops and removes the sandbox.
func (vm *VM) Delete(ctx context.Context) error {
	return vm.c.call(ctx, http.MethodDelete, vm.path(""), nil, nil, nil)
}

// ForceDelete kills and removes the sandbox.
func (vm *VM) ForceDelete(ctx context.Context) error {
	return vm.c.call(ctx, http.MethodDelete, vm.path(""), url.Values{"force": {"true"}}, nil, nil)
}

// Close deletes the sandbox, like smolvm.VM.Close.
func (vm *VM) Close() error { return vm.ForceDelete(context.Background()) }

// SetTimeout makes the sandbox time out d from now (0: never).
func (vm *VM) SetTimeout(ctx context.Context, d time.Duration) error {
	return vm.c.call(ctx, http.MethodPost, vm.path("/timeout"), nil, map[string]int{"timeout_seconds": int((d + time.Second - 1) / time.Second)}, &vm.sb)
}

// execBody is the JSON of an exec request.
type execBody struct {
	Cmd            string            `json:"cmd,omitempty"`
	Argv           []string          `json:"argv,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Cwd            string            `json:"cwd,omitempty"`
	User           string            `json:"user,omitempty"`
	TimeoutSeconds float64           `json:"timeout_seconds,omitempty"`
	Stdin          string            `json:"stdin,omitempty"`
}

// execEvent is one NDJSON line of a streamed exec.
type execEvent struct {
	Type     string `json:"type"`
	Data     string `json:"data"`
	ExitCode *int   `json:"exit_code"`
	Signal   string `json:"signal"`
	TimedOut bool   `json:"timed_out"`
	Error    *struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"error"`
}

// Exec runs a command, streaming its output to eo.Stdout and eo.Stderr as
// it arrives, like smolvm.VM.Exec. Standard input is read whole (at most
// 512 KiB) before the command starts.
func (vm *VM) Exec(ctx context.Context, eo smolvm.ExecOptions) (smolvm.ExitStatus, error) {
	b := execBody{Cmd: eo.Shell, Argv: eo.Argv, Env: eo.Env, Cwd: eo.Dir, User: eo.User, TimeoutSeconds: eo.Timeout.Seconds()}
	if eo.Stdin != nil {
		in, err := io.ReadAll(io.LimitReader(eo.Stdin, maxStdin+1))
		if err != nil {
			return smolvm.ExitStatus{}, err
		}
		if len(in) > maxStdin {
			return smolvm.ExitStatus{}, fmt.Errorf("exec: standard input over %d bytes cannot be sent to a remote server: %w", maxStdin, smolvm.ErrInvalidConfig)
		}
		b.Stdin = string(in)
	}
	data, err := json.Marshal(b)
	if err != nil {
		return smolvm.ExitStatus{}, err
	}
	resp, err := vm.c.do(ctx, http.MethodPost, vm.path("/exec"), nil, bytes.NewReader(data), "application/json", map[string]string{"Accept": "application/x-ndjson"})
	if err != nil {
		return smolvm.ExitStatus{}, err
	}
	defer resp.Body.Close()
	return readEvents(resp.Body, eo.Stdout, eo.Stderr, "exec "+vm.id)
}

// Run runs a shell command and collects its output, like smolvm.VM.Run.
func (vm *VM) Run(ctx context.Context, command string, opts ...smolvm.RunOption) (smolvm.CommandResult, error) {
	var out, errb bytes.Buffer
	eo := smolvm.ExecOptions{Shell: command, Stdout: &out, Stderr: &errb}
	for _, f := range opts {
		f(&eo)
	}
	st, err := vm.Exec(ctx, eo)
	return smolvm.CommandResult{ExitCode: st.ExitCode, Stdout: out.String(), Stderr: errb.String()}, err
}

// Upload streams r into the guest file guestPath with mode.
func (vm *VM) Upload(ctx context.Context, guestPath string, r io.Reader, mode os.FileMode) error {
	q := url.Values{"path": {guestPath}, "mode": {fmt.Sprintf("%04o", mode.Perm())}}
	resp, err := vm.c.do(ctx, http.MethodPut, vm.path("/files"), q, io.NopCloser(r), "application/octet-stream", nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// Download streams the guest file guestPath into w and returns its mode.
func (vm *VM) Download(ctx context.Context, guestPath string, w io.Writer) (os.FileMode, error) {
	resp, err := vm.c.do(ctx, http.MethodGet, vm.path("/files"), url.Values{"path": {guestPath}}, nil, "", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return 0, fmt.Errorf("download %s: %w: %w", guestPath, err, smolvm.ErrCommandUnavailable)
	}
	m, err := strconv.ParseUint(resp.Trailer.Get("X-File-Mode"), 8, 32)
	if err != nil {
		return 0, fmt.Errorf("download %s: the transfer did not complete: %w", guestPath, smolvm.ErrCommandUnavailable)
	}
	return os.FileMode(m), nil
}

// UploadFile copies the host file localPath to guestPath, keeping its mode.
func (vm *VM) UploadFile(ctx context.Context, localPath, guestPath string) error {
	f, err := os.Open(localPath)
	if err != nil {
		return fmt.Errorf("upload: %w: %w", err, smolvm.ErrNotFound)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("upload: %w: %w", err, smolvm.ErrNotFound)
	}
	if fi.IsDir() {
		return fmt.Errorf("upload: %s is a directory: %w", localPath, smolvm.ErrInvalidConfig)
	}
	return vm.Upload(ctx, guestPath, f, fi.Mode().Perm())
}

// DownloadFile copies the guest file guestPath to localPath, keeping its
// mode; localPath is replaced atomically and nothing is left on failure.
func (vm *VM) DownloadFile(ctx context.Context, guestPath, localPath string) (retErr error) {
	tmp, err := os.CreateTemp(filepath.Dir(localPath), "."+filepath.Base(localPath)+".smolvm-*")
	if err != nil {
		return fmt.Errorf("download: %w: %w", err, smolvm.ErrInvalidConfig)
	}
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	mode, err := vm.Download(ctx, guestPath, tmp)
	if err != nil {
		return err
	}
	if err := tmp.Chmod(mode.Perm()); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), localPath)
}

// Ports lists the sandbox's port forwards.
func (vm *VM) Ports(ctx context.Context) ([]smolvm.PortInfo, error) {
	var out []smolvm.PortInfo
	err := vm.c.call(ctx, http.MethodGet, vm.path("/ports"), nil, nil, &out)
	return out, err
}

// ExposeLocal forwards hostPort (0: pick one) on the server's host to
// guestPort and returns the host port.
func (vm *VM) ExposeLocal(ctx context.Context, guestPort, hostPort int) (int, error) {
	var p smolvm.PortInfo
	err := vm.c.call(ctx, http.MethodPost, vm.path("/ports"), nil, map[string]int{"guest_port": guestPort, "host_port": hostPort}, &p)
	return p.HostPort, err
}

// UnexposeLocal removes the forward of hostPort.
func (vm *VM) UnexposeLocal(ctx context.Context, hostPort int) error {
	return vm.c.call(ctx, http.MethodDelete, vm.path("/ports/"+strconv.Itoa(hostPort)), nil, nil, nil)
}
