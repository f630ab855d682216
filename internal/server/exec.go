package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
)

// NDJSON is the media type of streamed exec output.
const NDJSON = "application/x-ndjson"

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec. Exactly one of
// Cmd and Argv is set.
type ExecRequest struct {
	// Cmd is a shell command, run with `sh -lc`.
	Cmd string `json:"cmd,omitempty"`
	// Argv is a program and its arguments, run without a shell.
	Argv []string `json:"argv,omitempty"`
	// Env adds variables for this command.
	Env map[string]string `json:"env,omitempty"`
	// Cwd is the working directory (absolute).
	Cwd string `json:"cwd,omitempty"`
	// User is a user name or uid; empty means root.
	User string `json:"user,omitempty"`
	// TimeoutSeconds kills the command after this long; 0 means none.
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
	// Stdin is fed to the command.
	Stdin string `json:"stdin,omitempty"`
}

// ExecResult is the response of a collected exec.
type ExecResult struct {
	// ExitCode is the command's exit status (128+N when killed by signal N).
	ExitCode int `json:"exit_code"`
	// Stdout is the command's standard output (at most MaxOutputBytes).
	Stdout string `json:"stdout"`
	// Stderr is the command's standard error (at most MaxOutputBytes).
	Stderr string `json:"stderr"`
	// Truncated reports whether output beyond the limit was dropped.
	Truncated bool `json:"truncated"`
	// Signal names the signal that killed the command, if any.
	Signal string `json:"signal,omitempty"`
	// TimedOut reports whether the command was killed at its timeout.
	TimedOut bool `json:"timed_out,omitempty"`
}

// ExecEvent is one line of a streamed exec: type "stdout" or "stderr" with
// data, then one "exit" with the exit status, or one "error".
type ExecEvent struct {
	// Type is stdout, stderr, exit or error.
	Type string `json:"type"`
	// Data is a chunk of output (stdout, stderr).
	Data string `json:"data,omitempty"`
	// ExitCode, Signal and TimedOut describe the end (exit).
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Error is the failure (error).
	Error *ErrorInfo `json:"error,omitempty"`
}

// ErrorInfo is an error's kind and message.
type ErrorInfo struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

func (req *ExecRequest) options() (smolvm.ExecOptions, error) {
	if (len(req.Argv) == 0) == (req.Cmd == "") {
		return smolvm.ExecOptions{}, &smolvm.ConfigError{Field: "cmd", Rule: "give exactly one of cmd (a shell command) and argv (a non-empty array)"}
	}
	if req.Cwd != "" && !path.IsAbs(req.Cwd) {
		return smolvm.ExecOptions{}, &smolvm.ConfigError{Field: "cwd", Value: req.Cwd, Rule: "must be an absolute path"}
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > MaxTimeoutSeconds {
		return smolvm.ExecOptions{}, &smolvm.ConfigError{Field: "timeout_seconds", Rule: "must be between 0 (none) and 2592000"}
	}
	for k := range req.Env {
		if err := smolvm.ValidateEnvKey(k); err != nil {
			return smolvm.ExecOptions{}, err
		}
	}
	eo := smolvm.ExecOptions{Argv: req.Argv, Shell: req.Cmd, Env: req.Env, Dir: req.Cwd, User: req.User,
		Timeout: time.Duration(req.TimeoutSeconds * float64(time.Second))}
	if req.Stdin != "" {
		eo.Stdin = strings.NewReader(req.Stdin)
	}
	return eo, nil
}

// wantsNDJSON reports whether the request's Accept header asks for NDJSON.
func wantsNDJSON(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == NDJSON {
			return true
		}
	}
	return false
}

// capped keeps the first n bytes written to it.
type capped struct {
	buf       bytes.Buffer
	n         int
	truncated bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.n - c.buf.Len(); room < len(p) {
		c.truncated = true
		if room > 0 {
			c.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return c.buf.Write(p)
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request, key string) error {
	var req ExecRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	eo, err := req.options()
	if err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if wantsNDJSON(r) {
		return s.execStream(w, r, vm, eo)
	}
	out, errb := &capped{n: s.o.MaxOutputBytes}, &capped{n: s.o.MaxOutputBytes}
	eo.Stdout, eo.Stderr = out, errb
	start := time.Now()
	st, err := vm.Exec(r.Context(), eo)
	s.metrics.execDone(time.Since(start), err)
	if err != nil && !st.TimedOut {
		return err
	}
	return writeJSON(w, http.StatusOK, ExecResult{ExitCode: st.ExitCode, Stdout: out.buf.String(), Stderr: errb.buf.String(),
		Truncated: out.truncated || errb.truncated, Signal: st.Signal, TimedOut: st.TimedOut})
}

// eventWriter writes NDJSON events, flushing each, from many goroutines.
type eventWriter struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	rc  *http.ResponseController
	enc *json.Encoder
	err error
}

func (e *eventWriter) send(ev ExecEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if e.err = e.enc.Encode(ev); e.err == nil {
		e.err = e.rc.Flush()
	}
	return e.err
}

// stream is the io.Writer of one output stream.
type stream struct {
	e    *eventWriter
	kind string
}

func (s stream) Write(p []byte) (int, error) {
	if err := s.e.send(ExecEvent{Type: s.kind, Data: string(p)}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// execStream runs the command with its output sent as NDJSON events as it
// arrives. Errors before the command starts are ordinary error responses.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request, vm *smolvm.VM, eo smolvm.ExecOptions) error {
	w.Header().Set("Content-Type", NDJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	ew := &eventWriter{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
	ew.rc.Flush()
	eo.Stdout, eo.Stderr = stream{ew, "stdout"}, stream{ew, "stderr"}
	start := time.Now()
	st, err := vm.Exec(r.Context(), eo)
	s.metrics.execDone(time.Since(start), err)
	if err != nil && !st.TimedOut {
		kind, _ := apierr.Classify(err)
		ew.send(ExecEvent{Type: "error", Error: &ErrorInfo{Kind: kind, Message: err.Error()}})
		return nil
	}
	code := st.ExitCode
	ew.send(ExecEvent{Type: "exit", ExitCode: &code, Signal: st.Signal, TimedOut: st.TimedOut})
	return nil
}

// errBadPath is the rule for guest paths in the API.
var errBadPath = errors.New("must be an absolute, clean path (no '..', '.', '//' or trailing '/')")
