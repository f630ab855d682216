package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/smolvm-go/smolvm/internal/consolelog"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

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
	if errors.Is(err, store.ErrNotFound) {
		return errNoVM("stop", vm.id)
	}
	if err != nil {
		return wrapErr("stop", vm.id, ErrBackend, err)
	}
	inst := instanceOf(row)
	var backend vmm.Backend
	if row.Backend != "" {
		if backend, err = vm.h.backendOf(row); err != nil {
			return wrapErr("stop", vm.id, ErrBackend, err)
		}
	}
	if vmm.Alive(inst.PID, inst.PIDStart) {
		// Say so first: if this process dies mid-way, the VMM's exit is
		// then recorded as a stop, not as a crash.
		if row.Op != store.OpDeleting {
			if _, err := vm.h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error { v.Op = store.OpStopping; return nil }); err != nil {
				return wrapErr("stop", vm.id, ErrBackend, err)
			}
		}
		if !force && row.Status != string(StatePaused) { // a paused guest cannot power itself off
			vm.powerOff(ctx, inst)
		}
		if vmm.Alive(inst.PID, inst.PIDStart) && backend != nil {
			qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			backend.Stop(qctx, inst)
			cancel()
		}
		if err := vmm.KillProcess(inst.PID, inst.PIDStart); err != nil {
			return wrapErr("stop", vm.id, ErrBackend, err)
		}
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := vmm.WaitExit(kctx, inst); err != nil {
			return wrapErr("stop", vm.id, ErrBackend, fmt.Errorf("VMM process %d did not exit: %w", inst.PID, err))
		}
	}
	vm.dropClient()
	if err := vm.h.removeCgroup(ctx, vm.id); err != nil {
		return wrapErr("stop", vm.id, ErrBackend, err)
	}
	if backend != nil {
		vm.h.removeRuntimeFiles(vm.id, backend)
	}
	if !rec.Config.NoNetwork {
		if p, err := vm.h.plan(ctx, vm.id); err == nil {
			if err := vm.h.teardownNetwork(context.WithoutCancel(ctx), vm.id, p); err != nil {
				return wrapErr("stop", vm.id, ErrNetwork, err)
			}
		}
	}
	if _, err := vm.h.st.UpdateVM(context.WithoutCancel(ctx), vm.id, func(v *store.VM) error {
		if v.Status != string(StateCreated) || v.PID != 0 {
			v.Status = string(StateStopped)
		}
		v.PID, v.PIDStart, v.Control, v.Agent, v.VsockCID = 0, 0, "", "", 0
		if v.Op == store.OpStopping {
			v.Op = store.OpNone
		}
		return nil
	}); err != nil {
		return wrapErr("stop", vm.id, ErrBackend, err)
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
// VMM process, sockets, disk copy, console log, lease and port forwards.
func (vm *VM) Delete(ctx context.Context) error {
	return vm.delete(ctx, false)
}

// ForceDelete is Delete without the clean power-off: the VMM is killed.
func (vm *VM) ForceDelete(ctx context.Context) error {
	return vm.delete(ctx, true)
}

func (vm *VM) delete(ctx context.Context, force bool) error {
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
	if _, err := vm.h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error { v.Op = store.OpDeleting; return nil }); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errNoVM("delete", vm.id)
		}
		return wrapErr("delete", vm.id, ErrBackend, err)
	}
	if err := vm.stopLocked(ctx, force); err != nil && !errors.Is(err, ErrNotFound) {
		return wrapErr("delete", vm.id, ErrBackend, err)
	}
	if err := vm.h.removeFiles(vm.id); err != nil {
		return wrapErr("delete", vm.id, ErrBackend, err)
	}
	if err := vm.h.st.DeleteVM(context.WithoutCancel(ctx), vm.id); err != nil {
		return wrapErr("delete", vm.id, ErrBackend, err)
	}
	os.Remove(vm.h.lockPath(vm.id))
	return nil
}

// removeFiles removes a VM's directory and console log.
func (h *Host) removeFiles(id string) error {
	if err := os.RemoveAll(h.vmDir(id)); err != nil {
		return err
	}
	return consolelog.Remove(h.logPath(id))
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
	if errors.Is(err, store.ErrNotFound) {
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
	backend, err := vm.h.backendOf(row)
	if err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	want, call := StatePaused, backend.Pause
	if !pause {
		want, call = StateRunning, backend.Resume
	}
	if row.Status == string(want) {
		return nil
	}
	if err := call(ctx, inst); err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	ctx = context.WithoutCancel(ctx) // the VMM acted: record it whatever happens to ctx
	if _, err := vm.h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error { v.Status = string(want); return nil }); err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
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
