// Package vmmfake is a VMM backend for tests of the lifecycle engine: no
// emulator, no guest kernel. Launch starts a placeholder process (so that
// liveness, kill and cleanup work on a real PID) and serves the real guest
// agent in this process on a Unix socket, running commands on the host as
// the test's user. It makes lifecycle logic (each step's undo, locks,
// reconcile, concurrency) testable in seconds.
//
// Only tests use it: it runs guest commands on the host.
package vmmfake

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/server"
	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Kind is the fake backend's registry name.
const Kind vmm.Kind = "fake"

// Runtime files of a fake VM.
const (
	agentName   = "agent.sock"
	controlName = "fake.ctl"
)

// Backend is the fake backend. Its zero value works.
type Backend struct{}

// New is the fake backend's vmm.Factory.
func New(vmm.Options) vmm.Backend { return &Backend{} }

// Kind implements vmm.Backend.
func (b *Backend) Kind() vmm.Kind { return Kind }

// Usable implements vmm.Backend.
func (b *Backend) Usable(context.Context) (bool, string) { return true, "in-process fake" }

// Version implements vmm.Backend.
func (b *Backend) Version(context.Context) (string, error) { return "fake 1.0", nil }

// Requirements implements vmm.Backend.
func (b *Backend) Requirements() vmm.Requirements {
	return vmm.Requirements{Kernel: vmm.KernelBzImage}
}

// RuntimeFiles implements vmm.Backend.
func (b *Backend) RuntimeFiles() []string { return []string{agentName, controlName} }

// IsVMM implements vmm.Backend: the placeholder is tail(1) following the
// VM's control file, so its command line names the VM's directory.
func (b *Backend) IsVMM(exe string) bool { return filepath.Base(exe) == "tail" }

// vm is the in-process side of one fake VM.
type vm struct {
	cancel context.CancelFunc
	paused bool
}

var (
	mu  sync.Mutex
	vms = map[int]*vm{} // by placeholder PID
)

// Launch implements vmm.Backend.
func (b *Backend) Launch(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if _, err := os.Stat(spec.Kernel); err != nil {
		return vmm.Instance{}, fmt.Errorf("kernel: %w", err)
	}
	ctl := filepath.Join(spec.Dir, controlName)
	if err := os.WriteFile(ctl, nil, 0o600); err != nil {
		return vmm.Instance{}, err
	}
	sock := filepath.Join(spec.Dir, agentName)
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return vmm.Instance{}, err
	}
	cmd := exec.Command("tail", "-f", ctl)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := spec.StartProcess(cmd); err != nil {
		l.Close()
		return vmm.Instance{}, err
	}
	pid := cmd.Process.Pid
	start, _ := vmm.StartTime(pid)
	if spec.BeforeRun != nil {
		if err := spec.BeforeRun(); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			l.Close()
			return vmm.Instance{}, err
		}
	}
	inst := vmm.Instance{PID: pid, PIDStart: start, Control: ctl, Agent: sock, Accel: vmm.AccelTCG}
	sctx, cancel := context.WithCancel(context.Background())
	mu.Lock()
	vms[pid] = &vm{cancel: cancel}
	mu.Unlock()
	srv := server.New(server.Options{
		Version:  "fake",
		EnvFile:  filepath.Join(spec.Dir, "env.sh"),
		PowerOff: func() { vmm.KillProcess(pid, start) },
	})
	go srv.ServeListener(sctx, unixListener{l})
	go func() {
		cmd.Wait()
		cancel()
		mu.Lock()
		delete(vms, pid)
		mu.Unlock()
	}()
	msg := fmt.Sprintf("fake vmm for %s\ncmdline: %s\n%s uptime=0.01s\n", spec.ID, spec.Cmdline, bootparams.ReadyMarker)
	if spec.ConsoleFile != nil {
		// The console logger's pipe, as a real VMM would write it.
		if _, err := spec.ConsoleFile.Write([]byte(msg)); err != nil {
			vmm.KillProcess(pid, start)
			return vmm.Instance{}, err
		}
	} else if spec.ConsoleLog != "" {
		if err := os.WriteFile(spec.ConsoleLog, []byte(msg), 0o600); err != nil {
			vmm.KillProcess(pid, start)
			return vmm.Instance{}, err
		}
	}
	return inst, nil
}

// unixListener adapts a net.Listener to the agent server's Listener.
type unixListener struct{ net.Listener }

func (u unixListener) Accept() (io.ReadWriteCloser, error) { return u.Listener.Accept() }

// WaitReady implements vmm.Backend.
func (b *Backend) WaitReady(ctx context.Context, inst vmm.Instance) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return fmt.Errorf("fake vmm exited: %w", vmm.ErrNotRunning)
	}
	return nil
}

// Stop implements vmm.Backend.
func (b *Backend) Stop(ctx context.Context, inst vmm.Instance) error {
	if err := b.Kill(inst); err != nil {
		return err
	}
	return vmm.WaitExit(ctx, inst)
}

// Kill implements vmm.Backend.
func (b *Backend) Kill(inst vmm.Instance) error { return vmm.KillProcess(inst.PID, inst.PIDStart) }

// Pause implements vmm.Backend.
func (b *Backend) Pause(ctx context.Context, inst vmm.Instance) error { return setPaused(inst, true) }

// Resume implements vmm.Backend.
func (b *Backend) Resume(ctx context.Context, inst vmm.Instance) error { return setPaused(inst, false) }

func setPaused(inst vmm.Instance, p bool) error {
	mu.Lock()
	defer mu.Unlock()
	v := vms[inst.PID]
	if v == nil || !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.ErrNotRunning
	}
	v.paused = p
	return nil
}

// Status implements vmm.Backend.
func (b *Backend) Status(ctx context.Context, inst vmm.Instance) (vmm.State, error) {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.StateGone, nil
	}
	mu.Lock()
	defer mu.Unlock()
	if v := vms[inst.PID]; v != nil && v.paused {
		return vmm.StatePaused, nil
	}
	return vmm.StateRunning, nil
}

// AgentDialers implements vmm.Backend.
func (b *Backend) AgentDialers(inst vmm.Instance) []vmm.Dialer {
	path := inst.Agent
	return []vmm.Dialer{{Name: "unix", Dial: func(ctx context.Context) (io.ReadWriteCloser, error) {
		return agent.DialUnix(ctx, path)
	}}}
}

// Running returns how many fake VMs run in this process.
func Running() int {
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for pid := range vms {
		if vmm.Alive(pid, 0) {
			n++
		}
	}
	return n
}

var _ vmm.Backend = (*Backend)(nil)
