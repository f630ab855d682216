package smolvm

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
)

// ProcessOptions describe a background process: a command started detached
// from the caller. Exactly one of Argv and Shell is set.
type ProcessOptions struct {
	// Argv is the program and its arguments, run without a shell.
	Argv []string `json:"argv,omitempty"`
	// Shell is a script run with `sh -lc`.
	Shell string `json:"shell,omitempty"`
	// Env adds variables for this command only.
	Env map[string]string `json:"env,omitempty"`
	// Dir is the working directory (absolute); empty means the user's home.
	Dir string `json:"dir,omitempty"`
	// User is a user name or uid; empty means root.
	User string `json:"user,omitempty"`
	// Tag is a free label reported by Processes.
	Tag string `json:"tag,omitempty"`
	// Stdin gives the process a stdin pipe fed by SendStdin and Attach;
	// otherwise it reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// Pty runs the process on a pseudo-terminal (stdin is then always open).
	Pty bool `json:"pty,omitempty"`
	// Rows and Cols are the terminal's size with Pty; 0 means 24x80.
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Timeout kills the process group after this long; 0 means never.
	Timeout time.Duration `json:"timeout,omitempty"`
	// BufferBytes is the size of each output ring buffer kept in the guest
	// while no one is attached; 0 means 1 MiB. When full, the oldest output
	// is dropped and an attachment sees a line saying how much.
	BufferBytes int `json:"buffer_bytes,omitempty"`
}

// ProcessInfo describes a background process started through the agent.
type ProcessInfo struct {
	// Pid is the process id in the guest.
	Pid int `json:"pid"`
	// Command is the command line for display: the shell script, or the
	// argv joined with spaces.
	Command string `json:"command"`
	// Argv is the command as started (["/bin/sh", "-lc", script] for a shell script).
	Argv []string `json:"argv"`
	// Tag is the label given at start.
	Tag string `json:"tag"`
	// StartedAt is the start time (guest clock).
	StartedAt time.Time `json:"started_at"`
	// Running reports whether it has not exited yet.
	Running bool `json:"running"`
	// Pty reports whether it runs on a pseudo-terminal.
	Pty bool `json:"pty"`
	// Exit is how it ended, once it has.
	Exit *ExitStatus `json:"exit,omitempty"`
}

// StartProcess starts a command in the background and returns its guest
// pid. The process keeps running when the caller (or its whole host
// process) goes away; any host process can list it, attach to it, signal
// it and wait for it.
func (vm *VM) StartProcess(ctx context.Context, po ProcessOptions) (int, error) {
	if (len(po.Argv) == 0) == (po.Shell == "") {
		return 0, wrapErr("start process", vm.id, ErrInvalidConfig, configErr("command", "", "give exactly one of an argv or a shell command"))
	}
	if err := validateExecEnv(po.Env, po.Dir); err != nil {
		return 0, wrapErr("start process", vm.id, ErrInvalidConfig, err)
	}
	if po.BufferBytes < 0 || po.Timeout < 0 {
		return 0, wrapErr("start process", vm.id, ErrInvalidConfig, configErr("buffer_bytes", "", "must not be negative"))
	}
	opts := agent.ProcessOptions{Tag: po.Tag, Stdin: po.Stdin, BufferBytes: po.BufferBytes}
	if po.Pty {
		opts.Pty = &agent.PtyOptions{Rows: po.Rows, Cols: po.Cols}
	}
	var pid int
	err := vm.agentCall(ctx, "start process", func(c *agent.Client) (err error) {
		pid, err = c.StartProcess(ctx, agent.ExecRequest{Argv: po.Argv, Shell: po.Shell, Env: po.Env, Dir: po.Dir, User: po.User, Timeout: po.Timeout}, opts)
		return err
	})
	return pid, err
}

// Processes lists the background processes started through the agent,
// oldest first: running ones and exited ones not yet waited for.
func (vm *VM) Processes(ctx context.Context) ([]ProcessInfo, error) {
	var ps []agent.Process
	err := vm.agentCall(ctx, "list processes", func(c *agent.Client) (err error) {
		ps, err = c.ListProcesses(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]ProcessInfo, 0, len(ps))
	for _, p := range ps {
		pi := ProcessInfo{Pid: p.Pid, Command: commandLine(p.Argv), Argv: p.Argv, Tag: p.Tag, StartedAt: p.Started.UTC(), Running: p.Running, Pty: p.Pty}
		if pi.Argv == nil {
			pi.Argv = []string{}
		}
		if p.Exit != nil {
			pi.Exit = &ExitStatus{ExitCode: p.Exit.ExitCode, Signal: p.Exit.Signal, TimedOut: p.Exit.TimedOut}
		}
		out = append(out, pi)
	}
	return out, nil
}

// commandLine renders an argv for display; a shell script shows as itself.
func commandLine(argv []string) string {
	if len(argv) == 3 && strings.HasSuffix(argv[0], "sh") && argv[1] == "-lc" {
		return argv[2]
	}
	return strings.Join(argv, " ")
}

// AttachOptions adjust Attach.
type AttachOptions struct {
	// Stdin, if set, is copied to the process's stdin while attached; its
	// EOF does not close the process's stdin (see CloseStdin).
	Stdin io.Reader
	// Stdout and Stderr receive the output; nil discards. A process on a
	// pseudo-terminal writes everything to Stdout.
	Stdout, Stderr io.Writer
	// NoReplay skips the output buffered before the attachment.
	NoReplay bool
}

// Attach writes a background process's buffered output (unless NoReplay)
// and then its live output until it exits, and returns how it ended. If
// ctx ends first, Attach returns with an error matching ErrTimeout (for a
// deadline) and the process keeps running. Several host processes may be
// attached at once where the agent channel allows.
func (vm *VM) Attach(ctx context.Context, pid int, ao AttachOptions) (ExitStatus, error) {
	if err := validPid(pid); err != nil {
		return ExitStatus{}, wrapErr("attach", vm.id, ErrInvalidConfig, err)
	}
	var res agent.ExecResult
	err := vm.agentCall(ctx, "attach", func(c *agent.Client) (err error) {
		res, err = c.AttachProcess(ctx, pid, ao.Stdout, ao.Stderr, agent.AttachOptions{Stdin: ao.Stdin, NoReplay: ao.NoReplay})
		return err
	})
	return ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut}, err
}

// SendStdin writes data to a background process's stdin.
func (vm *VM) SendStdin(ctx context.Context, pid int, data []byte) error {
	if err := validPid(pid); err != nil {
		return wrapErr("send stdin", vm.id, ErrInvalidConfig, err)
	}
	return vm.agentCall(ctx, "send stdin", func(c *agent.Client) error { return c.WriteProcess(ctx, pid, data) })
}

// CloseStdin closes a background process's stdin.
func (vm *VM) CloseStdin(ctx context.Context, pid int) error {
	if err := validPid(pid); err != nil {
		return wrapErr("close stdin", vm.id, ErrInvalidConfig, err)
	}
	return vm.agentCall(ctx, "close stdin", func(c *agent.Client) error { return c.CloseProcessStdin(ctx, pid) })
}

// Signal sends a signal ("SIGTERM", "TERM" or "15"; empty means SIGTERM)
// to a background process's process group. An unknown pid fails with
// ErrNotFound.
func (vm *VM) Signal(ctx context.Context, pid int, sig string) error {
	if err := validPid(pid); err != nil {
		return wrapErr("signal", vm.id, ErrInvalidConfig, err)
	}
	if sig == "" {
		sig = "SIGTERM"
	}
	return vm.agentCall(ctx, "signal", func(c *agent.Client) error { return c.SignalProcess(ctx, pid, sig) })
}

// ResizeProcess sets the window size of a background process's terminal.
func (vm *VM) ResizeProcess(ctx context.Context, pid int, rows, cols uint16) error {
	if err := validPid(pid); err != nil {
		return wrapErr("resize", vm.id, ErrInvalidConfig, err)
	}
	return vm.agentCall(ctx, "resize", func(c *agent.Client) error { return c.ResizeProcess(ctx, pid, rows, cols) })
}

// WaitProcess waits for a background process to exit, returns how it
// ended, and makes the agent forget it (a later call fails with ErrNotFound).
func (vm *VM) WaitProcess(ctx context.Context, pid int) (ExitStatus, error) {
	if err := validPid(pid); err != nil {
		return ExitStatus{}, wrapErr("wait", vm.id, ErrInvalidConfig, err)
	}
	var res agent.ExecResult
	err := vm.agentCall(ctx, "wait", func(c *agent.Client) (err error) {
		res, err = c.WaitProcess(ctx, pid)
		return err
	})
	return ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut}, err
}

func validPid(pid int) error {
	if pid <= 0 {
		return configErr("pid", fmt.Sprint(pid), "must be a positive process id")
	}
	return nil
}
