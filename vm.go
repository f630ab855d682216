package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"sync"

	"github.com/smolvm-go/smolvm/internal/store"
)

// VM is a handle on one recorded VM. Its methods are safe for concurrent use.
// A VM holds its data directory open until Close or Release.
type VM struct {
	h  *host
	id string

	mu   sync.Mutex
	info VMInfo // last known state, refreshed by every operation
}

// CreateOptions says what Create allocates besides the record.
type CreateOptions struct {
	// NoNetwork creates the VM without a NIC, address or port forwards.
	NoNetwork bool
}

// Create validates cfg, applies its defaults and records a new VM in state
// created, with its network lease (address, TAP name, MAC) and, when
// cfg.SSHHostPort is set (or SSHPortAuto), its SSH port forward. Either all of it
// is recorded or none of it is. The VM is not started.
func Create(ctx context.Context, cfg VMConfig, co CreateOptions, opts ...Option) (*VM, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, err)
	}
	if co.NoNetwork && cfg.SSHHostPort != 0 {
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, configErr("ssh_host_port", "", "needs networking; it cannot be set on a VM without network"))
	}
	h, err := openHost(ctx, buildOptions(opts))
	if err != nil {
		return nil, err
	}
	rec, _ := json.Marshal(record{Config: cfg, Network: !co.NoNetwork})
	alloc := store.Alloc{Lease: !co.NoNetwork, SSHPort: cfg.SSHHostPort} // -1 is the store's "auto" too
	a, err := h.st.CreateVM(ctx, store.VM{ID: cfg.VMID, Status: string(StateCreated), Config: rec}, alloc)
	if err != nil {
		h.close()
		return nil, wrapErr("create", cfg.VMID, ErrBackend, storeErr(err))
	}
	if a.SSH != nil {
		cfg.SSHHostPort = a.SSH.HostPort
		rec, _ = json.Marshal(record{Config: cfg, Network: !co.NoNetwork})
		if _, err := h.st.UpdateVM(ctx, cfg.VMID, func(v *store.VM) error { v.Config = rec; return nil }); err != nil {
			h.st.DeleteVM(context.WithoutCancel(ctx), cfg.VMID)
			h.close()
			return nil, wrapErr("create", cfg.VMID, ErrBackend, err)
		}
	}
	vm := &VM{h: h, id: cfg.VMID}
	if err := vm.Refresh(ctx); err != nil {
		h.close()
		return nil, err
	}
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
		return wrapErr("open", vm.id, ErrNotFound, errors.New("no such VM (see 'smolvm list --all')"))
	}
	if err != nil {
		return wrapErr("open", vm.id, ErrBackend, storeErr(err))
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

// Delete removes the VM and frees everything it holds. The handle is closed.
func (vm *VM) Delete(ctx context.Context) error {
	err := vm.h.st.DeleteVM(ctx, vm.id)
	vm.h.close()
	return wrapErr("delete", vm.id, ErrBackend, storeErr(err))
}

// Release closes the handle without touching the VM.
func (vm *VM) Release() error { return vm.h.close() }
