package smolvm

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/store"
)

// VM is a handle on one recorded VM of a Host. Its methods are safe for
// concurrent use. A handle is cheap; it holds an agent connection while in
// use and lets go of it when idle.
type VM struct {
	h  *Host
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
	// progressFn receives progress of long work in Start (a warm template
	// made on first use); set by Create's WithProgress.
	progressFn func(stage string, done, total int64)
}

// ID returns the VM's id.
func (vm *VM) ID() string { return vm.id }

// Info returns the VM's last known state. The result is a copy.
func (vm *VM) Info() VMInfo {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	inf := vm.info
	inf.Config = inf.Config.WithDefaults() // copies EnvVars
	inf.Egress = inf.Egress.clone()
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
		return wrapErr("open", vm.id, ErrBackend, err)
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

// Release lets go of the handle's agent connection without touching the VM.
func (vm *VM) Release() error {
	vm.dropClient()
	return nil
}

// Host returns the Host the handle belongs to.
func (vm *VM) Host() *Host { return vm.h }
