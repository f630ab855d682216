package store

import (
	"context"
	"errors"
	"slices"
	"testing"
)

func TestSnapshotOwners(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	if err := s.AddSnapshotOwner(ctx, "nosuch", "k1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("owner of a missing snapshot: %v", err)
	}
	for _, id := range []string{"s1", "s2", "s3"} {
		if err := s.AddSnapshot(ctx, Snapshot{ID: id, VMID: "a", Path: "/x/" + id}); err != nil {
			t.Fatal(err)
		}
	}
	// In order: OwnedSnapshots lists the oldest first.
	for _, o := range []struct{ id, key string }{{"s1", "k1"}, {"s2", "k2"}, {"s3", "k1"}} {
		if err := s.AddSnapshotOwner(ctx, o.id, o.key); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddSnapshotOwner(ctx, "s1", "k2"); !errors.Is(err, ErrExists) {
		t.Fatalf("second owner: %v", err)
	}
	if k, err := s.SnapshotOwner(ctx, "s2"); err != nil || k != "k2" {
		t.Fatalf("owner of s2 = %q, %v", k, err)
	}
	if ids, err := s.OwnedSnapshots(ctx, "k1"); err != nil || !slices.Equal(ids, []string{"s1", "s3"}) {
		t.Fatalf("k1 owns %v, %v", ids, err)
	}
	// The row goes with its snapshot.
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SnapshotOwner(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("owner of a removed snapshot: %v", err)
	}
	if ids, err := s.OwnedSnapshots(ctx, "k1"); err != nil || !slices.Equal(ids, []string{"s3"}) {
		t.Fatalf("k1 owns %v after removal, %v", ids, err)
	}
	if ids, err := s.OwnedSnapshots(ctx, "k3"); err != nil || len(ids) != 0 || ids == nil {
		t.Fatalf("k3 owns %v, %v", ids, err)
	}
}
