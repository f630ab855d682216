package agent

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// DefaultMaxOutputBytes is the per-stream output cap the SDK applies when
// its caller sets none.
const DefaultMaxOutputBytes = 16 << 20

// ExecRequest describes a command to run in the guest. Exactly one of Argv
// and Shell must be set (a terminal may have neither: the login shell runs).
type ExecRequest struct {
	// Argv is the program and its arguments, run without a shell. The
	// persisted environment variables are applied to it.
	Argv []string
	// Shell is a script run with `/bin/sh -lc`, so the login profile (and
	// with it the persisted variables in /etc/profile.d) is read.
	Shell string
	// Env adds or overrides environment variables.
	Env map[string]string
	// Dir is the absolute working directory; empty means the user's home.
	Dir string
	// User is a user name or numeric uid; empty means the agent's user (root).
	User string
	// Timeout, if positive, kills the command's whole process group after
	// this long.
	Timeout time.Duration
	// MaxOutputBytes, if positive, caps the bytes Exec writes to each of
	// stdout and stderr; the rest is read from the guest and discarded, and
	// the result's StdoutTruncated or StderrTruncated is set.
	MaxOutputBytes int64
}

// args converts r to its wire form.
func (r ExecRequest) args() proto.ExecArgs {
	a := proto.ExecArgs{Argv: r.Argv, Shell: r.Shell, Env: r.Env, Dir: r.Dir, User: r.User}
	if r.Timeout > 0 {
		a.TimeoutMillis = max(1, r.Timeout.Milliseconds())
	}
	return a
}

// ExecResult is how a command ended.
type ExecResult struct {
	// ExitCode is the exit status, or 128+N when killed by signal N.
	ExitCode int
	// Signal is the name of the signal that killed the command (e.g.
	// "SIGKILL"), or empty.
	Signal string
	// TimedOut reports whether the command was killed at its timeout.
	TimedOut bool
	// StdoutTruncated and StderrTruncated report whether output beyond
	// ExecRequest.MaxOutputBytes was discarded.
	StdoutTruncated, StderrTruncated bool
}

// resultFrom converts a wire result.
func resultFrom(r proto.ExecResult) ExecResult {
	return ExecResult{ExitCode: r.ExitCode, Signal: r.Signal, TimedOut: r.TimedOut}
}

// Exec runs a command in the guest, streaming stdin to it and its stdout and
// stderr back separately while it runs (nil writers discard, a nil stdin
// reads as empty). It returns when the command has ended and its output has
// been written. A command killed at its timeout returns its result together
// with an error wrapping proto.ErrTimeout. If ctx ends first, the guest kills
// the command's process group and Exec returns ctx.Err().
//
// Exec does not wait for stdin to reach EOF: a Read blocked on stdin when
// the command ends is left to return on its own.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (ExecResult, error) {
	args := req.args()
	args.Stdin = stdin != nil
	var limOut, limErr *LimitedWriter
	if req.MaxOutputBytes > 0 {
		if stdout != nil {
			limOut = NewLimitedWriter(stdout, req.MaxOutputBytes)
			stdout = limOut
		}
		if stderr != nil {
			limErr = NewLimitedWriter(stderr, req.MaxOutputBytes)
			stderr = limErr
		}
	}
	cl, err := c.start(ctx, proto.MethodExec, args)
	if err != nil {
		return ExecResult{}, fmt.Errorf("agent exec: %w", err)
	}
	if stdin != nil {
		go c.feed(ctx, cl, stdin)
	}
	writers := map[proto.Channel]io.Writer{proto.ChanOut: stdout, proto.ChanErr: stderr}
	if err := c.drain(ctx, cl, writers); err != nil {
		c.cancel(cl)
		if ctx.Err() != nil {
			return ExecResult{}, fmt.Errorf("agent exec: %w", ctx.Err())
		}
		return ExecResult{}, fmt.Errorf("agent exec: %w", err)
	}
	var res proto.ExecResult
	if err := c.wait(ctx, cl, &res); err != nil {
		return ExecResult{}, fmt.Errorf("agent exec: %w", err)
	}
	out := resultFrom(res)
	out.StdoutTruncated = limOut != nil && limOut.Truncated()
	out.StderrTruncated = limErr != nil && limErr.Truncated()
	if res.TimedOut {
		return out, fmt.Errorf("agent exec: command killed after %v: %w", req.Timeout, proto.ErrTimeout)
	}
	return out, nil
}

// feed sends stdin to cl; if reading or sending fails, it ends the
// command's stdin so the command is not left waiting.
func (c *Client) feed(ctx context.Context, cl *call, stdin io.Reader) {
	if err := c.send(ctx, cl, stdin); err != nil {
		eofCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeFlush)
		defer cancel()
		_ = c.write(eofCtx, proto.Frame{Type: proto.TypeEOF, Channel: proto.ChanIn, Stream: cl.id})
	}
}

// LimitedWriter passes at most a fixed number of bytes to an underlying
// writer and silently discards the rest, recording that it did. Writes
// beyond the limit succeed, so a producer is never stopped by the cap. It
// is safe for concurrent use.
type LimitedWriter struct {
	mu      sync.Mutex
	w       io.Writer
	left    int64 // guarded by mu
	dropped int64 // guarded by mu
}

// NewLimitedWriter returns a writer passing at most n bytes to w.
func NewLimitedWriter(w io.Writer, n int64) *LimitedWriter {
	return &LimitedWriter{w: w, left: max(n, 0)}
}

// Write writes what fits under the limit to the underlying writer and
// reports all of p as written; it fails only if the underlying writer does.
func (l *LimitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	keep := p[:min(int64(len(p)), l.left)]
	l.dropped += int64(len(p) - len(keep))
	if len(keep) == 0 {
		return len(p), nil
	}
	n, err := l.w.Write(keep)
	l.left -= int64(n)
	if err != nil {
		return n, err
	}
	return len(p), nil
}

// Truncated reports whether any bytes were discarded.
func (l *LimitedWriter) Truncated() bool { return l.Dropped() > 0 }

// Dropped returns the number of bytes discarded.
func (l *LimitedWriter) Dropped() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}
