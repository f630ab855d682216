package server

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/guest/pty"
)

// outputGrace is how long a finished command's output pipes may stay open
// (held by background children) before the agent stops reading them.
const outputGrace = 200 * time.Millisecond

// ttyPoll is how long a terminal controller's read waits before retrying
// after EIO while the command still runs (the kernel reports EIO when the
// count of terminal-side openers drops, which can happen transiently).
const ttyPoll = 100 * time.Millisecond

// Default terminal size when the host gives none.
const (
	defaultRows = 24
	defaultCols = 80
)

// child is a started command with the agent's ends of its I/O.
type child struct {
	cmd   *exec.Cmd
	stdin *os.File // write end of its stdin, or nil
	term  *os.File // the agent's copy of the terminal side, closed after exit
	// sharedIn reports that stdin is the terminal controller, also in outs:
	// closing the input must not close it.
	sharedIn bool
	outs     []*os.File // read ends: stdout and stderr, or the terminal controller
	ctl      controller // resizes and signals
}

// controller applies CONTROL frames to a child.
type controller struct {
	pgid int
	tty  *os.File // terminal controller, nil without a terminal
}

// apply resizes the terminal and sends the signal c asks for.
func (k *controller) apply(c proto.Control) error {
	if c.Resize != nil {
		if k.tty == nil {
			return fmt.Errorf("%w: resize: the command has no terminal", proto.ErrInvalidArgument)
		}
		if err := pty.SetSize(k.tty, pty.Size{Rows: c.Resize.Rows, Cols: c.Resize.Cols}); err != nil {
			return err
		}
	}
	if c.Signal != "" {
		sig, err := parseSignal(c.Signal)
		if err != nil {
			return err
		}
		if err := unix.Kill(-k.pgid, sig); err != nil {
			return fmt.Errorf("signal %s: %w", c.Signal, err)
		}
	}
	return nil
}

// parseSignal accepts "SIGTERM", "TERM" or "15".
func parseSignal(s string) (unix.Signal, error) {
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && fmt.Sprint(n) == s {
		if n < 0 || n > 64 {
			return 0, fmt.Errorf("%w: signal %d out of range", proto.ErrInvalidArgument, n)
		}
		return unix.Signal(n), nil
	}
	if sig := unix.SignalNum(s); sig != 0 {
		return sig, nil
	}
	if sig := unix.SignalNum("SIG" + s); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q", proto.ErrInvalidArgument, s)
}

// spawn starts cmd in its own process group with pipes, or as the leader of
// a new session on a new terminal when a.Pty is set.
func spawn(cmd *exec.Cmd, a proto.ExecArgs) (*child, error) {
	var theirs []io.Closer // the child's ends, closed once it has started
	ch := &child{cmd: cmd}
	fail := func(err error) (*child, error) {
		if ch.term != nil {
			ch.term.Close()
		}
		for _, c := range theirs {
			c.Close()
		}
		ch.close()
		return nil, fmt.Errorf("exec: %w", err)
	}
	if a.Pty != nil {
		ctl, term, err := pty.Open()
		if err != nil {
			return fail(err)
		}
		// The agent keeps its own copy of the terminal side open while the
		// command runs: if the count of openers falls to the last one, the
		// kernel flags the controller as closed and reads fail with EIO
		// although the command still writes (seen under load with dash).
		ch.term = term
		ch.outs = []*os.File{ctl}
		ch.ctl.tty = ctl
		size := pty.Size{Rows: cmp0(a.Pty.Rows, defaultRows), Cols: cmp0(a.Pty.Cols, defaultCols)}
		if err := pty.SetSize(ctl, size); err != nil {
			return fail(err)
		}
		if cr := cmd.SysProcAttr.Credential; cr != nil {
			_ = term.Chown(int(cr.Uid), -1) // tools like sudo check the terminal's owner
		}
		ch.stdin = ctl
		ch.sharedIn = true
		cmd.Stdin, cmd.Stdout, cmd.Stderr = term, term, term
		cmd.SysProcAttr.Setpgid = false
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0 // the child's stdin
	} else {
		for range 2 {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			ch.outs = append(ch.outs, r)
			theirs = append(theirs, w)
		}
		cmd.Stdout, cmd.Stderr = theirs[0].(*os.File), theirs[1].(*os.File)
		if a.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			ch.stdin = w
			theirs = append(theirs, r)
			cmd.Stdin = r
		}
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", cmd.Path, err))
	}
	for _, c := range theirs {
		c.Close()
	}
	ch.ctl.pgid = cmd.Process.Pid
	return ch, nil
}

// cmp0 returns v, or def when v is zero.
func cmp0(v, def uint16) uint16 {
	if v == 0 {
		return def
	}
	return v
}

// close closes the agent's ends of the child's I/O.
func (ch *child) close() {
	if ch.stdin != nil && !ch.sharedIn {
		ch.stdin.Close()
	}
	for _, f := range ch.outs {
		f.Close()
	}
}

// wait waits for the child to exit, killing its process group when cancel
// is closed or after timeoutMillis (if positive).
func (ch *child) wait(cancel <-chan struct{}, timeoutMillis int64) (proto.ExecResult, error) {
	var res proto.ExecResult
	waitDone := make(chan error, 1)
	go func() { waitDone <- ch.cmd.Wait() }()
	var timeout <-chan time.Time
	if timeoutMillis > 0 {
		t := time.NewTimer(time.Duration(timeoutMillis) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	var waitErr error
wait:
	for {
		select {
		case waitErr = <-waitDone:
			break wait
		case <-timeout:
			res.TimedOut = true
			_ = unix.Kill(-ch.ctl.pgid, unix.SIGKILL)
			timeout = nil
		case <-cancel:
			_ = unix.Kill(-ch.ctl.pgid, unix.SIGKILL)
			cancel = nil
		}
	}
	if ch.term != nil {
		ch.term.Close() // output now ends once the last holder closes it
	}
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return res, fmt.Errorf("exec: wait: %w", waitErr)
	}
	ws, _ := ch.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		res.ExitCode = 128 + int(ws.Signal())
		res.Signal = unix.SignalName(ws.Signal())
	} else {
		res.ExitCode = ws.ExitStatus()
	}
	return res, nil
}

// output is the read end of a command's stdout or stderr pipe, or its
// terminal controller.
type output struct {
	f    *os.File
	tty  bool        // f is a terminal controller: see ttyPoll
	done atomic.Bool // set when the command has exited
}

// exited switches the pump to idle-timeout mode: background children may
// hold the pipe open, so once the command has exited the pump stops after
// outputGrace without data. Waiting for the host's window is not idle time.
func (o *output) exited() {
	o.done.Store(true)
	_ = o.f.SetReadDeadline(time.Now().Add(outputGrace))
}

// pump passes everything read to sink until EOF (EIO for a terminal whose
// last user closed it), a sink error, or the grace after exit.
func (o *output) pump(sink func([]byte) error) {
	buf := make([]byte, proto.ChunkSize)
	retried := false
	for {
		if o.done.Load() {
			_ = o.f.SetReadDeadline(time.Now().Add(outputGrace))
		}
		n, err := o.f.Read(buf)
		if n > 0 {
			retried = false
			if err := sink(buf[:n]); err != nil {
				return
			}
		}
		if err != nil && o.tty && !o.done.Load() && errors.Is(err, syscall.EIO) {
			time.Sleep(ttyPoll) // see ttyPoll
			continue
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !retried {
			// The deadline exited() set may have passed while this
			// goroutine waited for a CPU (a busy guest), with output still
			// in the pipe: read once more with a deadline of our own.
			retried = true
			continue
		}
		if err != nil {
			return
		}
	}
}

// feedStdin copies the host's ChanIn data to the command's stdin and closes
// it at EOF. Data the command does not read is discarded, but still granted
// back so the host never waits for window.
func feedStdin(st *stream, w *os.File, shared bool) {
	if !shared {
		defer w.Close()
	}
	broken := false
	for {
		c, err := st.in.Pop(st.ctx)
		if err != nil {
			return
		}
		if !broken {
			if _, err := w.Write(c.Data); err != nil {
				broken = true
			}
		}
		st.grant(len(c.Data))
	}
}
