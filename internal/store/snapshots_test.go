package store

import (
	"context"
	"errors"
	"testing"
)

func TestSnapshotMetaAndGet(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	if _, err := s.GetSnapshot(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing snapshot: %v", err)
	}
	if err := s.AddSnapshot(ctx, Snapshot{ID: "s1", VMID: "a", Path: "/x", Meta: []byte(`{"k":1}`)}); err != nil {
		t.Fatal(err)
	}
	sn, err := s.GetSnapshot(ctx, "s1")
	if err != nil || sn.VMID != "a" || sn.Path != "/x" || string(sn.Meta) != `{"k":1}` || sn.Created.IsZero() {
		t.Fatalf("get = %+v, %v", sn, err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}
