package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// PtyOptions describe a guest pseudo-terminal.
type PtyOptions struct {
	// Rows and Cols are the initial window size; 0 means 24x80.
	Rows, Cols uint16
	// Term is the TERM variable; empty means "xterm-256color".
	Term string
}

// Terminal is a command running on a pseudo-terminal in the guest: the
// terminal is the controlling terminal of a new session led by the command,
// so job control works and a 0x03 byte written to it interrupts the
// foreground job. Read returns the terminal's output (stdout and stderr
// merged, as the terminal produces them); Write types raw input. Read and
// Write may run concurrently with each other and with Resize and Signal.
type Terminal struct {
	c    *Client
	cl   *call
	ctx  context.Context // the context given to StartTerminal
	stop func() bool     // stops the cancellation hook on ctx

	rmu  sync.Mutex
	rbuf []byte // guarded by rmu; output popped and not yet read
	rerr error  // guarded by rmu; sticky read error

	wmu    sync.Mutex
	closed bool // guarded by wmu; input closed
}

// StartTerminal runs req on a new guest pseudo-terminal. With neither Argv
// nor Shell, the user's login shell runs as a login shell ("-sh"). ctx bounds
// the whole session: when it ends the guest kills the command's session.
// req.MaxOutputBytes does not apply; the caller reads as it likes.
func (c *Client) StartTerminal(ctx context.Context, req ExecRequest, pty PtyOptions) (*Terminal, error) {
	args := req.args()
	args.Stdin = true
	args.Pty = &proto.PtyArgs{Rows: pty.Rows, Cols: pty.Cols, Term: pty.Term}
	cl, err := c.start(ctx, proto.MethodExec, args)
	if err != nil {
		return nil, fmt.Errorf("agent terminal: %w", err)
	}
	t := &Terminal{c: c, cl: cl, ctx: ctx}
	t.stop = context.AfterFunc(ctx, func() { c.cancel(cl) })
	return t, nil
}

// Read reads terminal output. It returns io.EOF once the command has ended
// and all its output has been read.
func (t *Terminal) Read(p []byte) (int, error) {
	t.rmu.Lock()
	defer t.rmu.Unlock()
	for len(t.rbuf) == 0 {
		if t.rerr != nil {
			return 0, t.rerr
		}
		ch, err := t.cl.in.Pop(t.ctx)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				err = fmt.Errorf("agent terminal: %w", err)
			}
			t.rerr = err
			return 0, err
		}
		// Granting at once bounds memory to two windows (queued + rbuf).
		t.cl.in.Grant(len(ch.Data))
		t.c.grant(t.cl, len(ch.Data))
		t.rbuf = ch.Data
	}
	n := copy(p, t.rbuf)
	t.rbuf = t.rbuf[n:]
	return n, nil
}

// Write sends raw input to the terminal, waiting for flow-control window as
// needed. Bytes like 0x03 (Ctrl-C) and 0x04 (Ctrl-D) reach the terminal's
// line discipline unchanged.
func (t *Terminal) Write(p []byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.closed {
		return 0, fmt.Errorf("agent terminal: %w: input closed", proto.ErrInvalidArgument)
	}
	done := 0
	for done < len(p) {
		k, err := t.cl.credit.Acquire(t.ctx, min(len(p)-done, proto.ChunkSize))
		if errors.Is(err, errResponded) {
			return done, fmt.Errorf("agent terminal: %w: the command has ended", io.ErrClosedPipe)
		}
		if err != nil {
			return done, fmt.Errorf("agent terminal: %w", err)
		}
		f := proto.Frame{Type: proto.TypeData, Channel: proto.ChanIn, Stream: t.cl.id, Payload: p[done : done+k]}
		if err := t.c.write(t.ctx, f); err != nil {
			return done, fmt.Errorf("agent terminal: %w", err)
		}
		done += k
	}
	return done, nil
}

// CloseInput ends the input: no more bytes can be written. The command
// keeps running (send 0x04 to signal end of input to a shell).
func (t *Terminal) CloseInput() error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	return t.c.write(t.ctx, proto.Frame{Type: proto.TypeEOF, Channel: proto.ChanIn, Stream: t.cl.id})
}

// Resize changes the terminal's window size; the command's foreground job
// gets SIGWINCH.
func (t *Terminal) Resize(ctx context.Context, rows, cols uint16) error {
	return t.control(ctx, proto.Control{Resize: &proto.WindowSize{Rows: rows, Cols: cols}})
}

// Signal sends a signal (a name like "SIGINT" or a number) to the command's
// process group.
func (t *Terminal) Signal(ctx context.Context, sig string) error {
	return t.control(ctx, proto.Control{Signal: sig})
}

// control sends a CONTROL frame on the terminal's stream.
func (t *Terminal) control(ctx context.Context, c proto.Control) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := t.c.write(ctx, proto.Frame{Type: proto.TypeControl, Stream: t.cl.id, Payload: b}); err != nil {
		return fmt.Errorf("agent terminal: %w", err)
	}
	return nil
}

// Wait waits for the command to end and returns how it ended. Output not
// read yet is discarded, so call it after Read has returned io.EOF to see
// everything.
func (t *Terminal) Wait(ctx context.Context) (ExecResult, error) {
	go func() {
		// Keep the window open so the guest can finish sending.
		_, _ = io.Copy(io.Discard, t)
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(t.ctx, cancel)
	defer stop()
	var res proto.ExecResult
	if err := t.c.wait(ctx, t.cl, &res); err != nil {
		if t.ctx.Err() != nil {
			err = t.ctx.Err()
		}
		return ExecResult{}, fmt.Errorf("agent terminal: %w", err)
	}
	out := resultFrom(res)
	if res.TimedOut {
		return out, fmt.Errorf("agent terminal: %w", proto.ErrTimeout)
	}
	return out, nil
}

// Close kills the command's session if it is still running and releases
// the stream.
func (t *Terminal) Close() error {
	t.stop()
	t.c.cancel(t.cl)
	return nil
}
