package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/smolvm-go/smolvm"
)

// StartProcess starts a background process and returns its guest pid, like
// smolvm.VM.StartProcess.
func (vm *VM) StartProcess(ctx context.Context, po smolvm.ProcessOptions) (int, error) {
	body := map[string]any{"cmd": po.Shell, "argv": po.Argv, "env": po.Env, "cwd": po.Dir, "user": po.User, "tag": po.Tag,
		"stdin": po.Stdin, "pty": po.Pty, "rows": po.Rows, "cols": po.Cols, "timeout_seconds": po.Timeout.Seconds(), "buffer_bytes": po.BufferBytes}
	for k, v := range body { // leave zero values out, as the SDK's JSON does
		switch x := v.(type) {
		case string:
			if x == "" {
				delete(body, k)
			}
		case []string:
			if len(x) == 0 {
				delete(body, k)
			}
		case map[string]string:
			if len(x) == 0 {
				delete(body, k)
			}
		}
	}
	var out struct {
		Pid int `json:"pid"`
	}
	err := vm.c.call(ctx, http.MethodPost, vm.path("/processes"), nil, body, &out)
	return out.Pid, err
}

// Processes lists the background processes, like smolvm.VM.Processes.
func (vm *VM) Processes(ctx context.Context) ([]smolvm.ProcessInfo, error) {
	var out []smolvm.ProcessInfo
	err := vm.c.call(ctx, http.MethodGet, vm.path("/processes"), nil, nil, &out)
	return out, err
}

func (vm *VM) pidPath(pid int, op string) string { return vm.path("/processes/" + strconv.Itoa(pid) + "/" + op) }

// Signal signals a background process's group ("TERM", "KILL", "9", ...).
func (vm *VM) Signal(ctx context.Context, pid int, sig string) error {
	return vm.c.call(ctx, http.MethodPost, vm.pidPath(pid, "signal"), nil, map[string]string{"signal": sig}, nil)
}

// SendStdin writes data to a background process's stdin.
func (vm *VM) SendStdin(ctx context.Context, pid int, data []byte) error {
	return vm.c.call(ctx, http.MethodPost, vm.pidPath(pid, "stdin"), nil, map[string]any{"data": string(data)}, nil)
}

// CloseStdin closes a background process's stdin.
func (vm *VM) CloseStdin(ctx context.Context, pid int) error {
	return vm.c.call(ctx, http.MethodPost, vm.pidPath(pid, "stdin"), nil, map[string]any{"close": true}, nil)
}

// ResizeProcess sets the window size of a background process's terminal.
func (vm *VM) ResizeProcess(ctx context.Context, pid int, rows, cols uint16) error {
	return vm.c.call(ctx, http.MethodPost, vm.pidPath(pid, "resize"), nil, map[string]uint16{"rows": rows, "cols": cols}, nil)
}

// WaitProcess waits for a background process to exit and forgets it.
func (vm *VM) WaitProcess(ctx context.Context, pid int) (smolvm.ExitStatus, error) {
	var st smolvm.ExitStatus
	err := vm.c.call(ctx, http.MethodPost, vm.pidPath(pid, "wait"), nil, nil, &st)
	return st, err
}

// Attach streams a background process's output (buffered output first
// unless ao.NoReplay) until it exits. ao.Stdin is not supported remotely:
// use SendStdin.
func (vm *VM) Attach(ctx context.Context, pid int, ao smolvm.AttachOptions) (smolvm.ExitStatus, error) {
	if ao.Stdin != nil {
		return smolvm.ExitStatus{}, fmt.Errorf("attach: stdin is not forwarded to a remote server; use SendStdin: %w", smolvm.ErrInvalidConfig)
	}
	q := url.Values{}
	if ao.NoReplay {
		q.Set("replay", "false")
	}
	resp, err := vm.c.do(ctx, http.MethodGet, vm.pidPath(pid, "attach"), q, nil, "", nil)
	if err != nil {
		return smolvm.ExitStatus{}, err
	}
	defer resp.Body.Close()
	return readEvents(resp.Body, ao.Stdout, ao.Stderr, vm.id)
}

// readEvents consumes an NDJSON stream of exec events.
func readEvents(r io.Reader, stdout, stderr io.Writer, id string) (smolvm.ExitStatus, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev execEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return smolvm.ExitStatus{}, fmt.Errorf("bad event from the server: %w", err)
		}
		switch ev.Type {
		case "stdout", "stderr":
			w := stdout
			if ev.Type == "stderr" {
				w = stderr
			}
			if w != nil {
				if _, err := io.WriteString(w, ev.Data); err != nil {
					return smolvm.ExitStatus{}, err
				}
			}
		case "exit":
			st := smolvm.ExitStatus{Signal: ev.Signal, TimedOut: ev.TimedOut}
			if ev.ExitCode != nil {
				st.ExitCode = *ev.ExitCode
			}
			if st.TimedOut {
				return st, fmt.Errorf("%s: command killed at its timeout: %w", id, smolvm.ErrTimeout)
			}
			return st, nil
		case "error":
			if ev.Error == nil {
				return smolvm.ExitStatus{}, errors.New("error event without an error")
			}
			return smolvm.ExitStatus{}, &Error{Status: http.StatusOK, Kind: ev.Error.Kind, Message: ev.Error.Message}
		}
	}
	if err := sc.Err(); err != nil {
		return smolvm.ExitStatus{}, fmt.Errorf("%s: stream broken: %w: %w", id, err, smolvm.ErrCommandUnavailable)
	}
	return smolvm.ExitStatus{}, fmt.Errorf("%s: stream ended without an exit event: %w", id, smolvm.ErrCommandUnavailable)
}

// Stat describes a guest path.
func (vm *VM) Stat(ctx context.Context, guestPath string) (smolvm.FileInfo, error) {
	var fi smolvm.FileInfo
	err := vm.c.call(ctx, http.MethodGet, vm.path("/fs/stat"), url.Values{"path": {guestPath}}, nil, &fi)
	return fi, err
}

// List returns the entries under a guest directory.
func (vm *VM) List(ctx context.Context, guestDir string, opts smolvm.ListFilesOptions) ([]smolvm.FileInfo, error) {
	q := url.Values{"path": {guestDir}}
	if opts.Depth > 1 {
		q.Set("depth", strconv.Itoa(opts.Depth))
	}
	var out []smolvm.FileInfo
	err := vm.c.call(ctx, http.MethodGet, vm.path("/fs/list"), q, nil, &out)
	return out, err
}

// MkdirAll creates a guest directory and its parents (mode 0: 0755).
func (vm *VM) MkdirAll(ctx context.Context, guestDir string, mode os.FileMode) error {
	body := map[string]string{"path": guestDir}
	if mode != 0 {
		body["mode"] = fmt.Sprintf("%04o", mode.Perm())
	}
	return vm.c.call(ctx, http.MethodPost, vm.path("/fs/mkdir"), nil, body, nil)
}

// Move renames a guest path.
func (vm *VM) Move(ctx context.Context, from, to string) error {
	return vm.c.call(ctx, http.MethodPost, vm.path("/fs/move"), nil, map[string]string{"from": from, "to": to}, nil)
}

// Remove deletes a guest file or empty directory.
func (vm *VM) Remove(ctx context.Context, guestPath string) error {
	return vm.c.call(ctx, http.MethodPost, vm.path("/fs/remove"), nil, map[string]any{"path": guestPath}, nil)
}

// RemoveAll deletes a guest path with everything under it.
func (vm *VM) RemoveAll(ctx context.Context, guestPath string) error {
	return vm.c.call(ctx, http.MethodPost, vm.path("/fs/remove"), nil, map[string]any{"path": guestPath, "recursive": true}, nil)
}

// Terminal is a command on a guest pseudo-terminal reached over the
// server's WebSocket, like smolvm.Terminal.
type Terminal struct {
	c    *websocket.Conn
	ctx  context.Context
	mu   sync.Mutex
	buf  []byte
	exit *smolvm.ExitStatus
	err  error
}

// Terminal starts a command (default: the login shell) on a guest terminal.
func (vm *VM) Terminal(ctx context.Context, opts smolvm.TerminalOptions) (*Terminal, error) {
	if len(opts.Argv) > 0 {
		return nil, fmt.Errorf("terminal: give a shell command; argv is not supported remotely: %w", smolvm.ErrInvalidConfig)
	}
	q := url.Values{}
	for k, v := range map[string]string{"cmd": opts.Shell, "term": opts.Term, "cwd": opts.Dir, "user": opts.User} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if opts.Rows > 0 && opts.Cols > 0 {
		q.Set("rows", strconv.Itoa(int(opts.Rows)))
		q.Set("cols", strconv.Itoa(int(opts.Cols)))
	}
	u := vm.c.url(vm.path("/pty"), q)
	u = "ws" + strings.TrimPrefix(u, "http")
	hdr := http.Header{}
	if vm.c.key != "" {
		hdr.Set("Authorization", "Bearer "+vm.c.key)
	}
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: vm.c.hc, HTTPHeader: hdr})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			return nil, decodeError(resp)
		}
		return nil, fmt.Errorf("terminal: %w: %w", err, smolvm.ErrUnavailable)
	}
	c.SetReadLimit(16 << 20)
	return &Terminal{c: c, ctx: context.WithoutCancel(ctx)}, nil
}

// Read reads terminal output; io.EOF once the command has ended.
func (t *Terminal) Read(p []byte) (int, error) {
	for {
		t.mu.Lock()
		if len(t.buf) > 0 {
			n := copy(p, t.buf)
			t.buf = t.buf[n:]
			t.mu.Unlock()
			return n, nil
		}
		if t.exit != nil || t.err != nil {
			t.mu.Unlock()
			return 0, io.EOF
		}
		t.mu.Unlock()
		typ, data, err := t.c.Read(t.ctx)
		t.mu.Lock()
		switch {
		case err != nil:
			if t.exit == nil {
				t.err = fmt.Errorf("terminal: %w: %w", err, smolvm.ErrCommandUnavailable)
			}
		case typ == websocket.MessageBinary:
			t.buf = append(t.buf, data...)
		default:
			var m struct {
				Type     string `json:"type"`
				ExitCode *int   `json:"exit_code"`
				Signal   string `json:"signal"`
				Error    *struct {
					Kind    string `json:"kind"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if json.Unmarshal(data, &m) == nil {
				switch {
				case m.Type == "exit" && m.ExitCode != nil:
					t.exit = &smolvm.ExitStatus{ExitCode: *m.ExitCode, Signal: m.Signal}
				case m.Type == "error" && m.Error != nil:
					t.err = &Error{Status: http.StatusOK, Kind: m.Error.Kind, Message: m.Error.Message}
				}
			}
		}
		t.mu.Unlock()
	}
}

// Write types raw input.
func (t *Terminal) Write(p []byte) (int, error) {
	if err := t.c.Write(t.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Resize sets the terminal's window size.
func (t *Terminal) Resize(ctx context.Context, rows, cols uint16) error {
	b, _ := json.Marshal(map[string]any{"type": "resize", "rows": rows, "cols": cols})
	return t.c.Write(ctx, websocket.MessageText, b)
}

// Signal sends a signal to the command's process group.
func (t *Terminal) Signal(ctx context.Context, sig string) error {
	b, _ := json.Marshal(map[string]any{"type": "signal", "signal": sig})
	return t.c.Write(ctx, websocket.MessageText, b)
}

// Wait reads (and discards) the remaining output and returns how the command ended.
func (t *Terminal) Wait(ctx context.Context) (smolvm.ExitStatus, error) {
	io.Copy(io.Discard, t)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.c.CloseNow()
	if t.exit != nil {
		return *t.exit, nil
	}
	return smolvm.ExitStatus{}, t.err
}

// Close ends the session (the guest kills the command).
func (t *Terminal) Close() error { return t.c.CloseNow() }
