package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// layout is where a VM's files are as firecracker sees them: host paths, or
// paths inside the jail.
type layout struct {
	sock, agent, log, metrics string
	kernel, initrd            string
	disks                     []string
}

func hostLayout(spec vmm.Spec) layout {
	l := layout{
		sock:    controlPath(spec.Dir),
		agent:   agentPath(spec.Dir),
		log:     filepath.Join(spec.Dir, logName),
		metrics: filepath.Join(spec.Dir, metricsName),
		kernel:  spec.Kernel,
		initrd:  spec.Initrd,
	}
	for _, d := range spec.Disks {
		l.disks = append(l.disks, d.Path)
	}
	return l
}

// request is one named call of Firecracker's API.
type request struct {
	name, method, path string
	body               any
}

// setupRequests configure logging and metrics, the only things Firecracker
// accepts before a snapshot load.
func setupRequests(l layout) []request {
	return []request{
		{"logger", "PUT", "/logger", logger{LogPath: l.log, Level: "Warning", ShowLevel: true}},
		{"metrics", "PUT", "/metrics", metrics{MetricsPath: l.metrics}},
	}
}

// bootRequests configure the machine described by spec and start it, in
// order.
func (b *Backend) bootRequests(spec vmm.Spec, l layout) []request {
	args := consoleWords
	if c := strings.TrimSpace(spec.Cmdline); c != "" {
		args += " " + c
	}
	r := []request{
		{"machine", "PUT", "/machine-config", machineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB, TrackDirtyPages: b.TrackDirtyPages}},
		{"boot source", "PUT", "/boot-source", bootSource{KernelImagePath: l.kernel, InitrdPath: l.initrd, BootArgs: args}},
	}
	for i, d := range spec.Disks {
		id := "rootfs"
		if i > 0 {
			id = fmt.Sprintf("drive%d", i)
		}
		r = append(r, request{"drive " + id, "PUT", "/drives/" + id,
			drive{DriveID: id, PathOnHost: l.disks[i], IsRootDevice: i == 0, IsReadOnly: d.ReadOnly,
				RateLimiter: diskLimiter(spec.DiskBPS, spec.DiskIOPS)}})
	}
	if spec.NIC != nil {
		r = append(r, request{"network", "PUT", "/network-interfaces/eth0",
			networkInterface{IfaceID: "eth0", HostDevName: spec.NIC.TAP, GuestMAC: spec.NIC.MAC}})
	}
	r = append(r,
		request{"vsock", "PUT", "/vsock", vsock{GuestCID: spec.VsockCID, UDSPath: l.agent}},
		request{"start", "PUT", "/actions", instanceAction{ActionType: actionInstanceStart}},
	)
	return r
}

// checkSpec rejects what Firecracker would refuse, before anything starts.
func checkSpec(spec vmm.Spec) error {
	switch {
	case spec.Dir == "":
		return errors.New("spec has no runtime directory")
	case spec.Kernel == "":
		return errors.New("spec has no kernel")
	case spec.VCPUs < 1 || spec.VCPUs > 32:
		return fmt.Errorf("firecracker runs 1 to 32 vCPUs, not %d", spec.VCPUs)
	case spec.MemoryMiB < 1:
		return fmt.Errorf("memory %d MiB is not positive", spec.MemoryMiB)
	case spec.VsockCID < 3:
		return fmt.Errorf("vsock CID %d is reserved (the guest's must be >= 3)", spec.VsockCID)
	case len(agentPath(spec.Dir)) > maxSockPath:
		return fmt.Errorf("runtime dir %s is too long for a Unix socket path (max %d bytes)", spec.Dir, maxSockPath)
	}
	return nil
}

// Launch implements vmm.Backend: it starts firecracker (see Start),
// configures the machine, its drives, network interface and vsock over the
// API, and starts the guest. The process outlives ctx and the caller. On
// any failure after the process started, Launch kills it.
func (b *Backend) Launch(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if spec.Incoming { // a restore: Load sends the snapshot (snapshotter.go)
		return b.Start(ctx, spec)
	}
	if err := checkSpec(spec); err != nil {
		return vmm.Instance{}, fmt.Errorf("firecracker launch %s: %w", spec.ID, err)
	}
	return b.launch(ctx, spec)
}

// launch is Launch without checkSpec, so tests can send what our own checks
// would have stopped.
func (b *Backend) launch(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	p, l, err := b.start(ctx, spec)
	if err != nil {
		return vmm.Instance{}, fmt.Errorf("firecracker launch %s: %w", spec.ID, err)
	}
	if err := p.run(ctx, b.bootRequests(spec, l)); err != nil {
		p.undo()
		return vmm.Instance{}, fmt.Errorf("firecracker launch %s: %w", spec.ID, err)
	}
	return p.inst, nil
}

// Start starts firecracker for spec and configures only its logger and
// metrics, leaving a fresh process that accepts LoadSnapshot (Launch does
// the rest of a boot). Disks and kernel are placed in the jail as Launch
// does. The process outlives ctx and the caller.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if err := checkSpec(spec); err != nil {
		return vmm.Instance{}, fmt.Errorf("firecracker start %s: %w", spec.ID, err)
	}
	p, _, err := b.start(ctx, spec)
	if err != nil {
		return vmm.Instance{}, fmt.Errorf("firecracker start %s: %w", spec.ID, err)
	}
	return p.inst, nil
}

// proc is a firecracker process this process started.
type proc struct {
	inst       vmm.Instance
	dir        string
	consoleLog string
	jail       string        // jail directory made for it; "" without jailer
	exited     chan struct{} // closed when the process has been reaped
}

// start runs steps in order: check acceleration, find binaries, prepare
// files, start the process, wait for its API socket, configure logger and
// metrics. On failure it undoes what it did.
func (b *Backend) start(ctx context.Context, spec vmm.Spec) (_ *proc, _ layout, retErr error) {
	if accel, reason := b.Probe.Resolve(spec.Accel); accel != vmm.AccelKVM {
		if reason == "requested" {
			reason = "TCG, as requested"
		}
		return nil, layout{}, fmt.Errorf("firecracker needs hardware KVM and this host offers only %s: %w", reason, vmm.ErrUnavailable)
	}
	bin, err := b.binary()
	if err != nil {
		return nil, layout{}, err
	}
	p := &proc{dir: spec.Dir, consoleLog: spec.ConsoleLog, exited: make(chan struct{})}
	// Stale sockets (or links into an old jail) from an earlier run.
	for _, n := range []string{apiSockName, agentName, logName} {
		os.Remove(filepath.Join(spec.Dir, n))
	}
	name, args := bin, []string{"--api-sock", controlPath(spec.Dir), "--id", fcID(spec.ID)}
	l := hostLayout(spec)
	if j := b.jailer(bin, spec.RunAs); j != nil {
		if name, err = j.binary(); err != nil {
			return nil, layout{}, err
		}
		p.jail = j.jailDir(bin, spec.ID)
		if l, err = j.prepareJail(bin, spec); err != nil {
			os.RemoveAll(p.jail)
			return nil, layout{}, fmt.Errorf("prepare jail: %w", err)
		}
		args = j.args(bin, spec.ID, []string{"--api-sock", l.sock})
	} else {
		for _, f := range []string{l.log, l.metrics} {
			if err := touch(f); err != nil {
				return nil, layout{}, err
			}
		}
	}
	if err := p.exec(name, args, spec); err != nil {
		if p.jail != "" {
			os.RemoveAll(p.jail)
		}
		return nil, layout{}, err
	}
	defer func() {
		if retErr != nil {
			p.undo()
		}
	}()
	// No guest code runs before InstanceStart.
	if spec.BeforeRun != nil {
		if err := spec.BeforeRun(); err != nil {
			return nil, layout{}, fmt.Errorf("before the guest runs: %w", err)
		}
	}
	if err := p.waitSocket(ctx); err != nil {
		return nil, layout{}, err
	}
	if err := p.run(ctx, setupRequests(l)); err != nil {
		return nil, layout{}, err
	}
	return p, l, nil
}

// autoChrootBase is where automatic jails are built (tests move it).
var autoChrootBase = DefaultChrootBase

// jailer returns the jailer configuration a launch uses: Backend.Jailer
// when set; else, when the VM is to run as an unprivileged identity and a
// jailer is installed (beside firecracker, or in PATH), one that chroots
// firecracker and drops to that identity. The VM's cgroup is the caller's
// (spec.Start), and the TAP lives in this process's network namespace, so
// neither --cgroup nor --netns is needed. Without a jailer firecracker
// runs unconfined, as before.
func (b *Backend) jailer(bin string, id *vmm.Identity) *JailerConfig {
	if b.Jailer != nil {
		return b.Jailer
	}
	if id == nil {
		return nil
	}
	j := &JailerConfig{Binary: filepath.Join(filepath.Dir(bin), "jailer"), UID: int(id.UID), GID: int(id.GID), ChrootBase: autoChrootBase}
	if _, err := j.binary(); err != nil {
		j.Binary = ""
		if _, err := j.binary(); err != nil {
			return nil
		}
	}
	return j
}

// exec starts firecracker (or the jailer) in its own session, so that it
// outlives the caller and its terminal, with standard output (the guest's
// serial console) to spec.ConsoleLog and standard error to
// <Dir>/firecracker.err. A goroutine reaps it.
func (p *proc) exec(name string, args []string, spec vmm.Spec) error {
	console := spec.ConsoleLog
	if console == "" {
		console = os.DevNull
	}
	out := spec.ConsoleFile // the capping logger's pipe, closed by the caller
	if out == nil {
		f, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("open console log: %w", err)
		}
		defer f.Close()
		out = f
	}
	errf, err := os.OpenFile(filepath.Join(spec.Dir, errName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("open error log: %w", err)
	}
	defer errf.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, out, errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// In the VM's cgroup from the start; the jailer execs firecracker in
	// place (same pid), so that confines it all.
	if err := spec.StartProcess(cmd); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	// Reap it if it ends while this process lives; otherwise init does.
	go func() { cmd.Wait(); close(p.exited) }()
	p.inst = vmm.Instance{
		PID:     cmd.Process.Pid,
		Control: controlPath(spec.Dir),
		Agent:   agentPath(spec.Dir),
		Accel:   vmm.AccelKVM,
	}
	p.inst.PIDStart, _ = vmm.StartTime(p.inst.PID)
	return nil
}

// waitSocket waits until the API socket accepts connections, the process
// exits or ctx ends.
func (p *proc) waitSocket(ctx context.Context) error {
	for {
		var d net.Dialer
		if c, err := d.DialContext(ctx, "unix", p.inst.Control); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return exitErr(p.dir, p.consoleLog)
		case <-ctx.Done():
			return fmt.Errorf("wait for API socket %s: %w", p.inst.Control, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// run sends reqs in order; an error names the failing step and, when the
// process died meanwhile, carries its last words.
func (p *proc) run(ctx context.Context, reqs []request) error {
	c := newClient(p.inst.Control)
	for _, r := range reqs {
		if err := c.do(ctx, r.method, r.path, r.body, nil); err != nil {
			if !vmm.Alive(p.inst.PID, p.inst.PIDStart) {
				return fmt.Errorf("%s: %w (%w)", r.name, err, exitErr(p.dir, p.consoleLog))
			}
			return fmt.Errorf("%s: %w", r.name, err)
		}
	}
	return nil
}

// undo kills the process, waits a little for it to be reaped (independent
// of any caller's context), and removes its sockets and jail.
func (p *proc) undo() {
	vmm.KillProcess(p.inst.PID, p.inst.PIDStart)
	select {
	case <-p.exited:
	case <-time.After(2 * time.Second):
	}
	for _, n := range []string{apiSockName, agentName} {
		os.Remove(filepath.Join(p.dir, n))
	}
	if p.jail != "" {
		os.RemoveAll(p.jail)
	}
}

// exitErr describes a firecracker that exited, with its standard error, or
// else the tail of its log or console (Firecracker logs to standard output
// until PUT /logger).
func exitErr(dir, consoleLog string) error {
	msg := tail(filepath.Join(dir, errName))
	if msg == "" {
		msg = tail(filepath.Join(dir, logName))
	}
	if msg == "" && consoleLog != "" {
		msg = tail(consoleLog)
	}
	if msg == "" {
		msg = "no message"
	}
	return fmt.Errorf("firecracker exited: %s: %w", msg, vmm.ErrNotRunning)
}

// tail returns the last 2 KiB of file p, trimmed.
func tail(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return strings.TrimSpace(string(b))
}
