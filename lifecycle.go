package smolvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmm/firecracker"
	"github.com/smolvm-go/smolvm/internal/vmm/qemu"
)

// Markers in a VM row's error field that record an operation in progress,
// so that its interruption can be recognised and finished later.
const (
	markStopping = "stop in progress"
	markDeleting = "delete in progress"
)

// Default deadlines of lifecycle steps.
const (
	// DefaultBootTimeout bounds the wait from launch until the agent answers.
	// Generous: under TCG a boot takes seconds, more when several run at once.
	DefaultBootTimeout = 90 * time.Second
	// DefaultStopTimeout bounds a clean power-off before QEMU is told to quit.
	DefaultStopTimeout = 10 * time.Second
)

// boot is what Create resolved for booting: files and choices that do not
// change over the VM's life.
type boot struct {
	Kernel  string `json:"kernel"`
	Vmlinux string `json:"vmlinux,omitempty"`
	Initrd  string `json:"initrd"`
	Disk    string `json:"disk"`
}

// WithConfig makes New create a VM from c instead of the defaults.
func WithConfig(c VMConfig) Option { return func(o *options) { o.config = &c } }

// WithoutNetwork makes New and Create give the VM no NIC; the agent still works.
func WithoutNetwork() Option { return func(o *options) { o.noNetwork = true } }

// WithBootTimeout bounds how long Start waits for the guest agent.
func WithBootTimeout(d time.Duration) Option { return func(o *options) { o.bootTimeout = d } }

// WithProgress receives progress of long work (image builds) as stage names
// and counts.
func WithProgress(f func(stage string, done, total int64)) Option {
	return func(o *options) { o.progress = f }
}

// New creates and starts a VM: the one given by WithConfig, or by default one
// with the default image (built on first use), 2 vCPUs, 512 MiB and
// networking. Close stops and deletes it. If starting fails, the VM is
// deleted and nothing is left behind.
func New(ctx context.Context, opts ...Option) (*VM, error) {
	o := buildOptions(opts)
	var cfg VMConfig
	if o.config != nil {
		cfg = *o.config
	}
	vm, err := Create(ctx, cfg, CreateOptions{NoNetwork: o.noNetwork}, opts...)
	if err != nil {
		return nil, err
	}
	if err := vm.Start(ctx); err != nil {
		derr := vm.Delete(context.WithoutCancel(ctx))
		return nil, errors.Join(err, derr)
	}
	return vm, nil
}

// resolveBoot finds the kernel, initrd and root disk of cfg: explicit paths
// win, the rest come from cfg.Image (default "default"), built if missing.
func (h *host) resolveBoot(ctx context.Context, cfg *VMConfig, o options) (boot, error) {
	b := boot{Kernel: cfg.KernelPath, Initrd: cfg.InitrdPath, Disk: cfg.RootfsPath}
	if isELF(cfg.KernelPath) { // a vmlinux serves Firecracker (and QEMU's PVH boot)
		b.Vmlinux = cfg.KernelPath
	}
	if b.Kernel == "" || b.Initrd == "" || b.Disk == "" {
		if cfg.Image == "" {
			cfg.Image = ImageDefault
		}
		img, err := image.Get(h.imagesDir(), cfg.Image)
		if errors.Is(err, image.ErrNotFound) && (cfg.Image == ImageDefault || cfg.Image == ImageMinimal) {
			progress := o.progress
			if progress == nil && isTerminal(os.Stderr) {
				progress = stderrProgress(cfg.Image)
			}
			img, err = h.buildImage(ctx, cfg.Image, ImageBuildOptions{Progress: progress})
		}
		if err != nil {
			return boot{}, imageErr("image", cfg.Image, err)
		}
		if b.Kernel == "" {
			b.Kernel, b.Vmlinux = img.Kernel, img.Vmlinux
		}
		if b.Initrd == "" {
			b.Initrd = img.Initrd
		}
		if b.Disk == "" {
			b.Disk = img.Rootfs
		}
	}
	for _, f := range []struct{ field, path string }{{"kernel_path", b.Kernel}, {"initrd_path", b.Initrd}, {"rootfs_path", b.Disk}} {
		if _, err := os.Stat(f.path); err != nil {
			return boot{}, configErr(f.field, f.path, "file not readable: "+err.Error())
		}
	}
	return b, nil
}

// Start boots the VM and waits until its agent answers. On failure the VMM
// is killed, the VM is marked error, and the error carries the tail of the
// serial console.
func (vm *VM) Start(ctx context.Context) (retErr error) {
	h := vm.h
	unlock, err := h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	row, rec, err := vm.load(ctx)
	if errors.Is(err, ErrNotFound) {
		return errNoVM("start", vm.id)
	}
	if err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	if vmm.Alive(row.PID, row.PIDStart) {
		return wrapErr("start", vm.id, ErrState, errors.New("already running"))
	}
	if !rec.Complete {
		return wrapErr("start", vm.id, ErrState, errors.New("its creation was interrupted; delete it (or run smolvm cleanup)"))
	}
	if row.Error == markDeleting {
		return wrapErr("start", vm.id, ErrState, errors.New("its deletion was interrupted; delete it again (or run smolvm cleanup)"))
	}
	backend, err := chooseBackend(rec.Config.Backend, rec.Accel, rec.Boot)
	if err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	var undo undoStack
	defer func() {
		if retErr != nil {
			undo.run(ctx)
		}
	}()

	// Step: runtime directory and console log.
	dir := h.vmDir(vm.id)
	if err := agent.PrepareSocketDir(dir); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	logPath := h.logPath(vm.id)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	os.Remove(logPath)

	// Undone last, after the VMM is gone: the record says the start failed.
	undo.push(func(ctx context.Context) {
		msg := "start failed"
		if retErr != nil {
			msg, _, _ = strings.Cut(retErr.Error(), "\n") // the console tail is in the log
		}
		h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error {
			v.Status, v.Error = string(StateError), msg
			v.PID, v.PIDStart, v.Control, v.Agent, v.VsockCID = 0, 0, "", "", 0
			return nil
		})
	})

	// Step: the TAP device, NAT, isolation and port forwards.
	if rec.Network {
		if err := step("start/network"); err != nil {
			return wrapErr("start", vm.id, ErrNetwork, err)
		}
		l, err := h.st.LeaseOf(ctx, vm.id)
		if err != nil {
			return wrapErr("start", vm.id, ErrNetwork, storeErr(err))
		}
		undo.push(func(ctx context.Context) { h.teardownNetwork(ctx, vm.id) })
		if err := h.setupNetwork(ctx, l); err != nil {
			return wrapErr("start", vm.id, ErrNetwork, err)
		}
	}

	// Step: launch the VMM.
	if err := step("start/launch"); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	spec, err := h.spec(ctx, vm.id, rec, backend.Name())
	if err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	inst, err := backend.Launch(ctx, spec)
	if err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	undo.push(func(ctx context.Context) {
		backend.Kill(inst)
		vmm.WaitExit(ctx, inst)
		os.Remove(inst.Agent)
		os.Remove(inst.Control)
	})
	if err := step("start/record"); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	if _, err := h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error {
		v.Status, v.PID, v.PIDStart, v.Control, v.Agent, v.Backend, v.Accel, v.Error, v.VsockCID =
			string(StateRunning), inst.PID, inst.PIDStart, inst.Control, inst.Agent, backend.Name(), string(inst.Accel), "", inst.VsockCID
		return nil
	}); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}

	// Step: wait for the VMM, then for the agent.
	bootCtx, cancel := context.WithTimeout(ctx, vm.h.bootTimeout)
	defer cancel()
	if err := step("start/wait-vmm"); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	if err := backend.WaitReady(bootCtx, inst); err != nil {
		return vm.bootErr(err, logPath)
	}
	if err := step("start/wait-agent"); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	// The init prints the ready marker once the agent server runs; connecting
	// before it only stacks up handshakes that time out while the guest boots.
	if err := waitMarker(bootCtx, logPath, inst); err != nil {
		return vm.bootErr(err, logPath)
	}
	c, err := vm.connectAgent(bootCtx, inst)
	if err != nil {
		return vm.bootErr(err, logPath)
	}
	undo.push(func(context.Context) { vm.dropClient() })
	if err := step("start/env"); err != nil {
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	if rec.Network {
		if err := h.installSSHKey(bootCtx, c); err != nil {
			return wrapErr("start", vm.id, ErrCommandUnavailable, err)
		}
	}
	if len(rec.Config.EnvVars) > 0 {
		if err := c.SetEnv(bootCtx, rec.Config.EnvVars, false); err != nil {
			return wrapErr("start", vm.id, ErrCommandUnavailable, fmt.Errorf("set env vars: %w", err))
		}
	}
	undo.release()
	vm.mu.Lock()
	vm.scheduleIdleLocked()
	vm.mu.Unlock()
	return vm.Refresh(ctx)
}

// waitMarker waits until the guest's ready marker appears on its console,
// reading only what is new, or until the VMM dies or ctx ends.
func waitMarker(ctx context.Context, logPath string, inst vmm.Instance) error {
	marker := []byte(bootparams.ReadyMarker)
	var off int64
	var tail []byte
	for {
		if f, err := os.Open(logPath); err == nil {
			buf := make([]byte, 64<<10)
			for {
				n, err := f.ReadAt(buf, off)
				if n > 0 {
					off += int64(n)
					chunk := append(tail, buf[:n]...)
					if bytes.Contains(chunk, marker) {
						f.Close()
						return nil
					}
					// Keep enough to find a marker split across reads.
					tail = append([]byte(nil), chunk[max(0, len(chunk)-len(marker)):]...)
				}
				if err != nil {
					break
				}
			}
			f.Close()
		}
		if !vmm.Alive(inst.PID, inst.PIDStart) {
			return fmt.Errorf("VMM process %d exited before the guest was ready: %w", inst.PID, vmm.ErrNotRunning)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// bootErr wraps a failed boot with the tail of the console log.
func (vm *VM) bootErr(err error, logPath string) error {
	kind := ErrBackend
	if errors.Is(err, context.DeadlineExceeded) {
		kind = ErrTimeout
		err = fmt.Errorf("guest agent did not answer within %v: %w", vm.h.bootTimeout, err)
	}
	tail := consoleTail(logPath, 25)
	if tail != "" {
		err = fmt.Errorf("%w\n--- last lines of the console (%s) ---\n%s", err, logPath, tail)
	}
	return wrapErr("start", vm.id, kind, err)
}

// consoleTail returns the last n lines of a console log.
func consoleTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := strings.ReplaceAll(string(b), "\r", "")
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// spec builds the VMM launch spec of a VM from its record and lease.
func (h *host) spec(ctx context.Context, id string, rec record, backend string) (vmm.Spec, error) {
	cfg := rec.Config
	bp := bootparams.Params{ID: id}
	spec := vmm.Spec{
		ID: id, Dir: h.vmDir(id), Kernel: rec.Boot.Kernel, Initrd: rec.Boot.Initrd,
		VCPUs: cfg.VCPUCount, MemoryMiB: cfg.MemSizeMiB,
		Disks:      []vmm.Disk{{Path: rec.Boot.Disk}},
		ConsoleLog: h.logPath(id),
		Accel:      vmm.Accel(rec.Accel),
	}
	if rec.Network {
		l, err := h.st.LeaseOf(ctx, id)
		if err != nil {
			return vmm.Spec{}, err
		}
		spec.NIC = &vmm.NIC{TAP: l.TAP, MAC: l.MAC}
		bp.Addr = netip.PrefixFrom(l.IP, store.LeasePrefixLen)
		bp.Gateway = l.Gateway
		bp.DNS = []netip.Addr{l.Gateway}
		if len(cfg.DNSServers) > 0 {
			bp.DNS = nil
			for _, d := range cfg.DNSServers {
				bp.DNS = append(bp.DNS, netip.MustParseAddr(d)) // validated by Create
			}
		}
		spec.VsockCID = l.CID()
		// The guest agent also listens on vsock; the backend attaches a
		// vsock device only where the host supports it.
		bp.AgentPort = proto.DefaultVsockPort
	}
	if backend == "firecracker" {
		// Firecracker boots an ELF vmlinux and reaches the agent over vsock.
		if rec.Boot.Vmlinux == "" {
			return vmm.Spec{}, configErr("kernel_path", rec.Boot.Kernel, "Firecracker needs an ELF vmlinux; build the image again or pass one")
		}
		spec.Kernel = rec.Boot.Vmlinux
		bp.AgentPort = proto.DefaultVsockPort
		if spec.VsockCID == 0 {
			spec.VsockCID = 3
		}
	}
	spec.Cmdline = strings.TrimSpace(bp.Format() + " " + cfg.BootArgs)
	return spec, nil
}

// isELF reports whether the file at path starts with the ELF magic.
func isELF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var m [4]byte
	_, err = io.ReadFull(f, m[:])
	return err == nil && string(m[:]) == "\x7fELF"
}

// chooseBackend returns the backend that launches a VM configured with
// kind: auto picks Firecracker where it can run (binary found, hardware
// KVM) and QEMU otherwise; an explicit choice that cannot run here fails
// with the reason.
func chooseBackend(kind BackendKind, accel string, b boot) (vmm.Backend, error) {
	fc := &firecracker.Backend{}
	switch kind {
	case BackendQEMU:
		return &qemu.Backend{}, nil
	case BackendAuto, "":
		if ok, _ := fc.Usable(); ok && accel != string(vmm.AccelTCG) && (b.Vmlinux != "" || b.Kernel == "") {
			return fc, nil
		}
		return &qemu.Backend{}, nil
	case BackendFirecracker:
		if ok, reason := fc.Usable(); !ok {
			return nil, fmt.Errorf("the Firecracker backend cannot run here: %s (use --backend qemu): %w", reason, vmm.ErrUnavailable)
		}
		if accel == string(vmm.AccelTCG) {
			return nil, configErr("accel", accel, "Firecracker runs only with KVM")
		}
		return fc, nil
	}
	return nil, configErr("backend", string(kind), "must be auto, qemu or firecracker")
}

// backendOf returns the backend that launched a VM, by the name recorded
// in its row.
func backendOf(row store.VM) vmm.Backend {
	if row.Backend == "firecracker" {
		return &firecracker.Backend{}
	}
	return &qemu.Backend{}
}

// load reads the VM's row and record.
func (vm *VM) load(ctx context.Context) (store.VM, record, error) {
	row, err := vm.h.st.GetVM(ctx, vm.id)
	if err != nil {
		return store.VM{}, record{}, storeErr(err)
	}
	var rec record
	if err := json.Unmarshal(row.Config, &rec); err != nil {
		return store.VM{}, record{}, fmt.Errorf("corrupt record: %w", err)
	}
	return row, rec, nil
}

// instance rebuilds the backend's handle on a VM's VMM from its row.
func instanceOf(row store.VM) vmm.Instance {
	kind := "virtio-serial"
	if row.Backend == "firecracker" {
		kind = firecracker.AgentKind
	}
	return vmm.Instance{PID: row.PID, PIDStart: row.PIDStart, Control: row.Control, Agent: row.Agent, AgentKind: kind, Accel: vmm.Accel(row.Accel), VsockCID: row.VsockCID}
}

// Stop powers the guest off cleanly through its agent, then tells the VMM to
// quit, then kills it, each step with a deadline. The disk is kept, so Start
// boots the same disk again.
func (vm *VM) Stop(ctx context.Context) error {
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	return vm.stopLocked(ctx, false)
}

func (vm *VM) stopLocked(ctx context.Context, force bool) error {
	row, rec, err := vm.load(ctx)
	if errors.Is(err, ErrNotFound) {
		return errNoVM("stop", vm.id)
	}
	if err != nil {
		return wrapErr("stop", vm.id, ErrBackend, err)
	}
	inst := instanceOf(row)
	if vmm.Alive(inst.PID, inst.PIDStart) {
		backend := backendOf(row)
		// Say so first: if this process dies mid-way, the VMM's exit is
		// then recorded as a stop, not as a crash.
		if row.Error != markDeleting {
			if _, err := vm.h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error { v.Error = markStopping; return nil }); err != nil {
				return wrapErr("stop", vm.id, ErrBackend, storeErr(err))
			}
		}
		if !force && row.Status != string(StatePaused) { // a paused guest cannot power itself off
			vm.powerOff(ctx, inst)
		}
		if vmm.Alive(inst.PID, inst.PIDStart) {
			qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			backend.Stop(qctx, inst)
			cancel()
		}
		if err := backend.Kill(inst); err != nil {
			return wrapErr("stop", vm.id, ErrBackend, err)
		}
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := vmm.WaitExit(kctx, inst); err != nil {
			return wrapErr("stop", vm.id, ErrBackend, fmt.Errorf("VMM process %d did not exit: %w", inst.PID, err))
		}
	}
	vm.dropClient()
	os.Remove(row.Agent)
	os.Remove(row.Control)
	if rec.Network {
		if err := vm.h.teardownNetwork(context.WithoutCancel(ctx), vm.id); err != nil {
			return wrapErr("stop", vm.id, ErrNetwork, err)
		}
	}
	if _, err := vm.h.st.UpdateVM(context.WithoutCancel(ctx), vm.id, func(v *store.VM) error {
		if v.Status != string(StateCreated) || v.PID != 0 {
			v.Status = string(StateStopped)
		}
		v.PID, v.PIDStart, v.Control, v.Agent, v.VsockCID = 0, 0, "", "", 0
		if v.Error == markStopping {
			v.Error = ""
		}
		return nil
	}); err != nil {
		return wrapErr("stop", vm.id, ErrBackend, storeErr(err))
	}
	return vm.Refresh(context.WithoutCancel(ctx))
}

// powerOff asks the agent to power the guest off and waits for the VMM to
// exit, within the context's deadline or DefaultStopTimeout.
func (vm *VM) powerOff(ctx context.Context, inst vmm.Instance) {
	ctx, cancel := context.WithTimeout(ctx, DefaultStopTimeout)
	defer cancel()
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return
	}
	err = c.PowerOff(ctx)
	release()
	if err != nil {
		return
	}
	vm.dropClient()
	vmm.WaitExit(ctx, inst)
}

// Delete stops the VM if it runs and removes it with everything it holds:
// VMM process, sockets, disk copy, console log, leases and port forwards.
// The handle is closed, even when Delete fails: to retry, open the VM again
// with FromID (or run Cleanup).
func (vm *VM) Delete(ctx context.Context) error {
	return vm.delete(ctx, false)
}

// ForceDelete is Delete without the clean power-off: the VMM is killed.
func (vm *VM) ForceDelete(ctx context.Context) error {
	return vm.delete(ctx, true)
}

func (vm *VM) delete(ctx context.Context, force bool) error {
	defer vm.h.close()
	return vm.deleteKeepOpen(ctx, force)
}

// deleteKeepOpen deletes the VM and leaves its host open.
func (vm *VM) deleteKeepOpen(ctx context.Context, force bool) error {
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	return vm.deleteLocked(ctx, force)
}

// deleteLocked deletes the VM; its lock must be held. The lock file is
// removed last, while still held (lockers check they hold the live file).
func (vm *VM) deleteLocked(ctx context.Context, force bool) error {
	// Say so first: a delete interrupted after this point is finished by
	// Cleanup, never left as a VM without its disk.
	if _, err := vm.h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error { v.Error = markDeleting; return nil }); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errNoVM("delete", vm.id)
		}
		return wrapErr("delete", vm.id, ErrBackend, storeErr(err))
	}
	if err := vm.stopLocked(ctx, force); err != nil && !errors.Is(err, ErrNotFound) {
		return wrapErr("delete", vm.id, ErrBackend, err)
	}
	if err := vm.h.removeFiles(vm.id); err != nil {
		return wrapErr("delete", vm.id, ErrBackend, err)
	}
	if err := vm.h.st.DeleteVM(context.WithoutCancel(ctx), vm.id); err != nil {
		return wrapErr("delete", vm.id, ErrBackend, storeErr(err))
	}
	os.Remove(vm.h.lockPath(vm.id))
	return nil
}

// removeFiles removes a VM's directory and console log.
func (h *host) removeFiles(id string) error {
	if err := os.RemoveAll(h.vmDir(id)); err != nil {
		return err
	}
	if err := os.Remove(h.logPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Pause stops the VM's vCPUs; its memory, devices and network stay. Commands
// sent to a paused VM wait until it is resumed.
func (vm *VM) Pause(ctx context.Context) error {
	return vm.setPaused(ctx, "pause", true)
}

// Resume restarts the vCPUs of a paused VM.
func (vm *VM) Resume(ctx context.Context) error {
	return vm.setPaused(ctx, "resume", false)
}

func (vm *VM) setPaused(ctx context.Context, op string, pause bool) error {
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	row, _, err := vm.load(ctx)
	if errors.Is(err, ErrNotFound) {
		return errNoVM(op, vm.id)
	}
	if err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	inst := instanceOf(row)
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		vm.Refresh(ctx)
		return wrapErr(op, vm.id, ErrState, fmt.Errorf("the VM is not running (status %s)", vm.Info().Status))
	}
	want, call := StatePaused, backendOf(row).Pause
	if !pause {
		want, call = StateRunning, backendOf(row).Resume
	}
	if row.Status == string(want) {
		return nil
	}
	if err := call(ctx, inst); err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	ctx = context.WithoutCancel(ctx) // the VMM acted: record it whatever happens to ctx
	if _, err := vm.h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error { v.Status = string(want); return nil }); err != nil {
		return wrapErr(op, vm.id, ErrBackend, storeErr(err))
	}
	return vm.Refresh(ctx)
}

// Close stops and deletes the VM, like leaving Python's `with SmolVM() as vm:`.
func (vm *VM) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return vm.Delete(ctx)
}

// ConsoleLog returns the path of the VM's serial console log.
func (vm *VM) ConsoleLog() string { return vm.h.logPath(vm.id) }
