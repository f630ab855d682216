package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// OpSnapshotting means a snapshot of the VM is being taken: its guest may
// be paused; cleanup resumes it if the snapshot was interrupted.
const OpSnapshotting Op = "snapshotting"

// Snapshot is a saved VM state on disk.
type Snapshot struct {
	ID      string
	VMID    string // the VM it was taken of
	Path    string // its directory
	Meta    []byte // the SDK's JSON description; the store does not interpret it
	Created time.Time
}

// AddSnapshot records a snapshot; its id must be new.
func (s *Store) AddSnapshot(ctx context.Context, sn Snapshot) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO snapshots (id, vm_id, path, created_at, meta) VALUES (?,?,?,?,?)",
			sn.ID, sn.VMID, sn.Path, time.Now().UnixNano(), string(sn.Meta))
		if isUnique(err) {
			return fmt.Errorf("snapshot %s: %w", sn.ID, ErrExists)
		}
		return err
	})
}

const snapColumns = "id, vm_id, path, created_at, meta"

func scanSnapshot(row interface{ Scan(...any) error }) (Snapshot, error) {
	var sn Snapshot
	var c int64
	var meta string
	err := row.Scan(&sn.ID, &sn.VMID, &sn.Path, &c, &meta)
	sn.Created = time.Unix(0, c).UTC()
	sn.Meta = []byte(meta)
	return sn, err
}

// Snapshots returns the snapshots of vmID ("" for all), oldest first.
func (s *Store) Snapshots(ctx context.Context, vmID string) ([]Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+snapColumns+" FROM snapshots WHERE ? = '' OR vm_id = ? ORDER BY created_at, id", vmID, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		sn, err := scanSnapshot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}

// GetSnapshot returns the snapshot id, or ErrNotFound.
func (s *Store) GetSnapshot(ctx context.Context, id string) (Snapshot, error) {
	sn, err := scanSnapshot(s.db.QueryRowContext(ctx, "SELECT "+snapColumns+" FROM snapshots WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	return sn, err
}

// DeleteSnapshot removes the snapshot record id.
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM snapshots WHERE id = ?", id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
		}
		return nil
	})
}
