package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
)

// VM is a handle on one recorded VM. Its methods are safe for concurrent use.
// A VM holds its data directory open until Close or Release.
type VM struct {
	h  *host
	id string

	mu   sync.Mutex
	info VMInfo        // last known state, refreshed by every operation
	ac   *agent.Client // connection to the guest agent; nil until needed
	// connMu makes connecting to the agent single-flight.
	connMu sync.Mutex
	// inflight counts operations using ac; idle closes ac once none has
	// run for agentIdle. Both guarded by mu.
	inflight int
	idle     *time.Timer
}

// CreateOptions says what Create allocates besides the record.
type CreateOptions struct {
	// NoNetwork creates the VM without a NIC, address or port forwards.
	NoNetwork bool
	// Accel is the acceleration: "auto" (default), "kvm" or "tcg".
	Accel string
}

// Create validates cfg, applies its defaults and records a new VM in state
// created: its kernel, initrd and root disk (from cfg's paths or its image,
// built on first use), its own copy of the disk when isolated, its network
// lease (address, TAP name, MAC) and, when cfg.SSHHostPort is set (or
// SSHPortAuto), its SSH port forward. If any step fails, the steps before it
// are undone: nothing is left behind. The VM is not started.
func Create(ctx context.Context, cfg VMConfig, co CreateOptions, opts ...Option) (*VM, error) {
	for attempt := 0; ; attempt++ {
		vm, err := create(ctx, cfg, co, opts...)
		// A generated id that happens to be taken is drawn again.
		if cfg.VMID == "" && errors.Is(err, errIDTaken) && attempt < 5 {
			continue
		}
		return vm, err
	}
}

func create(ctx context.Context, cfg VMConfig, co CreateOptions, opts ...Option) (_ *VM, retErr error) {
	o := buildOptions(opts)
	if o.noNetwork {
		co.NoNetwork = true
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, err)
	}
	if co.NoNetwork && len(cfg.DNSServers) > 0 {
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, configErr("dns_servers", strings.Join(cfg.DNSServers, ","), "needs networking; it cannot be set on a VM without network"))
	}
	if co.NoNetwork && cfg.SSHHostPort != 0 {
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, configErr("ssh_host_port", "", "needs networking; it cannot be set on a VM without network"))
	}
	switch co.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, configErr("accel", co.Accel, "must be auto, kvm or tcg"))
	}
	if cfg.Backend == BackendFirecracker {
		if _, err := chooseBackend(cfg.Backend, co.Accel, boot{}); err != nil {
			return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
		}
	}
	if !co.NoNetwork {
		if err := network.Check(); err != nil {
			return nil, wrapErr("create", cfg.VMID, ErrNetwork, fmt.Errorf("%w (or create the VM with --network off)", err))
		}
	}
	h, err := openHost(ctx, o)
	if err != nil {
		return nil, err
	}
	// Hold the VM's lock for the whole creation, undo included, so Cleanup
	// can tell an interrupted create (lock free) from one in progress.
	unlock, err := h.lockVM(ctx, cfg.VMID)
	if err != nil {
		h.close()
		return nil, err
	}
	var undo undoStack
	defer func() {
		if retErr != nil {
			undo.run(ctx)
		}
		unlock()
		if retErr != nil {
			h.close()
		}
	}()
	// Step: refuse a taken id before any expensive work.
	if _, err := h.st.GetVM(ctx, cfg.VMID); err == nil {
		return nil, wrapErr("create", cfg.VMID, ErrAlreadyExists, errIDTaken)
	}
	undo.push(func(context.Context) { os.Remove(h.lockPath(cfg.VMID)) })
	// Step: kernel, initrd, base disk.
	if err := step("create/boot-files"); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrImage, err)
	}
	b, err := h.resolveBoot(ctx, &cfg, o)
	if err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrImage, err)
	}
	// Step: record and allocate, in one transaction.
	rec := record{Config: cfg, Network: !co.NoNetwork, Boot: b, Accel: co.Accel}
	if cfg.DiskMode == DiskIsolated {
		// Recorded as the disk before it exists: an interrupted create
		// must never boot the image's own disk.
		rec.Boot.Disk = h.diskPath(cfg.VMID)
	}
	recJSON, _ := json.Marshal(rec)
	if err := step("create/record"); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
	}
	a, err := h.st.CreateVM(ctx, store.VM{ID: cfg.VMID, Status: string(StateCreated), Config: recJSON},
		store.Alloc{Lease: !co.NoNetwork, SSHPort: cfg.SSHHostPort}) // SSHPortAuto is the store's "auto" too
	if err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrBackend, storeErr(err))
	}
	undo.push(func(ctx context.Context) { h.st.DeleteVM(ctx, cfg.VMID) })
	// Step: the VM's directory and its disk.
	if err := step("create/dir"); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
	}
	if err := os.MkdirAll(h.vmDir(cfg.VMID), 0o700); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
	}
	undo.push(func(context.Context) { h.removeFiles(cfg.VMID) })
	if cfg.DiskMode == DiskIsolated {
		disk := h.diskPath(cfg.VMID)
		if err := step("create/disk"); err != nil {
			return nil, wrapErr("create", cfg.VMID, ErrImage, err)
		}
		if err := image.CloneDisk(ctx, b.Disk, disk, int64(cfg.DiskSizeMiB)); err != nil {
			return nil, wrapErr("create", cfg.VMID, ErrImage, fmt.Errorf("copy disk: %w", err))
		}
		rec.Boot.Disk = disk
	}
	if a.SSH != nil {
		rec.Config.SSHHostPort = a.SSH.HostPort
	}
	rec.Complete = true
	recJSON, _ = json.Marshal(rec)
	if err := step("create/finish"); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
	}
	if _, err := h.st.UpdateVM(ctx, cfg.VMID, func(v *store.VM) error { v.Config = recJSON; return nil }); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
	}
	vm := &VM{h: h, id: cfg.VMID}
	if err := vm.Refresh(ctx); err != nil {
		return nil, err
	}
	undo.release()
	return vm, nil
}

// FromID returns a handle on the recorded VM id, e.g. one created by another
// process. A missing VM is ErrNotFound.
func FromID(ctx context.Context, id string, opts ...Option) (*VM, error) {
	if err := ValidateVMID(id); err != nil {
		return nil, wrapErr("open", id, ErrInvalidConfig, err)
	}
	h, err := openHost(ctx, buildOptions(opts))
	if err != nil {
		return nil, err
	}
	vm := &VM{h: h, id: id}
	if err := vm.Refresh(ctx); err != nil {
		h.close()
		return nil, err
	}
	return vm, nil
}

// ID returns the VM's id.
func (vm *VM) ID() string { return vm.id }

// Info returns the VM's last known state. The result is a copy.
func (vm *VM) Info() VMInfo {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	inf := vm.info
	inf.Config = inf.Config.WithDefaults() // copies EnvVars
	return inf
}

// GetIP returns the guest's IPv4 address, or "" for a VM without network.
func (vm *VM) GetIP() string {
	if n := vm.Info().Network; n != nil {
		return n.GuestIP()
	}
	return ""
}

// Refresh re-reads the VM's recorded state.
func (vm *VM) Refresh(ctx context.Context) error {
	row, err := vm.h.st.GetVM(ctx, vm.id)
	if errors.Is(err, store.ErrNotFound) {
		return errNoVM("open", vm.id)
	}
	if err != nil {
		return wrapErr("open", vm.id, ErrBackend, storeErr(err))
	}
	row, err = vm.h.reconcile(ctx, row)
	if err != nil {
		return wrapErr("open", vm.id, ErrBackend, err)
	}
	inf, err := vm.h.info(ctx, row)
	if err != nil {
		return wrapErr("open", vm.id, ErrBackend, err)
	}
	vm.mu.Lock()
	vm.info = inf
	vm.mu.Unlock()
	return nil
}

// Release closes the handle without touching the VM.
func (vm *VM) Release() error {
	vm.dropClient()
	return vm.h.close()
}

// errIDTaken is the cause of creating a VM whose id is taken.
var errIDTaken = errors.New("a VM with this id already exists")

// errNoVM is the error for a VM id that is not recorded.
func errNoVM(op, id string) error {
	return wrapErr(op, id, ErrNotFound, errors.New("no such VM (see 'smolvm list --all')"))
}
