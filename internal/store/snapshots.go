package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Snapshot is a saved VM state on disk.
type Snapshot struct {
	ID      string
	VMID    string
	Path    string
	Created time.Time
}

// AddSnapshot records a snapshot; its id must be new.
func (s *Store) AddSnapshot(ctx context.Context, sn Snapshot) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO snapshots (id, vm_id, path, created_at) VALUES (?,?,?,?)",
			sn.ID, sn.VMID, sn.Path, time.Now().UnixNano())
		if isUnique(err) {
			return fmt.Errorf("snapshot %s: %w", sn.ID, ErrExists)
		}
		return err
	})
}

// Snapshots returns the snapshots of vmID ("" for all), oldest first.
func (s *Store) Snapshots(ctx context.Context, vmID string) ([]Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT id, vm_id, path, created_at FROM snapshots WHERE ? = '' OR vm_id = ? ORDER BY created_at, id", vmID, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		var sn Snapshot
		var c int64
		if err := rows.Scan(&sn.ID, &sn.VMID, &sn.Path, &c); err != nil {
			return nil, err
		}
		sn.Created = time.Unix(0, c).UTC()
		out = append(out, sn)
	}
	return out, rows.Err()
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
