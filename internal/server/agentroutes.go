package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
)

// Background processes, terminals and the filesystem API.
func init() {
	extraRoutes = append(extraRoutes, func(s *Server) {
		s.handle("POST /v1/sandboxes/{id}/processes", false, s.startProcess)
		s.handle("GET /v1/sandboxes/{id}/processes", false, s.listProcesses)
		s.handle("POST /v1/sandboxes/{id}/processes/{pid}/signal", false, s.signalProcess)
		s.handle("POST /v1/sandboxes/{id}/processes/{pid}/stdin", false, s.processStdin)
		s.handle("POST /v1/sandboxes/{id}/processes/{pid}/resize", false, s.resizeProcess)
		s.handle("POST /v1/sandboxes/{id}/processes/{pid}/wait", false, s.waitProcess)
		s.handle("GET /v1/sandboxes/{id}/processes/{pid}/attach", false, s.attachProcess)
		s.handle("GET /v1/sandboxes/{id}/pty", false, s.pty)
		s.handle("GET /v1/sandboxes/{id}/fs/stat", false, s.fsStat)
		s.handle("GET /v1/sandboxes/{id}/fs/list", false, s.fsList)
		s.handle("POST /v1/sandboxes/{id}/fs/mkdir", false, s.fsMkdir)
		s.handle("POST /v1/sandboxes/{id}/fs/move", false, s.fsMove)
		s.handle("POST /v1/sandboxes/{id}/fs/remove", false, s.fsRemove)
		s.handle("GET /v1/sandboxes/{id}/fs/watch", false, s.fsWatch)
	})
}

// maxListEntries bounds a listing the server collects into one response.
const maxListEntries = 100000

// ProcessRequest is the body of POST /v1/sandboxes/{id}/processes.
type ProcessRequest struct {
	Cmd            string            `json:"cmd,omitempty"`
	Argv           []string          `json:"argv,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Cwd            string            `json:"cwd,omitempty"`
	User           string            `json:"user,omitempty"`
	Tag            string            `json:"tag,omitempty"`
	Stdin          bool              `json:"stdin,omitempty"`
	Pty            bool              `json:"pty,omitempty"`
	Rows           uint16            `json:"rows,omitempty"`
	Cols           uint16            `json:"cols,omitempty"`
	TimeoutSeconds float64           `json:"timeout_seconds,omitempty"`
	BufferBytes    int               `json:"buffer_bytes,omitempty"`
}

func pidOf(r *http.Request) (int, error) {
	pid, err := strconv.Atoi(r.PathValue("pid"))
	if err != nil || pid <= 0 {
		return 0, &smolvm.ConfigError{Field: "pid", Value: r.PathValue("pid"), Rule: "must be a positive process id"}
	}
	return pid, nil
}

func (s *Server) startProcess(w http.ResponseWriter, r *http.Request, key string) error {
	var req ProcessRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > MaxTimeoutSeconds {
		return &smolvm.ConfigError{Field: "timeout_seconds", Rule: "must be between 0 (none) and 2592000"}
	}
	if req.Cwd != "" && !path.IsAbs(req.Cwd) {
		return &smolvm.ConfigError{Field: "cwd", Value: req.Cwd, Rule: "must be an absolute path"}
	}
	if req.BufferBytes < 0 || req.BufferBytes > 64<<20 {
		return &smolvm.ConfigError{Field: "buffer_bytes", Value: strconv.Itoa(req.BufferBytes), Rule: "must be between 0 (1 MiB) and 64 MiB"}
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	pid, err := vm.StartProcess(r.Context(), smolvm.ProcessOptions{Argv: req.Argv, Shell: req.Cmd, Env: req.Env, Dir: req.Cwd, User: req.User,
		Tag: req.Tag, Stdin: req.Stdin, Pty: req.Pty, Rows: req.Rows, Cols: req.Cols, BufferBytes: req.BufferBytes,
		Timeout: time.Duration(req.TimeoutSeconds * float64(time.Second))})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, map[string]int{"pid": pid})
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request, key string) error {
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	ps, err := vm.Processes(r.Context())
	if err != nil {
		return err
	}
	if ps == nil {
		ps = []smolvm.ProcessInfo{}
	}
	return writeJSON(w, http.StatusOK, ps)
}

// SignalRequest is the body of POST .../processes/{pid}/signal.
type SignalRequest struct {
	// Signal is "TERM", "SIGKILL", "9", ...; empty means SIGTERM.
	Signal string `json:"signal"`
}

func (s *Server) signalProcess(w http.ResponseWriter, r *http.Request, key string) error {
	var req SignalRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	pid, err := pidOf(r)
	if err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if err := vm.Signal(r.Context(), pid, req.Signal); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// StdinRequest is the body of POST .../processes/{pid}/stdin.
type StdinRequest struct {
	// Data is written to the process's stdin.
	Data string `json:"data,omitempty"`
	// Close closes its stdin afterwards.
	Close bool `json:"close,omitempty"`
}

func (s *Server) processStdin(w http.ResponseWriter, r *http.Request, key string) error {
	var req StdinRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	pid, err := pidOf(r)
	if err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if req.Data != "" {
		if err := vm.SendStdin(r.Context(), pid, []byte(req.Data)); err != nil {
			return err
		}
	}
	if req.Close {
		if err := vm.CloseStdin(r.Context(), pid); err != nil {
			return err
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ResizeRequest is a terminal size.
type ResizeRequest struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

func (req ResizeRequest) check() error {
	if req.Rows == 0 || req.Cols == 0 {
		return &smolvm.ConfigError{Field: "rows", Value: fmt.Sprintf("%dx%d", req.Rows, req.Cols), Rule: "rows and cols must be positive"}
	}
	return nil
}

func (s *Server) resizeProcess(w http.ResponseWriter, r *http.Request, key string) error {
	var req ResizeRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if err := req.check(); err != nil {
		return err
	}
	pid, err := pidOf(r)
	if err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if err := vm.ResizeProcess(r.Context(), pid, req.Rows, req.Cols); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) waitProcess(w http.ResponseWriter, r *http.Request, key string) error {
	pid, err := pidOf(r)
	if err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	st, err := vm.WaitProcess(r.Context(), pid)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, st)
}

// attachProcess streams a background process's output as NDJSON events
// (its buffered output first, unless ?replay=false) until it exits; the
// process keeps running when the client goes away.
func (s *Server) attachProcess(w http.ResponseWriter, r *http.Request, key string) error {
	pid, err := pidOf(r)
	if err != nil {
		return err
	}
	replay := true
	if v := r.URL.Query().Get("replay"); v != "" {
		if replay, err = strconv.ParseBool(v); err != nil {
			return &smolvm.ConfigError{Field: "replay", Value: v, Rule: "must be true or false"}
		}
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	// Fail before streaming when the process does not exist.
	ps, err := vm.Processes(r.Context())
	if err != nil {
		return err
	}
	found := false
	for _, p := range ps {
		found = found || p.Pid == pid
	}
	if !found {
		return fmt.Errorf("process %d: %w", pid, smolvm.ErrNotFound)
	}
	ew := startNDJSON(w)
	st, err := vm.Attach(r.Context(), pid, smolvm.AttachOptions{Stdout: stream{ew, "stdout"}, Stderr: stream{ew, "stderr"}, NoReplay: !replay})
	ew.end(st, err)
	return nil
}

// startNDJSON begins an NDJSON response.
func startNDJSON(w http.ResponseWriter) *eventWriter {
	w.Header().Set("Content-Type", NDJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	ew := &eventWriter{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
	ew.rc.Flush()
	return ew
}

// end sends the exit event, or an error event.
func (e *eventWriter) end(st smolvm.ExitStatus, err error) {
	if err != nil && !st.TimedOut {
		kind, _ := apierr.Classify(err)
		e.send(ExecEvent{Type: "error", Error: &ErrorInfo{Kind: kind, Message: err.Error()}})
		return
	}
	code := st.ExitCode
	e.send(ExecEvent{Type: "exit", ExitCode: &code, Signal: st.Signal, TimedOut: st.TimedOut})
}

// PtyControl is a text message on the terminal WebSocket: from the client
// "resize" (rows, cols) or "signal" (signal); from the server "exit"
// (exit_code, signal) or "error" (error), just before it closes.
type PtyControl struct {
	Type     string     `json:"type"`
	Rows     uint16     `json:"rows,omitempty"`
	Cols     uint16     `json:"cols,omitempty"`
	Signal   string     `json:"signal,omitempty"`
	ExitCode *int       `json:"exit_code,omitempty"`
	Error    *ErrorInfo `json:"error,omitempty"`
}

// maxPtyMessage bounds a message from the client.
const maxPtyMessage = 64 << 10

// pty runs a terminal over a WebSocket: binary messages carry raw terminal
// bytes both ways; text messages carry PtyControl. Query: cmd (a shell
// command; default the login shell), rows, cols, term, cwd, user.
func (s *Server) pty(w http.ResponseWriter, r *http.Request, key string) error {
	q := r.URL.Query()
	opts := smolvm.TerminalOptions{Shell: q.Get("cmd"), Term: q.Get("term"), Dir: q.Get("cwd"), User: q.Get("user")}
	for _, f := range []struct {
		name string
		v    *uint16
	}{{"rows", &opts.Rows}, {"cols", &opts.Cols}} {
		if v := q.Get(f.name); v != "" {
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				return &smolvm.ConfigError{Field: f.name, Value: v, Rule: "must be a positive number"}
			}
			*f.v = uint16(n)
		}
	}
	if opts.Dir != "" && !path.IsAbs(opts.Dir) {
		return &smolvm.ConfigError{Field: "cwd", Value: opts.Dir, Rule: "must be an absolute path"}
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return apierr.New(apierr.BadRequest, "this route is a WebSocket: send Upgrade: websocket")
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	term, err := vm.Terminal(ctx, opts)
	if err != nil {
		return err
	}
	defer term.Close()
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{})
	if err != nil {
		return nil // Accept wrote the response
	}
	defer c.CloseNow()
	c.SetReadLimit(maxPtyMessage)
	// Client -> terminal.
	go func() {
		defer cancel()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				if _, err := term.Write(data); err != nil {
					return
				}
				continue
			}
			var m PtyControl
			if json.Unmarshal(data, &m) != nil {
				continue
			}
			switch m.Type {
			case "resize":
				if m.Rows > 0 && m.Cols > 0 {
					term.Resize(ctx, m.Rows, m.Cols)
				}
			case "signal":
				term.Signal(ctx, m.Signal)
			}
		}
	}()
	// Terminal -> client.
	buf := make([]byte, 32<<10)
	for {
		n, err := term.Read(buf)
		if n > 0 {
			if werr := c.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
				return nil
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			kind, _ := apierr.Classify(err)
			b, _ := json.Marshal(PtyControl{Type: "error", Error: &ErrorInfo{Kind: kind, Message: err.Error()}})
			c.Write(ctx, websocket.MessageText, b)
			c.Close(websocket.StatusInternalError, "terminal failed")
			return nil
		}
	}
	st, err := term.Wait(ctx)
	m := PtyControl{Type: "exit", ExitCode: &st.ExitCode, Signal: st.Signal}
	if err != nil {
		kind, _ := apierr.Classify(err)
		m = PtyControl{Type: "error", Error: &ErrorInfo{Kind: kind, Message: err.Error()}}
	}
	b, _ := json.Marshal(m)
	c.Write(ctx, websocket.MessageText, b)
	c.Close(websocket.StatusNormalClosure, "")
	return nil
}

func (s *Server) fsStat(w http.ResponseWriter, r *http.Request, key string) error {
	p, err := guestPath(r, "path")
	if err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	fi, err := vm.Stat(r.Context(), p)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, fi)
}

func (s *Server) fsList(w http.ResponseWriter, r *http.Request, key string) error {
	p, err := guestPath(r, "path")
	if err != nil {
		return err
	}
	depth := 1
	if v := r.URL.Query().Get("depth"); v != "" {
		if depth, err = strconv.Atoi(v); err != nil || depth < 1 || depth > 64 {
			return &smolvm.ConfigError{Field: "depth", Value: v, Rule: "must be between 1 and 64"}
		}
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	fis, err := vm.List(r.Context(), p, smolvm.ListFilesOptions{Depth: depth, MaxEntries: maxListEntries})
	if err != nil {
		return err
	}
	if fis == nil {
		fis = []smolvm.FileInfo{}
	}
	return writeJSON(w, http.StatusOK, fis)
}

// checkPath applies the path rule of ?path= to a path in a JSON body.
func checkPath(field, p string) error {
	if p == "" || !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsRune(p, 0) || len(p) > 4096 {
		return &smolvm.ConfigError{Field: field, Value: p, Rule: errBadPath.Error()}
	}
	return nil
}

// MkdirRequest is the body of POST .../fs/mkdir.
type MkdirRequest struct {
	Path string `json:"path"`
	// Mode is octal, e.g. "0755" (the default).
	Mode string `json:"mode,omitempty"`
}

func (s *Server) fsMkdir(w http.ResponseWriter, r *http.Request, key string) error {
	var req MkdirRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if err := checkPath("path", req.Path); err != nil {
		return err
	}
	mode := os.FileMode(0o755)
	if req.Mode != "" {
		v, err := strconv.ParseUint(req.Mode, 8, 32)
		if err != nil || v > 0o7777 {
			return &smolvm.ConfigError{Field: "mode", Value: req.Mode, Rule: "must be an octal mode such as 0755"}
		}
		mode = os.FileMode(v)
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if err := vm.MkdirAll(r.Context(), req.Path, mode); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// MoveRequest is the body of POST .../fs/move.
type MoveRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

func (s *Server) fsMove(w http.ResponseWriter, r *http.Request, key string) error {
	var req MoveRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if err := checkPath("from", req.From); err != nil {
		return err
	}
	if err := checkPath("to", req.To); err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if err := vm.Move(r.Context(), req.From, req.To); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RemoveRequest is the body of POST .../fs/remove.
type RemoveRequest struct {
	Path string `json:"path"`
	// Recursive removes a directory with its content (a missing path is then not an error).
	Recursive bool `json:"recursive,omitempty"`
}

func (s *Server) fsRemove(w http.ResponseWriter, r *http.Request, key string) error {
	var req RemoveRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if err := checkPath("path", req.Path); err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	rm := vm.Remove
	if req.Recursive {
		rm = vm.RemoveAll
	}
	if err := rm(r.Context(), req.Path); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// fsWatch streams the changes under ?path= as NDJSON FsEvents until the
// client goes away or the watched path is removed.
func (s *Server) fsWatch(w http.ResponseWriter, r *http.Request, key string) error {
	p, err := guestPath(r, "path")
	if err != nil {
		return err
	}
	recursive, _ := strconv.ParseBool(r.URL.Query().Get("recursive"))
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	wt, err := vm.Watch(r.Context(), p, smolvm.WatchOptions{Recursive: recursive})
	if err != nil {
		return err
	}
	defer wt.Close()
	w.Header().Set("Content-Type", NDJSON)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	enc := json.NewEncoder(w)
	for {
		ev, err := wt.Next(r.Context())
		if err != nil {
			return nil
		}
		if enc.Encode(ev) != nil || rc.Flush() != nil {
			return nil
		}
	}
}
