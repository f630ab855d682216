package smolvm

import (
	"context"
	"errors"
	"testing"
)

// TestSnapshotErrorKinds checks the SDK's snapshot calls on bad input
// without booting: each fails with its kind and leaves nothing behind.
func TestSnapshotErrorKinds(t *testing.T) {
	h, _ := vmEnv(t)
	ctx := context.Background()
	if _, err := h.GetSnapshot(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetSnapshot(nope) = %v", err)
	}
	if err := h.RemoveSnapshot(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveSnapshot(nope) = %v", err)
	}
	if _, err := h.GetSnapshot(ctx, "Bad Name"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("GetSnapshot(bad name) = %v", err)
	}
	if _, err := h.Create(ctx, VMConfig{FromSnapshot: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Create from an unknown snapshot = %v", err)
	}
	vm, err := h.Create(ctx, minimalVM("snapidle"))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Delete(ctx)
	if _, err := vm.Snapshot(ctx, "s"); !errors.Is(err, ErrState) {
		t.Errorf("Snapshot of a created VM = %v", err)
	}
	if _, err := vm.Snapshot(ctx, "Bad Name"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Snapshot with a bad name = %v", err)
	}
	if err := vm.Suspend(ctx); !errors.Is(err, ErrState) {
		t.Errorf("Suspend of a created VM = %v", err)
	}
	if err := vm.Restore(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Restore(nope) = %v", err)
	}
	if list, err := h.Snapshots(ctx); err != nil || len(list) != 0 {
		t.Errorf("Snapshots = %v, %v", list, err)
	}
	if inf := vm.Info(); inf.Saved {
		t.Errorf("a created VM shows saved: %+v", inf)
	}
}
