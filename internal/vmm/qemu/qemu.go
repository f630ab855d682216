// Package qemu is the QEMU backend: qemu-system-x86_64 with the microvm (or
// q35) machine, direct kernel boot, virtio devices, a serial console to a
// file, the agent on a virtio-serial port and QMP for control.
package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// AgentPortName is the virtio-serial port name the guest agent opens
// (/dev/virtio-ports/<name>).
const AgentPortName = "org.smolvm.agent"

// Kind is the QEMU backend's registry name.
const Kind vmm.Kind = "qemu"

// Backend launches VMs with qemu-system-x86_64. The zero value looks the
// binary up in PATH and detects acceleration on the real host.
type Backend struct {
	// Binary is the QEMU executable; empty means qemu-system-x86_64 from PATH.
	Binary string
	// Probe describes the host's acceleration.
	Probe vmm.Probe
}

// New is the QEMU backend's vmm.Factory.
func New(o vmm.Options) vmm.Backend { return &Backend{Binary: o.Binary, Probe: o.Probe} }

// Kind implements vmm.Backend.
func (b *Backend) Kind() vmm.Kind { return Kind }

// Usable implements vmm.Backend: QEMU runs wherever its binary does (under
// TCG without KVM), so only the binary is looked for.
func (b *Backend) Usable(ctx context.Context) (bool, string) {
	bin, err := b.binary()
	if err != nil {
		return false, err.Error()
	}
	return true, "qemu at " + bin
}

// Requirements implements vmm.Backend.
func (b *Backend) Requirements() vmm.Requirements {
	return vmm.Requirements{Kernel: vmm.KernelBzImage, HostFolders: true}
}

// Runtime files of a VM in its runtime directory.
const (
	qmpName   = "qmp.sock"
	agentName = "agent.sock"
	errName   = "qemu.err"
)

// RuntimeFiles implements vmm.Backend.
func (b *Backend) RuntimeFiles() []string { return []string{qmpName, agentName, errName} }

// IsVMM implements vmm.Backend.
func (b *Backend) IsVMM(exe string) bool {
	return strings.HasPrefix(filepath.Base(strings.TrimSuffix(exe, " (deleted)")), "qemu-system-")
}

// AgentDialers implements vmm.Backend: vsock first where the VM has it
// (many host processes at once), then the virtio-serial socket (one host
// process at a time).
func (b *Backend) AgentDialers(inst vmm.Instance) []vmm.Dialer {
	var out []vmm.Dialer
	if inst.VsockCID != 0 {
		cid := inst.VsockCID
		out = append(out, vmm.Dialer{Name: "vsock", Dial: func(ctx context.Context) (io.ReadWriteCloser, error) {
			return agent.DialVsock(ctx, cid, proto.DefaultVsockPort)
		}})
	}
	path := inst.Agent
	// The chardev socket exists from launch on (made for QEMU), and QEMU
	// reads from it only once the guest opened the port.
	return append(out, vmm.Dialer{Name: "virtio-serial", Buffered: true, Dial: func(ctx context.Context) (io.ReadWriteCloser, error) {
		return agent.DialUnix(ctx, path)
	}})
}

func (b *Backend) binary() (string, error) {
	name := b.Binary
	if name == "" {
		name = "qemu-system-x86_64"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found (install the qemu-system-x86 package): %w", name, vmm.ErrUnavailable)
	}
	return p, nil
}

// Version returns the first line of `qemu-system-x86_64 --version`.
func (b *Backend) Version(ctx context.Context) (string, error) {
	bin, err := b.binary()
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// Paths of a VM's sockets inside its runtime directory.
func controlPath(dir string) string { return filepath.Join(dir, qmpName) }
func agentPath(dir string) string   { return filepath.Join(dir, agentName) }

// vhostVsockDevice is the host device QEMU's vhost-vsock needs.
var vhostVsockDevice = "/dev/vhost-vsock"

// maxSocketPath is the longest path a Unix socket address holds.
const maxSocketPath = 107

// Args returns QEMU's command line for spec with acceleration accel on
// this host, for running QEMU by hand (the benchmark's bare boot): it
// names every file by path, where Launch hands QEMU open descriptors.
func Args(spec vmm.Spec, accel vmm.Accel) []string {
	return args(spec, accel, vmm.TSCkHz(), pathSources(spec))
}

func (b *Backend) kvmDevice() string {
	if b.Probe.DevKVM != "" {
		return b.Probe.DevKVM
	}
	return "/dev/kvm"
}

// SandboxOption is QEMU's -sandbox setting: its seccomp filter forbids
// obsolete system calls, changing privileges, spawning processes and
// changing scheduling or resource limits.
const SandboxOption = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// sources says how QEMU reaches each file of a VM: by path (Args) or by
// an inherited descriptor (Launch).
type sources struct {
	// pre are leading options (-add-fd of descriptors given to QEMU).
	pre []string
	// qmp and agent are socket chardev options ("path=P" or "fd=N").
	qmp, agent string
	// console is the console file chardev's path (a path or /dev/fdset/N).
	console string
	// kernel and initrd are what -kernel and -initrd read.
	kernel, initrd string
	// disks are the drives' file= values, one per spec disk.
	disks []string
	// netdev is the tap netdev's source ("ifname=T,script=no,downscript=no" or "fd=N").
	netdev string
	// vhostfd is the vhost-vsock device's descriptor option (",vhostfd=N") or "".
	vhostfd string
	// paused starts the guest's vCPUs stopped (-S) until a QMP cont.
	paused bool
	// shares are the virtio-fs sockets' chardev options, one per spec share
	// ("path=P" or "fd=N" of a connection to its virtiofsd).
	shares []string
}

// pathSources names every file of spec by its path.
func pathSources(spec vmm.Spec) sources {
	s := sources{
		qmp: "path=" + optValue(controlPath(spec.Dir)), agent: "path=" + optValue(agentPath(spec.Dir)),
		console: optValue(spec.ConsoleLog), kernel: spec.Kernel, initrd: spec.Initrd,
	}
	for _, d := range spec.Disks {
		s.disks = append(s.disks, optValue(d.Path))
	}
	if spec.NIC != nil {
		s.netdev = "ifname=" + spec.NIC.TAP + ",script=no,downscript=no"
	}
	for _, sh := range spec.Shares {
		s.shares = append(s.shares, "path="+optValue(shareSocket(spec.Dir, sh.Tag)))
	}
	return s
}

// args is QEMU's command line for spec, with the host's TSC frequency
// (0: unknown) and the files reached through src.
func args(spec vmm.Spec, accel vmm.Accel, tscKHz int, src sources) []string {
	machine := spec.Machine
	if machine == "" {
		machine = "microvm"
	}
	cmdline := "console=ttyS0 reboot=t panic=-1 " + bootparams.Quiet + " " + spec.Cmdline
	a := append([]string(nil), src.pre...)
	switch machine {
	case "microvm":
		// isa-serial for the console, an RTC for wall time; no PIC/PIT
		// emulation cost beyond what the kernel needs.
		a = append(a, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend="+memBackendID)
	default:
		a = append(a, "-M", machine+",memory-backend="+memBackendID)
	}
	// The guest's RAM is a named backend so that it can be saved and shared
	// (see snapshot.go).
	a = append(a, "-object", memBackend(spec))
	if accel == vmm.AccelKVM {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		// A bounded translation cache keeps TCG's host memory in check.
		a = append(a, "-accel", "tcg,tb-size=64", "-cpu", "max")
		if tscKHz > 0 {
			cmdline += fmt.Sprintf(" tsc_early_khz=%d", tscKHz)
		}
	}
	if src.paused {
		a = append(a, "-S")
	}
	a = append(a,
		"-smp", fmt.Sprint(spec.VCPUs),
		"-m", fmt.Sprint(spec.MemoryMiB),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-sandbox", SandboxOption,
		"-name", "smolvm-"+spec.ID,
		"-kernel", src.kernel,
		"-append", cmdline,
		"-chardev", consoleChardev(spec, src.console),
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,"+src.qmp+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	)
	if spec.Initrd != "" {
		a = append(a, "-initrd", src.initrd)
	}
	dev := func(kind string) string {
		if machine == "microvm" {
			return kind + "-device"
		}
		return kind + "-pci"
	}
	for i, d := range spec.Disks {
		opt := fmt.Sprintf("id=disk%d,file=%s,format=raw,if=none,cache=unsafe,discard=unmap", i, src.disks[i])
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		opt += throttling(spec)
		a = append(a, "-drive", opt, "-device", fmt.Sprintf("%s,drive=disk%d", dev("virtio-blk"), i))
	}
	if spec.NIC != nil {
		a = append(a,
			"-netdev", "tap,id=net0,"+src.netdev,
			"-device", fmt.Sprintf("%s,netdev=net0,mac=%s", dev("virtio-net"), spec.NIC.MAC))
	}
	if spec.VsockCID != 0 {
		a = append(a, "-device", fmt.Sprintf("%s,guest-cid=%d%s", dev("vhost-vsock"), spec.VsockCID, src.vhostfd))
	}
	// Free page reporting hands the memory the guest frees back to the
	// host: a booted guest otherwise keeps every page it ever touched.
	a = append(a, "-device", dev("virtio-balloon")+",free-page-reporting=on")
	a = append(a, shareArgs(spec, dev, src.shares)...)
	// A hardware RNG for the guest: restored clones must not share the
	// randomness of the snapshot they were made from.
	a = append(a, "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", dev("virtio-rng")+",rng=rng0")
	if spec.Incoming {
		a = append(a, "-incoming", "defer")
	}
	serialDev := "virtio-serial-device"
	if machine != "microvm" {
		serialDev = "virtio-serial-pci"
	}
	a = append(a,
		"-device", serialDev,
		"-chardev", "socket,id=agent,"+src.agent+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+AgentPortName,
	)
	return a
}

// throttling is the -drive options that throttle a disk as spec asks
// ("" for none).
func throttling(spec vmm.Spec) string {
	var s string
	if spec.DiskBPS > 0 {
		s += fmt.Sprintf(",throttling.bps-total=%d", spec.DiskBPS)
	}
	if spec.DiskIOPS > 0 {
		s += fmt.Sprintf(",throttling.iops-total=%d", spec.DiskIOPS)
	}
	return s
}

// Launch implements vmm.Backend. QEMU runs in its own session so that it
// survives the caller; its standard error goes to <Dir>/qemu.err.
//
// QEMU opens nothing by path: this process opens the disks, console log,
// kernel, initrd, TAP and vhost-vsock device, binds the QMP and agent
// sockets, and hands them over as descriptors (see confine.go). So QEMU
// can run as spec.RunAs, an unprivileged user with no capabilities, under
// its seccomp sandbox. It starts in the VM's cgroup (spec.Start) with its
// vCPUs stopped; Launch calls spec.BeforeRun and only then lets the guest
// run.
func (b *Backend) Launch(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	bin, err := b.binary()
	if err != nil {
		return vmm.Instance{}, err
	}
	if len(agentPath(spec.Dir)) > maxSocketPath {
		return vmm.Instance{}, fmt.Errorf("runtime dir %s is too long for a Unix socket path (max %d bytes)", spec.Dir, maxSocketPath)
	}
	accel, _ := b.Probe.Resolve(spec.Accel)
	if accel == vmm.AccelKVM {
		if _, err := os.Stat(b.kvmDevice()); err != nil {
			return vmm.Instance{}, fmt.Errorf("accel kvm: %v: %w", err, vmm.ErrUnavailable)
		}
		if err := canOpen(b.kvmDevice(), spec.RunAs); err != nil {
			return vmm.Instance{}, fmt.Errorf("accel kvm: %w: %w", err, vmm.ErrUnavailable)
		}
	}
	for _, p := range []string{controlPath(spec.Dir), agentPath(spec.Dir)} {
		os.Remove(p)
	}
	// vsock only where the host has vhost-vsock; virtio-serial always.
	if _, err := os.Stat(vhostVsockDevice); err != nil {
		spec.VsockCID = 0
	}
	// The virtio-fs daemons first: QEMU gets connections to them.
	stopShares, err := startShares(spec)
	if err != nil {
		return vmm.Instance{}, err
	}
	files := &fdFiles{}
	defer files.close()
	src, err := openSources(spec, files)
	if err != nil {
		stopShares()
		for _, p := range []string{controlPath(spec.Dir), agentPath(spec.Dir)} {
			os.Remove(p)
		}
		return vmm.Instance{}, err
	}
	errPath := filepath.Join(spec.Dir, errName)
	errFile, err := os.OpenFile(errPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		stopShares()
		return vmm.Instance{}, err
	}
	defer errFile.Close()
	cmd := exec.Command(bin, args(spec, accel, b.Probe.TSCkHz(), src)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, consoleStdout(spec), errFile
	cmd.ExtraFiles = files.list
	// The VM's directory in the environment lets cleanup recognise the
	// process (no path of ours is on its command line).
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", VMDirEnv + "=" + spec.Dir}
	cmd.SysProcAttr = sysProcAttr(spec.RunAs)
	if err := spec.StartProcess(cmd); err != nil {
		stopShares()
		return vmm.Instance{}, fmt.Errorf("start %s: %w", bin, err)
	}
	files.close() // QEMU holds its own copies
	// Reap it if it ends while this process lives; otherwise init does.
	go cmd.Wait()
	inst := vmm.Instance{PID: cmd.Process.Pid, Control: controlPath(spec.Dir), Agent: agentPath(spec.Dir), Accel: accel, VsockCID: spec.VsockCID}
	inst.PIDStart, _ = vmm.StartTime(inst.PID)
	if err := b.run(ctx, spec, inst); err != nil {
		vmm.KillProcess(inst.PID, inst.PIDStart)
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		vmm.WaitExit(wctx, inst)
		cancel()
		return vmm.Instance{}, err
	}
	return inst, nil
}

// run finishes the host's work on a freshly started, paused QEMU and lets
// the guest run.
func (b *Backend) run(ctx context.Context, spec vmm.Spec, inst vmm.Instance) error {
	if spec.BeforeRun != nil {
		if err := spec.BeforeRun(); err != nil {
			return fmt.Errorf("before the guest runs: %w", err)
		}
	}
	if spec.Incoming {
		return nil // Load resumes the guest once its state is in
	}
	if err := withQMP(ctx, inst.Control, func(q *qmp) error { _, err := q.exec("cont", nil); return err }); err != nil {
		if !vmm.Alive(inst.PID, inst.PIDStart) {
			return b.exitErr(inst)
		}
		return fmt.Errorf("start the guest's vCPUs: %w", err)
	}
	return nil
}

// WaitReady implements vmm.Backend: it waits for the QMP socket and a
// running guest. A QEMU that exits meanwhile fails with its standard error.
func (b *Backend) WaitReady(ctx context.Context, inst vmm.Instance) error {
	for {
		if !vmm.Alive(inst.PID, inst.PIDStart) {
			return b.exitErr(inst)
		}
		if _, err := os.Stat(inst.Control); err == nil {
			st, err := b.Status(ctx, inst)
			if err == nil && st == vmm.StateRunning {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu did not become ready: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (b *Backend) exitErr(inst vmm.Instance) error {
	msg, _ := os.ReadFile(filepath.Join(filepath.Dir(inst.Control), errName))
	s := strings.TrimSpace(string(msg))
	if s == "" {
		s = "no message"
	}
	return fmt.Errorf("qemu exited: %s: %w", s, vmm.ErrNotRunning)
}

// Stop implements vmm.Backend: QMP quit, then wait for the process.
func (b *Backend) Stop(ctx context.Context, inst vmm.Instance) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return nil
	}
	err := withQMP(ctx, inst.Control, func(q *qmp) error { _, err := q.exec("quit", nil); return err })
	if err != nil && vmm.Alive(inst.PID, inst.PIDStart) {
		return err
	}
	return vmm.WaitExit(ctx, inst)
}

// Kill implements vmm.Backend.
func (b *Backend) Kill(inst vmm.Instance) error {
	err := vmm.KillProcess(inst.PID, inst.PIDStart)
	if inst.Control != "" {
		killShares(filepath.Dir(inst.Control))
	}
	return err
}

// Pause implements vmm.Backend.
func (b *Backend) Pause(ctx context.Context, inst vmm.Instance) error {
	return b.simple(ctx, inst, "stop")
}

// Resume implements vmm.Backend.
func (b *Backend) Resume(ctx context.Context, inst vmm.Instance) error {
	return b.simple(ctx, inst, "cont")
}

func (b *Backend) simple(ctx context.Context, inst vmm.Instance, cmd string) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.ErrNotRunning
	}
	return withQMP(ctx, inst.Control, func(q *qmp) error { _, err := q.exec(cmd, nil); return err })
}

// Status implements vmm.Backend.
func (b *Backend) Status(ctx context.Context, inst vmm.Instance) (vmm.State, error) {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.StateGone, nil
	}
	var st vmm.State
	err := withQMP(ctx, inst.Control, func(q *qmp) error {
		raw, err := q.exec("query-status", nil)
		if err != nil {
			return err
		}
		var s struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		switch s.Status {
		case "running":
			st = vmm.StateRunning
		case "paused", "suspended", "prelaunch":
			st = vmm.StatePaused
		case "shutdown", "guest-panicked", "internal-error":
			st = vmm.StateShutdown
		default:
			st = vmm.State(s.Status)
		}
		return nil
	})
	if err != nil && !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.StateGone, nil
	}
	return st, err
}

var _ vmm.Backend = (*Backend)(nil)
