package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/cgroup"
	"github.com/smolvm-go/smolvm/internal/consolelog"
	"github.com/smolvm-go/smolvm/internal/netplan"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Default deadlines of lifecycle steps.
const (
	// DefaultBootTimeout bounds the wait from launch until the agent answers.
	// Generous: under TCG a boot takes seconds, more when several run at once.
	DefaultBootTimeout = 90 * time.Second
	// DefaultStopTimeout bounds a clean power-off before the VMM is told to quit.
	DefaultStopTimeout = 10 * time.Second
)

// startOp is the state of one Start as its steps run.
type startOp struct {
	// dnsReady waits for the DNS forwarder the egress step started (nil:
	// none to wait for).
	dnsReady func(context.Context) error
	// console is the write end of the console logger's pipe, for the VMM
	// (the console step starts the logger, the launch hands it over).
	console *os.File
	// pending is work steps started in the background that must be over
	// before the guest runs (see beforeGuest).
	pending []chan error

	vm      *VM
	row     store.VM
	rec     record
	backend vmm.Backend
	plan    netplan.Plan
	inst    vmm.Instance
	client  *agent.Client
	bootCtx context.Context
	cg      *cgroup.Group // the VM's cgroup; nil where this process makes none
}

func (s *startOp) h() *Host { return s.vm.h }

// beforeGuest runs fn in the background; the launch waits for it after the
// VMM process starts and before the guest runs, and fails with its error.
func (s *startOp) beforeGuest(fn func() error) {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	s.pending = append(s.pending, done)
}

// awaitPending waits for the work beforeGuest started.
func (s *startOp) awaitPending() error {
	var errs []error
	for _, done := range s.pending {
		errs = append(errs, <-done)
	}
	s.pending = nil
	return errors.Join(errs...)
}

// startSteps boot a VM, in order; each undo removes what its step made.
var startSteps = []step[*startOp]{
	{name: "check", do: func(ctx context.Context, s *startOp) error { return s.check(ctx) }},
	{name: "runtime-dir", do: func(ctx context.Context, s *startOp) error { return s.runtimeDir(ctx) }, undo: func(ctx context.Context, s *startOp, cause error) {
		// Undone last, after the VMM is gone: the record says why the
		// start failed (the console tail stays in the log).
		msg, _, _ := strings.Cut(cause.Error(), "\n")
		s.h().st.UpdateVM(ctx, s.vm.id, func(v *store.VM) error {
			v.Status, v.Error = string(StateError), "start: "+msg
			v.PID, v.PIDStart, v.Control, v.Agent, v.VsockCID = 0, 0, "", "", 0
			return nil
		})
	}},
	// The console logger starts first: its start-up (a process of its
	// own) overlaps the host setup below instead of the VMM's.
	{name: "console", do: func(ctx context.Context, s *startOp) (err error) {
		s.console, err = startConsoleLogger(s.vm.id, s.h().logPath(s.vm.id), s.h().consoleMax(s.rec.Config))
		return err
	}, undo: func(ctx context.Context, s *startOp, _ error) { s.closeConsole() }},
	{name: "network", kind: ErrNetwork, do: func(ctx context.Context, s *startOp) error {
		if s.rec.Config.NoNetwork {
			return nil
		}
		if s.rec.Config.AttachInterface != "" {
			return s.attachNetwork(ctx)
		}
		if err := s.h().setupNetwork(ctx, s.vm.id, s.plan, s.rec.Config); err != nil {
			return err
		}
		// Connections a former holder of the guest's address opened must
		// not outlive it. Removing them walks the whole conntrack table,
		// so it runs while the VMM starts; the guest runs only after.
		s.beforeGuest(func() error { return network.ForgetConnections(ctx, s.plan.GuestIP) })
		return nil
	}, undo: func(ctx context.Context, s *startOp, _ error) {
		if !s.rec.Config.NoNetwork {
			s.h().teardownNetwork(ctx, s.vm.id, s.plan)
		}
	}},
	{name: "cgroup", do: func(ctx context.Context, s *startOp) error { return s.makeCgroup() }, undo: func(ctx context.Context, s *startOp, _ error) {
		s.h().removeCgroup(ctx, s.vm.id)
	}},
	{name: "launch", do: func(ctx context.Context, s *startOp) error { return s.launch(ctx) }, undo: func(ctx context.Context, s *startOp, _ error) {
		s.backend.Kill(s.inst)
		vmm.WaitExit(ctx, s.inst)
		s.h().removeRuntimeFiles(s.vm.id, s.backend)
	}},
	{name: "record", do: func(ctx context.Context, s *startOp) error {
		_, err := s.h().st.UpdateVM(ctx, s.vm.id, func(v *store.VM) error {
			v.Status, v.PID, v.PIDStart, v.Control, v.Agent, v.Backend, v.Accel, v.Error, v.VsockCID =
				string(StateRunning), s.inst.PID, s.inst.PIDStart, s.inst.Control, s.inst.Agent, string(s.backend.Kind()), string(s.inst.Accel), "", s.inst.VsockCID
			v.Op = store.OpNone
			return nil
		})
		return err
	}},
	{name: "egress", kind: ErrNetwork, do: func(ctx context.Context, s *startOp) error {
		if s.rec.Config.NoNetwork || s.rec.Config.AttachInterface != "" {
			return nil
		}
		// The network step installed the policy. The DNS forwarder, if one
		// must start, comes up while the guest boots (after the VMM's own
		// start-up, which its start-up would slow): the "dns" step waits
		// for it.
		pol, err := s.rec.Config.netPolicy()
		if err != nil {
			return err
		}
		s.dnsReady, err = s.h().startDNS(s.vm.id, s.plan, s.rec.Config, pol)
		return err
	}, undo: func(ctx context.Context, s *startOp, _ error) {
		if !s.rec.Config.NoNetwork {
			s.h().forgetDNS(s.vm.id)
		}
	}},
	{name: "wait-vmm", do: func(ctx context.Context, s *startOp) error {
		return s.bootErr(s.backend.WaitReady(s.bootCtx, s.inst))
	}},
	{name: "wait-agent", do: func(ctx context.Context, s *startOp) error { return s.waitAgent(ctx) }, undo: func(ctx context.Context, s *startOp, _ error) { s.vm.dropClient() }},
	dnsStep,
	{name: "guest-setup", kind: ErrCommandUnavailable, do: func(ctx context.Context, s *startOp) error { return s.guestSetup(ctx) }},
	{name: "wait-ready", kind: ErrTimeout, do: func(ctx context.Context, s *startOp) error { return s.waitReady(ctx) }},
	{name: "wait-ssh", kind: ErrNetwork, do: func(ctx context.Context, s *startOp) error { return s.waitSSH(ctx) }},
}

// Start boots the VM and waits until its agent answers. On failure
// everything the start made is undone (VMM killed, TAP and rules removed),
// the VM is marked error, and the error names the failed step and carries
// the tail of the serial console.
func (vm *VM) Start(ctx context.Context) error {
	h := vm.h
	unlock, err := h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := vm.startLocked(ctx); err != nil { // warm.go
		vm.Refresh(context.WithoutCancel(ctx))
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	vm.mu.Lock()
	vm.scheduleIdleLocked()
	vm.mu.Unlock()
	return vm.Refresh(ctx)
}

func (s *startOp) check(ctx context.Context) error {
	row, rec, err := s.vm.load(ctx)
	if err != nil {
		return err
	}
	switch {
	case vmm.Alive(row.PID, row.PIDStart):
		return fmt.Errorf("already running: %w", ErrState)
	case row.Op == store.OpCreating:
		return fmt.Errorf("its creation was interrupted; delete it (or run smolvm cleanup): %w", ErrState)
	case row.Op == store.OpDeleting:
		return fmt.Errorf("its deletion was interrupted; delete it again (or run smolvm cleanup): %w", ErrState)
	}
	s.row, s.rec = row, rec
	if s.backend, err = s.h().chooseBackend(ctx, rec.Config, rec.Boot); err != nil {
		return err
	}
	s.plan, err = s.h().plan(ctx, s.vm.id)
	return err
}

func (s *startOp) runtimeDir(ctx context.Context) error {
	if err := agent.PrepareSocketDir(s.h().vmDir(s.vm.id)); err != nil {
		return err
	}
	logPath := s.h().logPath(s.vm.id)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return err
	}
	consolelog.Remove(logPath)
	return nil
}

func (s *startOp) launch(ctx context.Context) error { return s.launchVMM(ctx, false) }

// launchVMM starts the VMM: confined, in the VM's cgroup, its console
// through the logger the console step started, which caps it on disk.
// incoming makes it wait for a saved state instead of booting (a restore).
func (s *startOp) launchVMM(ctx context.Context, incoming bool) (err error) {
	spec := s.h().spec(s.vm.id, s.rec, s.plan, s.backend)
	s.confine(&spec)
	spec.Incoming = incoming
	spec.ConsoleFile = s.console
	// The logger ends with the VMM, or at once if the launch fails: this
	// process lets go of its end of the pipe either way.
	defer s.closeConsole()
	s.inst, err = s.backend.Launch(ctx, spec)
	return err
}

// closeConsole closes this process's end of the console logger's pipe.
func (s *startOp) closeConsole() {
	if s.console != nil {
		s.console.Close()
		s.console = nil
	}
}

func (s *startOp) waitAgent(ctx context.Context) error {
	// The init prints the ready marker once the agent server serves and
	// the boot is done. Meanwhile one connection waits on a buffered
	// channel (bootconnect.go), so the handshake is over when the marker
	// comes; elsewhere, connecting before the marker would only stack up
	// handshakes that time out while the guest boots.
	early := connectEarly(s.bootCtx, s.backend, s.inst)
	if err := waitMarker(s.bootCtx, s.h().logPath(s.vm.id), s.inst); err != nil {
		early.close()
		return s.bootErr(err)
	}
	if c := early.take(s.bootCtx, earlyWait); c != nil {
		s.vm.useClient(c)
		s.client = c
		return nil
	}
	c, err := s.vm.connectAgent(s.bootCtx, s.inst, s.backend)
	if err != nil {
		return s.bootErr(err)
	}
	s.client = c
	return nil
}

func (s *startOp) guestSetup(ctx context.Context) error {
	// The init installed the key from the kernel command line before the
	// ready marker; only an agent that predates that, or a key that does
	// not fit there, takes the round trips.
	if !s.rec.Config.NoNetwork && (s.h().bootSSHKey() == nil || !s.client.Has(proto.CapabilityBootSSHKey)) {
		if err := s.h().installSSHKey(s.bootCtx, s.client); err != nil {
			return err
		}
	}
	if len(s.rec.Config.EnvVars) > 0 {
		if err := s.client.SetEnv(s.bootCtx, s.rec.Config.EnvVars, false); err != nil {
			return fmt.Errorf("set env vars: %w", err)
		}
	}
	return mountFolders(s.bootCtx, s.client, s.rec.Config.Mounts)
}

// bootErr adds the tail of the console log to a failed boot; a deadline is
// the boot timeout.
func (s *startOp) bootErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("guest agent did not answer within %v: %w", s.h().opts.BootTimeout, err)
	}
	logPath := s.h().logPath(s.vm.id)
	if tail := consoleTail(logPath, 25); tail != "" {
		err = fmt.Errorf("%w\n--- last lines of the console (%s) ---\n%s", err, logPath, tail)
	}
	return err
}

// spec builds the VMM launch spec of a VM from its record and network
// identity.
func (h *Host) spec(id string, rec record, p netplan.Plan, be vmm.Backend) vmm.Spec {
	cfg := rec.Config
	kernel := rec.Boot.Kernel
	if be.Requirements().Kernel == vmm.KernelELF {
		kernel = rec.Boot.Vmlinux
	}
	spec := vmm.Spec{
		ID: id, Dir: h.vmDir(id), Kernel: kernel, Initrd: rec.Boot.Initrd,
		VCPUs: cfg.VCPUCount, MemoryMiB: cfg.MemSizeMiB,
		Disks:      []vmm.Disk{{Path: rec.Boot.Disk}},
		ConsoleLog: h.logPath(id),
		Accel:      vmm.Accel(cfg.Accel),
		VsockCID:   p.CID, // every VM has one; the backend uses it where vsock exists
		Shares:     sharesOf(cfg.Mounts),
	}
	// The guest agent also listens on vsock; the backend attaches a vsock
	// device only where the host supports it.
	bp := bootparams.Params{ID: id, AgentPort: proto.DefaultVsockPort,
		// Over AF_VSOCK (QEMU) the agent serves only privileged source
		// ports, i.e. root; Firecracker's hybrid vsock is a Unix socket in a
		// root-only directory and picks its own ports.
		AgentAnyPeer: be.Kind() == vmm.Kind(BackendFirecracker)}
	if a := rec.Attach; !cfg.NoNetwork && a != nil {
		a.bootNetwork(&spec, &bp, p, cfg)
	} else if !cfg.NoNetwork {
		spec.NIC = &vmm.NIC{TAP: p.TAP, MAC: p.MAC}
		bp.Addr, bp.Gateway = p.GuestPrefix(), p.Gateway
		var custom []netip.Addr
		for _, d := range cfg.DNSServers {
			custom = append(custom, netip.MustParseAddr(d)) // validated by Create
		}
		bp.DNS = p.Resolvers(custom)
		bp.SSHKey = h.bootSSHKey()
	}
	spec.Cmdline = strings.TrimSpace(bp.Format() + " " + cfg.BootArgs)
	return spec
}

// load reads the VM's row and record.
func (vm *VM) load(ctx context.Context) (store.VM, record, error) {
	row, err := vm.h.st.GetVM(ctx, vm.id)
	if err != nil {
		return store.VM{}, record{}, err
	}
	var rec record
	if err := json.Unmarshal(row.Config, &rec); err != nil {
		return store.VM{}, record{}, fmt.Errorf("corrupt record: %w", err)
	}
	return row, rec, nil
}

// instanceOf rebuilds the backend's handle on a VM's VMM from its row.
func instanceOf(row store.VM) vmm.Instance {
	return vmm.Instance{PID: row.PID, PIDStart: row.PIDStart, Control: row.Control, Agent: row.Agent, Accel: vmm.Accel(row.Accel), VsockCID: row.VsockCID}
}

// backendOf returns the backend that launched a VM, by the kind recorded in
// its row.
func (h *Host) backendOf(row store.VM) (vmm.Backend, error) {
	if row.Backend == "" {
		return nil, fmt.Errorf("vm %s records no backend", row.ID)
	}
	return h.backend(vmm.Kind(row.Backend))
}

// removeRuntimeFiles removes the sockets and logs a backend made in a VM's
// directory.
func (h *Host) removeRuntimeFiles(id string, be vmm.Backend) {
	for _, f := range be.RuntimeFiles() {
		os.Remove(filepath.Join(h.vmDir(id), f))
	}
}

// dnsStep waits for the DNS forwarder the egress step started, once the
// guest has booted (it started meanwhile), so that the guest's first
// lookups find it.
var dnsStep = step[*startOp]{name: "dns", kind: ErrNetwork, do: func(ctx context.Context, s *startOp) error {
	if s.dnsReady == nil {
		return nil
	}
	return s.dnsReady(s.bootCtx)
}}
