package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Option changes how one SDK call works (not what it makes: that is
// VMConfig).
type Option func(*callOptions)

type callOptions struct {
	config   *VMConfig
	progress func(stage string, done, total int64)
}

func buildOptions(opts []Option) callOptions {
	var o callOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithProgress receives progress of long work in this call (an image built
// on first use) as stage names and counts.
func WithProgress(f func(stage string, done, total int64)) Option {
	return func(o *callOptions) { o.progress = f }
}

// WithConfig makes New create a VM from c instead of the defaults.
func WithConfig(c VMConfig) Option { return func(o *callOptions) { o.config = &c } }

// boot is what Create resolved for booting: files and choices that do not
// change over the VM's life.
type boot struct {
	Kernel  string `json:"kernel"`
	Vmlinux string `json:"vmlinux,omitempty"`
	Initrd  string `json:"initrd"`
	Disk    string `json:"disk"`
	// Ready is the image's readiness check (start waits for it).
	Ready string `json:"ready,omitempty"`
}

// New creates and starts a VM on the Default host: the one given by
// WithConfig, or one with the default image (built on first use), 2 vCPUs,
// 512 MiB and networking. Close stops and deletes it. If starting fails,
// the VM is deleted and nothing is left behind.
func New(ctx context.Context, opts ...Option) (*VM, error) {
	h, err := Default(ctx)
	if err != nil {
		return nil, err
	}
	var cfg VMConfig
	if o := buildOptions(opts); o.config != nil {
		cfg = *o.config
	}
	return h.New(ctx, cfg, opts...)
}

// New creates and starts a VM configured by cfg. If starting fails, the VM
// is deleted and nothing is left behind.
func (h *Host) New(ctx context.Context, cfg VMConfig, opts ...Option) (*VM, error) {
	vm, err := h.Create(ctx, cfg, opts...)
	if err != nil {
		return nil, err
	}
	if err := vm.Start(ctx); err != nil {
		derr := vm.Delete(context.WithoutCancel(ctx))
		return nil, errors.Join(err, derr)
	}
	return vm, nil
}

// createOp is the state of one Create as its steps run.
type createOp struct {
	h       *Host
	cfg     VMConfig
	o       callOptions
	unlock  func()
	newLock bool // the lock file did not exist before this create
	boot    boot
	restore *pendingRestore // a clone's snapshot (snapshot_restore.go)
	attach  *attachIdentity // what an attached VM takes over (attach.go)
}

// createSteps make a VM exist, in order; each undo removes what its step made.
var createSteps = []step[*createOp]{
	{name: "lock", do: func(ctx context.Context, s *createOp) error { return s.lock(ctx) }, undo: func(_ context.Context, c *createOp, _ error) {
		if c.newLock {
			// Made by this create: it goes, while still held (lockers
			// check they hold the live file). A taken id keeps its own.
			os.Remove(c.h.lockPath(c.cfg.VMID))
		}
		c.unlock()
	}},
	{name: "check-id", do: func(ctx context.Context, c *createOp) error {
		if _, err := c.h.st.GetVM(ctx, c.cfg.VMID); err == nil {
			return fmt.Errorf("%w: %w", errIDTaken, ErrAlreadyExists)
		}
		return nil
	}},
	{name: "mounts", do: func(ctx context.Context, c *createOp) error { return checkMountSources(c.cfg.Mounts) }},
	{name: "host-network", kind: ErrNetwork, do: func(ctx context.Context, c *createOp) error {
		if c.cfg.NoNetwork {
			return nil
		}
		if err := network.Check(); err != nil {
			return fmt.Errorf("%w (or create the VM with --network off)", err)
		}
		return nil
	}},
	{name: "attach-interface", kind: ErrInvalidConfig, do: func(ctx context.Context, c *createOp) (err error) {
		if c.cfg.AttachInterface != "" {
			c.attach, err = inspectAttach(c.cfg.AttachInterface)
		}
		return err
	}},
	{name: "boot-files", kind: ErrImage, do: func(ctx context.Context, c *createOp) (err error) {
		c.boot, err = c.h.resolveBoot(ctx, &c.cfg, c.o)
		return err
	}},
	{name: "backend", do: func(ctx context.Context, c *createOp) error {
		_, err := c.h.chooseBackend(ctx, c.cfg, c.boot)
		return err
	}},
	{name: "record", do: func(ctx context.Context, s *createOp) error { return s.record(ctx) }, undo: func(ctx context.Context, c *createOp, _ error) {
		c.h.st.DeleteVM(ctx, c.cfg.VMID)
	}},
	{name: "dir", do: func(ctx context.Context, c *createOp) error {
		return os.MkdirAll(c.h.vmDir(c.cfg.VMID), 0o700)
	}, undo: func(ctx context.Context, c *createOp, _ error) { c.h.removeFiles(c.cfg.VMID) }},
	{name: "disk", kind: ErrImage, do: func(ctx context.Context, c *createOp) error { return c.makeDisk(ctx) }},
	{name: "finish", do: func(ctx context.Context, s *createOp) error { return s.finish(ctx) }},
}

func (c *createOp) lock(ctx context.Context) (err error) {
	// Held for the whole creation, undo included, so Cleanup can tell an
	// interrupted create (lock free) from one in progress.
	_, statErr := os.Stat(c.h.lockPath(c.cfg.VMID))
	c.newLock = errors.Is(statErr, fs.ErrNotExist)
	c.unlock, err = c.h.lockVM(ctx, c.cfg.VMID)
	return err
}

func (c *createOp) record(ctx context.Context) error {
	rec := record{Config: c.cfg, Boot: c.boot, Restore: c.restore, Attach: c.attach}
	rec.Boot.Disk = c.recordedDisk() // never the cached image's own disk
	rec.Config.SSHHostPort = 0       // the port table holds it
	recJSON, _ := json.Marshal(rec)
	// Every VM gets a lease index (its vsock context id comes from it);
	// only a VM with networking uses its address and TAP.
	_, err := c.h.st.CreateVM(ctx, store.VM{ID: c.cfg.VMID, Status: string(StateCreated), Config: recJSON, Op: store.OpCreating},
		store.Alloc{Lease: true, SSHPort: c.cfg.SSHHostPort}) // SSHPortAuto is the store's "auto" too
	return err
}

func (c *createOp) finish(ctx context.Context) error {
	_, err := c.h.st.UpdateVM(ctx, c.cfg.VMID, func(v *store.VM) error { v.Op = store.OpNone; return nil })
	return err
}

// Create validates cfg, applies its defaults and records a new VM in state
// created: its kernel, initrd and root disk (from cfg's paths or its image,
// built on first use), its own copy of the disk when isolated, its network
// lease (address, TAP name, MAC, vsock context id) and, when
// cfg.SSHHostPort is set (or SSHPortAuto), its SSH port forward. If a step
// fails, the steps before it are undone: nothing is left behind, and the
// error names the step. The VM is not started.
func (h *Host) Create(ctx context.Context, cfg VMConfig, opts ...Option) (*VM, error) {
	for attempt := 0; ; attempt++ {
		vm, err := h.create(ctx, cfg, buildOptions(opts))
		// A generated id that happens to be taken is drawn again.
		if cfg.VMID == "" && errors.Is(err, errIDTaken) && attempt < 5 {
			continue
		}
		return vm, err
	}
}

func (h *Host) create(ctx context.Context, cfg VMConfig, o callOptions) (*VM, error) {
	if cfg.FromSnapshot != "" {
		return h.createFromSnapshot(ctx, cfg, o)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, err)
	}
	cfg.normalizeEgress()
	c := &createOp{h: h, cfg: cfg, o: o}
	if err := runSteps(ctx, h, createSteps, c, ErrBackend); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
	}
	c.unlock()
	vm := &VM{h: h, id: cfg.VMID, progressFn: o.progress}
	if err := vm.Refresh(ctx); err != nil {
		return nil, err
	}
	return vm, nil
}

// errIDTaken is the cause of creating a VM whose id is taken.
var errIDTaken = errors.New("a VM with this id already exists")

// resolveBoot finds the kernel, initrd and root disk of cfg: explicit paths
// win, the rest come from cfg.Image (default "default"), built if missing.
func (h *Host) resolveBoot(ctx context.Context, cfg *VMConfig, o callOptions) (boot, error) {
	b := boot{Kernel: cfg.KernelPath, Initrd: cfg.InitrdPath, Disk: cfg.RootfsPath}
	if isELF(cfg.KernelPath) { // a vmlinux serves Firecracker (and QEMU's PVH boot)
		b.Vmlinux = cfg.KernelPath
	}
	if b.Kernel == "" || b.Initrd == "" || b.Disk == "" {
		if cfg.Image == "" {
			cfg.Image = ImageDefault
		}
		img, err := image.Get(h.imageDir, cfg.Image)
		if errors.Is(err, image.ErrNotFound) && (cfg.Image == ImageDefault || cfg.Image == ImageMinimal) {
			progress := o.progress
			if progress == nil {
				progress = h.opts.Progress
			}
			if progress == nil && isTerminal(os.Stderr) {
				progress = stderrProgress(cfg.Image)
			}
			img, err = h.buildImage(ctx, cfg.Image, ImageBuildOptions{Progress: progress})
		}
		if err != nil {
			return boot{}, fmt.Errorf("image %s: %w", cfg.Image, err)
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
		if c := img.Manifest.Config; c != nil {
			b.Ready = c.Ready
		}
	}
	for _, f := range []struct{ field, path string }{{"kernel_path", b.Kernel}, {"initrd_path", b.Initrd}, {"rootfs_path", b.Disk}} {
		if _, err := os.Stat(f.path); err != nil {
			return boot{}, configErr(f.field, f.path, "file not readable: "+err.Error())
		}
	}
	return b, nil
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

// chooseBackend returns the backend that runs a VM configured with cfg
// and booting b: an explicit choice if it can run here (else the reason),
// or for auto the first registered backend (in preference order) that is
// usable, runs the acceleration cfg asks for and boots a kernel b has.
func (h *Host) chooseBackend(ctx context.Context, cfg VMConfig, b boot) (vmm.Backend, error) {
	accel, reason := h.opts.probe.Resolve(vmm.Accel(cfg.Accel))
	fits := func(be vmm.Backend) error {
		req := be.Requirements()
		if len(cfg.Mounts) > 0 && !req.HostFolders {
			return fmt.Errorf("host folders (mounts) are not supported by the %s backend (virtio-fs needs QEMU): %w", be.Kind(), vmm.ErrUnavailable)
		}
		if req.NeedsKVM && accel != vmm.AccelKVM {
			if cfg.Accel == AccelTCG {
				return configErr("accel", string(cfg.Accel), fmt.Sprintf("the %s backend runs only with KVM", be.Kind()))
			}
			return fmt.Errorf("the %s backend needs hardware KVM and this host offers only %s: %w", be.Kind(), reason, vmm.ErrUnavailable)
		}
		if req.Kernel == vmm.KernelELF && b.Vmlinux == "" && b.Kernel != "" {
			return configErr("kernel_path", b.Kernel, fmt.Sprintf("the %s backend needs an ELF vmlinux; build the image again or pass one", be.Kind()))
		}
		if ok, why := be.Usable(ctx); !ok {
			return fmt.Errorf("the %s backend cannot run here: %s: %w", be.Kind(), why, vmm.ErrUnavailable)
		}
		return nil
	}
	if cfg.Backend != BackendAuto && cfg.Backend != "" {
		be, err := h.backend(vmm.Kind(cfg.Backend))
		if err != nil {
			return nil, err
		}
		if err := fits(be); err != nil {
			return nil, err
		}
		return be, nil
	}
	var why []error
	for _, k := range vmm.Kinds() {
		be, err := h.backend(k)
		if err == nil {
			err = fits(be)
		}
		if err == nil {
			return be, nil
		}
		why = append(why, err)
	}
	return nil, fmt.Errorf("no backend can run this VM here: %w", errors.Join(why...))
}
