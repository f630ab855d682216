package firecracker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// WaitReady implements vmm.Backend: it waits until the API answers GET /
// with state "Running". A firecracker that exits meanwhile fails with its
// last words.
func (b *Backend) WaitReady(ctx context.Context, inst vmm.Instance) error {
	c := newClient(inst.Control)
	for {
		if !vmm.Alive(inst.PID, inst.PIDStart) {
			return exitErr(filepath.Dir(inst.Control), "")
		}
		if info, err := c.instanceInfo(ctx); err == nil && info.State == fcStateRunning {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("firecracker did not become ready: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop implements vmm.Backend: it sends the guest Ctrl+Alt+Del (a guest
// booted with reboot=k then makes Firecracker exit) and waits for the
// process to exit until ctx ends; the caller kills it after that.
func (b *Backend) Stop(ctx context.Context, inst vmm.Instance) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return nil
	}
	err := newClient(inst.Control).action(ctx, actionSendCtrlAltDel)
	if err != nil && vmm.Alive(inst.PID, inst.PIDStart) {
		return fmt.Errorf("firecracker stop: %w", err)
	}
	if err := vmm.WaitExit(ctx, inst); err != nil {
		return fmt.Errorf("firecracker stop: wait for exit: %w", err)
	}
	return nil
}

// Kill implements vmm.Backend.
func (b *Backend) Kill(inst vmm.Instance) error { return vmm.KillProcess(inst.PID, inst.PIDStart) }

// Pause implements vmm.Backend (PATCH /vm {"state": "Paused"}).
func (b *Backend) Pause(ctx context.Context, inst vmm.Instance) error {
	return b.setState(ctx, inst, "Paused")
}

// Resume implements vmm.Backend (PATCH /vm {"state": "Resumed"}).
func (b *Backend) Resume(ctx context.Context, inst vmm.Instance) error {
	return b.setState(ctx, inst, "Resumed")
}

func (b *Backend) setState(ctx context.Context, inst vmm.Instance, state string) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.ErrNotRunning
	}
	if err := newClient(inst.Control).patch(ctx, "/vm", vmState{State: state}); err != nil {
		return notRunning(inst, err)
	}
	return nil
}

// Status implements vmm.Backend. Firecracker's "Not started" (configured
// but not booted, or waiting for a snapshot) counts as paused: no vCPU runs.
func (b *Backend) Status(ctx context.Context, inst vmm.Instance) (vmm.State, error) {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.StateGone, nil
	}
	info, err := newClient(inst.Control).instanceInfo(ctx)
	if err != nil {
		if !vmm.Alive(inst.PID, inst.PIDStart) {
			return vmm.StateGone, nil
		}
		return "", err
	}
	switch info.State {
	case fcStateRunning:
		return vmm.StateRunning, nil
	case fcStatePaused, fcStateNotStarted:
		return vmm.StatePaused, nil
	}
	return vmm.State(info.State), nil
}

// notRunning marks err with vmm.ErrNotRunning when the process died.
func notRunning(inst vmm.Instance, err error) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) && !errors.Is(err, vmm.ErrNotRunning) {
		return fmt.Errorf("%w: %w", err, vmm.ErrNotRunning)
	}
	return err
}

var _ vmm.Backend = (*Backend)(nil)
