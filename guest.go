package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// agentAttempt bounds one connection attempt to the agent; a boot retries
// until its own deadline.
const agentAttempt = 3 * time.Second

// connectAgent connects to the agent of a VMM that was just launched or is
// known to run, retrying until ctx ends or the VMM dies.
func (vm *VM) connectAgent(ctx context.Context, inst vmm.Instance, be vmm.Backend) (*agent.Client, error) {
	var last error
	for {
		if !vmm.Alive(inst.PID, inst.PIDStart) {
			if last == nil {
				last = errors.New("no answer")
			}
			return nil, fmt.Errorf("VMM process %d exited before the agent answered (%v): %w", inst.PID, last, vmm.ErrNotRunning)
		}
		actx, cancel := context.WithTimeout(ctx, agentAttempt)
		c, err := dialAgent(actx, be.AgentDialers(inst))
		cancel()
		if err == nil {
			vm.mu.Lock()
			old := vm.ac
			vm.ac = c
			vm.mu.Unlock()
			if old != nil {
				old.Close()
			}
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last attempt: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dialAgent connects to the agent over the first channel that answers the
// handshake and a health check, trying the backend's channels in order.
func dialAgent(ctx context.Context, dialers []vmm.Dialer) (*agent.Client, error) {
	var errs []error
	for i, d := range dialers {
		dctx, cancel := ctx, context.CancelFunc(func() {})
		if i < len(dialers)-1 {
			// A better channel that does not answer soon gives way to the next.
			dctx, cancel = context.WithTimeout(ctx, time.Second)
		}
		c, err := dialOne(dctx, d)
		cancel()
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", d.Name, err))
	}
	return nil, errors.Join(errs...)
}

func dialOne(ctx context.Context, d vmm.Dialer) (*agent.Client, error) {
	conn, err := d.Dial(ctx)
	if err != nil {
		return nil, err
	}
	// The handshake and a health check, in one round trip.
	c, _, err := agent.Connect(ctx, conn)
	return c, err
}

// client returns a live connection to the guest agent, connecting if needed.
func (vm *VM) client(ctx context.Context) (*agent.Client, error) {
	if c := vm.liveClient(); c != nil {
		return c, nil
	}
	// One connection attempt at a time: the channel serves one session.
	vm.connMu.Lock()
	defer vm.connMu.Unlock()
	if c := vm.liveClient(); c != nil {
		return c, nil
	}
	row, _, err := vm.load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoVM("open", vm.id)
	}
	if err != nil {
		return nil, err
	}
	inst := instanceOf(row)
	if (row.Status != string(StateRunning) && row.Status != string(StatePaused)) || !vmm.Alive(inst.PID, inst.PIDStart) {
		vm.Refresh(ctx)
		return nil, fmt.Errorf("the VM is not running (status %s): %w", vm.Info().Status, ErrState)
	}
	be, err := vm.h.backendOf(row)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := vm.connectAgent(cctx, inst, be)
	if err != nil {
		return nil, fmt.Errorf("connect to the agent: %w: %w", err, ErrCommandUnavailable)
	}
	return c, nil
}

// agentIdle is how long a VM handle keeps an unused agent connection. A
// virtio-serial channel serves one host process at a time, so a handle
// lets go soon after its last operation and other processes get their turn.
const agentIdle = 500 * time.Millisecond

// acquire returns a live agent connection for one operation; release must
// be called when the operation ends.
func (vm *VM) acquire(ctx context.Context) (*agent.Client, func(), error) {
	vm.mu.Lock()
	vm.inflight++
	if vm.idle != nil {
		vm.idle.Stop()
	}
	vm.mu.Unlock()
	release := func() {
		vm.mu.Lock()
		defer vm.mu.Unlock()
		vm.inflight--
		vm.scheduleIdleLocked()
	}
	c, err := vm.client(ctx)
	if err != nil {
		release()
		return nil, nil, err
	}
	return c, release, nil
}

// scheduleIdleLocked arms the timer that closes an unused agent
// connection. vm.mu must be held.
func (vm *VM) scheduleIdleLocked() {
	if vm.inflight > 0 || vm.ac == nil {
		return
	}
	if vm.idle != nil {
		vm.idle.Stop()
	}
	c := vm.ac
	vm.idle = time.AfterFunc(agentIdle, func() {
		vm.mu.Lock()
		if vm.inflight > 0 || vm.ac != c {
			vm.mu.Unlock()
			return
		}
		vm.ac = nil
		vm.mu.Unlock()
		c.Close()
	})
}

// liveClient returns the cached agent connection if it is still open.
func (vm *VM) liveClient() *agent.Client {
	vm.mu.Lock()
	c := vm.ac
	vm.mu.Unlock()
	if c == nil {
		return nil
	}
	select {
	case <-c.Done():
		return nil
	default:
		return c
	}
}

// dropClient closes the cached agent connection.
func (vm *VM) dropClient() {
	vm.mu.Lock()
	c := vm.ac
	vm.ac = nil
	if vm.idle != nil {
		vm.idle.Stop()
	}
	vm.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// agentErr tags an agent error with its kind (ErrCommandUnavailable by
// default). A channel that broke because the VMM is gone is the VM's
// state, not the channel's: ErrState, as for a VM found stopped.
func (vm *VM) agentErr(ctx context.Context, op string, err error) error {
	if errors.Is(err, proto.ErrUnavailable) && !vm.running(context.WithoutCancel(ctx)) {
		vm.dropClient()
		vm.Refresh(context.WithoutCancel(ctx))
		err = fmt.Errorf("the VM is not running (status %s): %w: %w", vm.Info().Status, err, ErrState)
	}
	return wrapErr(op, vm.id, ErrCommandUnavailable, err)
}

// ExecOptions describes a command to run in the guest. Exactly one of Argv
// and Shell is set.
type ExecOptions struct {
	// Argv is the program and its arguments, run without a shell.
	Argv []string
	// Shell is a script run with `sh -lc`, so /etc/profile.d (and the VM's
	// env vars) are read.
	Shell string
	// Env adds variables for this command only.
	Env map[string]string
	// Dir is the working directory (absolute); empty means the user's home.
	Dir string
	// User is a user name or uid; empty means root.
	User string
	// Timeout kills the command's whole process group after this long; 0 means none.
	Timeout time.Duration
	// Stdin feeds the command; nil reads as empty.
	Stdin io.Reader
	// Stdout and Stderr receive the command's output as it runs; nil discards.
	Stdout, Stderr io.Writer

	// Bounds (issue 13).

	// MaxOutputBytes, if positive, caps what is written to each of Stdout
	// and Stderr; the rest is read from the guest and discarded, and
	// ExitStatus.Truncated is set. 0 means no cap (Run applies
	// DefaultMaxOutputBytes).
	MaxOutputBytes int64
}

// ExitStatus is how a command ended.
type ExitStatus struct {
	// ExitCode is the exit status, 128+N when killed by signal N.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed the command, if one did.
	Signal string `json:"signal,omitempty"`
	// TimedOut reports whether the command was killed at its timeout.
	TimedOut bool `json:"timed_out,omitempty"`
	// Truncated reports whether output beyond ExecOptions.MaxOutputBytes
	// was discarded.
	Truncated bool `json:"truncated,omitempty"`
}

// Exec runs a command in the guest, streaming its input and output. A
// command that runs past its Timeout is killed and reported with
// TimedOut set and an error matching ErrTimeout.
func (vm *VM) Exec(ctx context.Context, eo ExecOptions) (ExitStatus, error) {
	if (len(eo.Argv) == 0) == (eo.Shell == "") {
		return ExitStatus{}, wrapErr("exec", vm.id, ErrInvalidConfig, configErr("command", "", "give exactly one of an argv or a shell command"))
	}
	for k := range eo.Env {
		if err := ValidateEnvKey(k); err != nil {
			return ExitStatus{}, wrapErr("exec", vm.id, ErrInvalidConfig, err)
		}
	}
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return ExitStatus{}, wrapErr("exec", vm.id, ErrCommandUnavailable, err)
	}
	defer release()
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: eo.Argv, Shell: eo.Shell, Env: eo.Env, Dir: eo.Dir, User: eo.User, Timeout: eo.Timeout, MaxOutputBytes: eo.MaxOutputBytes},
		eo.Stdin, eo.Stdout, eo.Stderr)
	st := ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut, Truncated: res.StdoutTruncated || res.StderrTruncated}
	if err != nil {
		return st, vm.agentErr(ctx, "exec", err)
	}
	if st.TimedOut {
		return st, wrapErr("exec", vm.id, ErrTimeout, fmt.Errorf("command killed after %v", eo.Timeout))
	}
	return st, nil
}

// RunOption tunes Run.
type RunOption func(*ExecOptions)

// RunTimeout kills the command after d.
func RunTimeout(d time.Duration) RunOption { return func(e *ExecOptions) { e.Timeout = d } }

// RunEnv sets variables for this command only.
func RunEnv(env map[string]string) RunOption { return func(e *ExecOptions) { e.Env = env } }

// RunDir sets the working directory.
func RunDir(dir string) RunOption { return func(e *ExecOptions) { e.Dir = dir } }

// RunUser runs the command as user (name or uid).
func RunUser(user string) RunOption { return func(e *ExecOptions) { e.User = user } }

// Run runs a shell command in the guest (`sh -lc`) and collects its output,
// at most DefaultMaxOutputBytes per stream unless RunMaxOutputBytes says
// otherwise (CommandResult.Truncated tells). A non-zero exit code is not an
// error: check CommandResult.OK.
func (vm *VM) Run(ctx context.Context, command string, opts ...RunOption) (CommandResult, error) {
	eo := ExecOptions{Shell: command, MaxOutputBytes: DefaultMaxOutputBytes}
	for _, f := range opts {
		f(&eo)
	}
	out, errb := newCapBuffer(eo.MaxOutputBytes), newCapBuffer(eo.MaxOutputBytes)
	eo.Stdout, eo.Stderr = out, errb
	st, err := vm.Exec(ctx, eo)
	return CommandResult{ExitCode: st.ExitCode, Stdout: out.String(), Stderr: errb.String(), Truncated: st.Truncated}, err
}

// Upload streams r into the guest file guestPath (absolute) with mode,
// creating parent directories. The file is replaced atomically.
func (vm *VM) Upload(ctx context.Context, guestPath string, r io.Reader, mode os.FileMode) error {
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return wrapErr("upload", vm.id, ErrCommandUnavailable, err)
	}
	defer release()
	return vm.agentErr(ctx, "upload", c.Upload(ctx, guestPath, r, mode, true))
}

// Download streams the guest file guestPath (absolute) into w and returns
// its mode as the guest claims it (DownloadFile applies SafeMode to it).
// With DownloadMaxBytes, a larger file fails with ErrInvalidConfig
// after that many bytes.
func (vm *VM) Download(ctx context.Context, guestPath string, w io.Writer, opts ...DownloadOption) (os.FileMode, error) {
	var do downloadOptions
	for _, f := range opts {
		f(&do)
	}
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return 0, wrapErr("download", vm.id, ErrCommandUnavailable, err)
	}
	defer release()
	var lw *limitWriter
	if do.maxBytes > 0 {
		lw = &limitWriter{w: w, left: do.maxBytes}
		w = lw
	}
	m, err := c.Download(ctx, guestPath, w)
	if lw != nil && lw.over {
		return 0, wrapErr("download", vm.id, ErrInvalidConfig, configErr("max_bytes", fmt.Sprint(do.maxBytes), guestPath+" is larger than the download limit"))
	}
	return m, vm.agentErr(ctx, "download", err)
}

// UploadFile copies the host file localPath to guestPath, keeping its mode.
func (vm *VM) UploadFile(ctx context.Context, localPath, guestPath string) error {
	f, err := os.Open(localPath)
	if err != nil {
		return wrapErr("upload", vm.id, ErrNotFound, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return wrapErr("upload", vm.id, ErrNotFound, err)
	}
	if fi.IsDir() {
		return wrapErr("upload", vm.id, ErrInvalidConfig, fmt.Errorf("%s is a directory", localPath))
	}
	return vm.Upload(ctx, guestPath, f, fi.Mode().Perm())
}

// DownloadFile copies the guest file guestPath to the host file localPath,
// keeping its mode as far as SafeMode allows (at most 0755, no setuid,
// setgid, sticky or group/other write). localPath is replaced atomically;
// on failure nothing is left.
func (vm *VM) DownloadFile(ctx context.Context, guestPath, localPath string, opts ...DownloadOption) (retErr error) {
	tmp, err := os.CreateTemp(filepath.Dir(localPath), "."+filepath.Base(localPath)+".smolvm-*")
	if err != nil {
		return wrapErr("download", vm.id, ErrInvalidConfig, err)
	}
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	mode, err := vm.Download(ctx, guestPath, tmp, opts...)
	if err != nil {
		return err
	}
	if err := tmp.Chmod(SafeMode(mode)); err != nil {
		return wrapErr("download", vm.id, ErrInvalidConfig, err)
	}
	if err := tmp.Close(); err != nil {
		return wrapErr("download", vm.id, ErrInvalidConfig, err)
	}
	if err := os.Rename(tmp.Name(), localPath); err != nil {
		return wrapErr("download", vm.id, ErrInvalidConfig, err)
	}
	return nil
}

// SetEnvVars sets environment variables in the guest for every later
// command and SSH login, merging with those already set.
func (vm *VM) SetEnvVars(ctx context.Context, vars map[string]string) error {
	return vm.setEnv(ctx, vars, false)
}

// ReplaceEnvVars makes vars the guest's only persisted environment variables.
func (vm *VM) ReplaceEnvVars(ctx context.Context, vars map[string]string) error {
	return vm.setEnv(ctx, vars, true)
}

func (vm *VM) setEnv(ctx context.Context, vars map[string]string, replace bool) error {
	for k := range vars {
		if err := ValidateEnvKey(k); err != nil {
			return wrapErr("set env", vm.id, ErrInvalidConfig, err)
		}
	}
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return wrapErr("set env", vm.id, ErrCommandUnavailable, err)
	}
	defer release()
	return vm.agentErr(ctx, "set env", c.SetEnv(ctx, vars, replace))
}

// UnsetEnvVars removes persisted environment variables from the guest.
func (vm *VM) UnsetEnvVars(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := ValidateEnvKey(k); err != nil {
			return wrapErr("unset env", vm.id, ErrInvalidConfig, err)
		}
	}
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return wrapErr("unset env", vm.id, ErrCommandUnavailable, err)
	}
	defer release()
	return vm.agentErr(ctx, "unset env", c.UnsetEnv(ctx, keys))
}

// ListEnvVars returns the guest's persisted environment variables.
func (vm *VM) ListEnvVars(ctx context.Context) (map[string]string, error) {
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return nil, wrapErr("list env", vm.id, ErrCommandUnavailable, err)
	}
	defer release()
	m, err := c.ListEnv(ctx)
	return m, vm.agentErr(ctx, "list env", err)
}
