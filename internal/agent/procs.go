package agent

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// ProcessOptions describe a background process beyond its command.
type ProcessOptions struct {
	// Tag is a free label reported by ListProcesses.
	Tag string
	// Stdin gives the process a stdin pipe, fed by WriteProcess and
	// attachments; otherwise it reads /dev/null.
	Stdin bool
	// Pty runs the process on a terminal (stdin is then always open).
	Pty *PtyOptions
	// BufferBytes is the size of each output ring buffer in the guest;
	// 0 means the agent's default (1 MiB). When full, the oldest output is
	// dropped and an attachment sees a line saying how much.
	BufferBytes int
}

// Process describes a background process.
type Process struct {
	// Pid is the process id in the guest.
	Pid int
	// Argv is the command as started.
	Argv []string
	// Tag is the label given at start.
	Tag string
	// Started is the start time (guest clock).
	Started time.Time
	// Running reports whether it has not exited yet.
	Running bool
	// Pty reports whether it runs on a terminal.
	Pty bool
	// Exit is how it ended, when not Running.
	Exit *ExecResult
}

// maxProcessList bounds the lines ListProcesses accepts from the guest.
const maxProcessList = 100000

// StartProcess starts req in the background and returns its pid. The
// process is not tied to this connection: it keeps running when the
// client closes, and any client can attach to it. req.Timeout, if set,
// kills it after that long.
func (c *Client) StartProcess(ctx context.Context, req ExecRequest, opts ProcessOptions) (int, error) {
	a := proto.ProcStartArgs{Exec: req.args(), Tag: opts.Tag, BufferBytes: opts.BufferBytes}
	a.Exec.Stdin = opts.Stdin
	if opts.Pty != nil {
		a.Exec.Pty = &proto.PtyArgs{Rows: opts.Pty.Rows, Cols: opts.Pty.Cols, Term: opts.Pty.Term}
	}
	var res proto.ProcStartResult
	if err := c.roundTrip(ctx, proto.MethodProcStart, a, &res); err != nil {
		return 0, err
	}
	return res.Pid, nil
}

// ListProcesses returns the background processes the agent tracks,
// oldest first: running ones and exited ones not yet waited for or reaped.
func (c *Client) ListProcesses(ctx context.Context) ([]Process, error) {
	cl, err := c.start(ctx, proto.MethodProcList, nil)
	if err != nil {
		return nil, fmt.Errorf("agent proc.list: %w", err)
	}
	var out []Process
	err = eachLine(ctx, c, cl, maxProcessList, func(pi proto.ProcInfo) error {
		p := Process{Pid: pi.Pid, Argv: pi.Argv, Tag: pi.Tag, Started: time.Unix(0, pi.StartUnixNano), Running: pi.Running, Pty: pi.Pty}
		if pi.Exit != nil {
			r := resultFrom(*pi.Exit)
			p.Exit = &r
		}
		out = append(out, p)
		return nil
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("agent proc.list: %w", err)
	}
	return out, nil
}

// AttachOptions adjust AttachProcess.
type AttachOptions struct {
	// Stdin, if set, is copied to the process's stdin while attached; its
	// EOF does not close the process's stdin.
	Stdin io.Reader
	// NoReplay skips the output buffered before the attachment.
	NoReplay bool
	// MaxOutputBytes, if positive, caps what is written to each writer.
	MaxOutputBytes int64
}

// AttachProcess writes the process's buffered output (unless NoReplay) and
// then its live output to stdout and stderr (nil discards) until it exits,
// and returns how it ended. If ctx ends first, the attachment ends with
// ctx.Err() and the process keeps running.
func (c *Client) AttachProcess(ctx context.Context, pid int, stdout, stderr io.Writer, opts AttachOptions) (ExecResult, error) {
	var limOut, limErr *LimitedWriter
	if opts.MaxOutputBytes > 0 {
		if stdout != nil {
			limOut = NewLimitedWriter(stdout, opts.MaxOutputBytes)
			stdout = limOut
		}
		if stderr != nil {
			limErr = NewLimitedWriter(stderr, opts.MaxOutputBytes)
			stderr = limErr
		}
	}
	cl, err := c.start(ctx, proto.MethodProcAttach, proto.ProcAttachArgs{Pid: pid, Stdin: opts.Stdin != nil, NoReplay: opts.NoReplay})
	if err != nil {
		return ExecResult{}, fmt.Errorf("agent proc.attach %d: %w", pid, err)
	}
	if opts.Stdin != nil {
		go c.feed(ctx, cl, opts.Stdin)
	}
	if err := c.drain(ctx, cl, map[proto.Channel]io.Writer{proto.ChanOut: stdout, proto.ChanErr: stderr}); err != nil {
		c.cancel(cl)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return ExecResult{}, fmt.Errorf("agent proc.attach %d: %w", pid, err)
	}
	var res proto.ProcExit
	if err := c.wait(ctx, cl, &res); err != nil {
		return ExecResult{}, fmt.Errorf("agent proc.attach %d: %w", pid, err)
	}
	out := resultFrom(res.Result)
	out.StdoutTruncated = limOut != nil && limOut.Truncated()
	out.StderrTruncated = limErr != nil && limErr.Truncated()
	return out, nil
}

// WriteProcess writes data to a background process's stdin, in pieces of
// at most proto.MaxInputBytes, waiting while the process does not read.
func (c *Client) WriteProcess(ctx context.Context, pid int, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), proto.MaxInputBytes)
		if err := c.roundTrip(ctx, proto.MethodProcInput, proto.ProcInputArgs{Pid: pid, Data: data[:n]}, nil); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// CloseProcessStdin closes a background process's stdin.
func (c *Client) CloseProcessStdin(ctx context.Context, pid int) error {
	return c.roundTrip(ctx, proto.MethodProcInput, proto.ProcInputArgs{Pid: pid, Close: true}, nil)
}

// SignalProcess sends a signal ("SIGTERM", "TERM" or "15") to a background
// process's process group.
func (c *Client) SignalProcess(ctx context.Context, pid int, sig string) error {
	return c.roundTrip(ctx, proto.MethodProcSignal, proto.ProcSignalArgs{Pid: pid, Signal: sig}, nil)
}

// ResizeProcess sets the window size of a background process's terminal.
func (c *Client) ResizeProcess(ctx context.Context, pid int, rows, cols uint16) error {
	return c.roundTrip(ctx, proto.MethodProcSignal, proto.ProcSignalArgs{Pid: pid, Resize: &proto.WindowSize{Rows: rows, Cols: cols}}, nil)
}

// WaitProcess waits for a background process to exit, returns how it
// ended, and makes the agent forget it (a second wait fails with
// proto.ErrNotFound).
func (c *Client) WaitProcess(ctx context.Context, pid int) (ExecResult, error) {
	var res proto.ProcExit
	if err := c.roundTrip(ctx, proto.MethodProcWait, proto.PidArgs{Pid: pid}, &res); err != nil {
		return ExecResult{}, err
	}
	return resultFrom(res.Result), nil
}
