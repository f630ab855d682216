package smolvm

import (
	"context"
	"sync"

	"github.com/smolvm-go/smolvm/internal/agent"
)

// TerminalOptions describe a command run on a guest pseudo-terminal. With
// neither Argv nor Shell, the user's login shell runs as a login shell.
type TerminalOptions struct {
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
	// Rows and Cols are the initial window size; 0 means 24x80.
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Term is the TERM variable; empty means "xterm-256color".
	Term string `json:"term,omitempty"`
}

// Terminal is a command running on a pseudo-terminal in the guest, the
// controlling terminal of a new session, so job control works and a 0x03
// byte written to it interrupts the foreground job. Read returns what the
// terminal shows (stdout and stderr merged) and io.EOF once the command has
// ended; Write types raw input. Read, Write, Resize and Signal may run
// concurrently. Close ends the command if it still runs; a Terminal holds
// the VM's agent channel until it is closed or waited for.
type Terminal struct {
	vm      *VM
	t       *agent.Terminal
	once    sync.Once
	release func()
}

// Terminal starts a command (by default a login shell) on a new guest
// pseudo-terminal. ctx bounds the whole session: when it ends the guest
// kills the command's session.
func (vm *VM) Terminal(ctx context.Context, opts TerminalOptions) (*Terminal, error) {
	if len(opts.Argv) > 0 && opts.Shell != "" {
		return nil, wrapErr("terminal", vm.id, ErrInvalidConfig, configErr("command", "", "give an argv or a shell command, not both"))
	}
	if err := validateExecEnv(opts.Env, opts.Dir); err != nil {
		return nil, wrapErr("terminal", vm.id, ErrInvalidConfig, err)
	}
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return nil, wrapErr("terminal", vm.id, ErrCommandUnavailable, err)
	}
	t, err := c.StartTerminal(ctx, agent.ExecRequest{Argv: opts.Argv, Shell: opts.Shell, Env: opts.Env, Dir: opts.Dir, User: opts.User},
		agent.PtyOptions{Rows: opts.Rows, Cols: opts.Cols, Term: opts.Term})
	if err != nil {
		release()
		return nil, vm.agentErr(ctx, "terminal", err)
	}
	return &Terminal{vm: vm, t: t, release: release}, nil
}

// Read reads terminal output; it returns io.EOF once the command has ended
// and all its output has been read.
func (t *Terminal) Read(p []byte) (int, error) { return t.t.Read(p) }

// Write types raw input (0x03 is Ctrl-C, 0x04 Ctrl-D).
func (t *Terminal) Write(p []byte) (int, error) { return t.t.Write(p) }

// CloseInput ends the input; the command keeps running.
func (t *Terminal) CloseInput() error { return t.t.CloseInput() }

// Resize sets the terminal's window size; the foreground job gets SIGWINCH.
func (t *Terminal) Resize(ctx context.Context, rows, cols uint16) error {
	return t.vm.agentErr(ctx, "terminal resize", t.t.Resize(ctx, rows, cols))
}

// Signal sends a signal ("SIGINT", "INT" or "2") to the command's process group.
func (t *Terminal) Signal(ctx context.Context, sig string) error {
	return t.vm.agentErr(ctx, "terminal signal", t.t.Signal(ctx, sig))
}

// Wait waits for the command to end and returns how it ended. Output not
// read yet is discarded: call it after Read returned io.EOF to see it all.
// It closes the terminal, releasing the agent channel.
func (t *Terminal) Wait(ctx context.Context) (ExitStatus, error) {
	res, err := t.t.Wait(ctx)
	st := ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut}
	if err != nil {
		err = t.vm.agentErr(ctx, "terminal", err)
	}
	t.Close()
	return st, err
}

// Close kills the command if it still runs and releases the agent channel.
func (t *Terminal) Close() error {
	t.once.Do(func() {
		t.t.Close()
		t.release()
	})
	return nil
}

// validateExecEnv checks the per-command variables and working directory.
func validateExecEnv(env map[string]string, dir string) error {
	for k := range env {
		if err := ValidateEnvKey(k); err != nil {
			return err
		}
	}
	if dir != "" {
		if err := validateGuestPath("dir", dir); err != nil {
			return err
		}
	}
	return nil
}

// validateGuestPath checks that a guest path is absolute and sane.
func validateGuestPath(field, p string) error {
	switch {
	case p == "":
		return configErr(field, p, "a guest path is required")
	case p[0] != '/':
		return configErr(field, p, "must be an absolute guest path (starting with /)")
	case len(p) > 4096:
		return configErr(field, "", "longer than 4096 bytes")
	}
	for i := 0; i < len(p); i++ {
		if p[i] == 0 {
			return configErr(field, "", "contains a NUL byte")
		}
	}
	return nil
}

// agentCall runs fn with an agent connection and maps its error.
func (vm *VM) agentCall(ctx context.Context, op string, fn func(c *agent.Client) error) error {
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return wrapErr(op, vm.id, ErrCommandUnavailable, err)
	}
	defer release()
	if err := fn(c); err != nil {
		return vm.agentErr(ctx, op, err)
	}
	return nil
}
