package agent

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// ExecRequest describes a command to run in the guest. Exactly one of Argv
// and Shell must be set.
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
	args := proto.ExecArgs{
		Argv: req.Argv, Shell: req.Shell, Env: req.Env, Dir: req.Dir, User: req.User,
		Stdin: stdin != nil,
	}
	if req.Timeout > 0 {
		args.TimeoutMillis = max(1, req.Timeout.Milliseconds())
	}
	cl, err := c.start(proto.MethodExec, args)
	if err != nil {
		return ExecResult{}, fmt.Errorf("agent exec: %w", err)
	}
	if stdin != nil {
		go func() {
			if err := c.send(ctx, cl, stdin); err != nil {
				// Input failed: end the command's stdin so it is not stuck.
				_ = c.write(proto.Frame{Type: proto.TypeEOF, Channel: proto.ChanIn, Stream: cl.id})
			}
		}()
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
	out := ExecResult{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut}
	if res.TimedOut {
		return out, fmt.Errorf("agent exec: command killed after %v: %w", req.Timeout, proto.ErrTimeout)
	}
	return out, nil
}
