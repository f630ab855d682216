package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// snapshotOwnersSchema is the migration that records which API key of the
// HTTP server took a snapshot. A row goes away with its snapshot.
const snapshotOwnersSchema = `CREATE TABLE snapshot_owners (
		snapshot_id TEXT PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
		key_id      TEXT NOT NULL,
		created_at  INTEGER NOT NULL
	);
	CREATE INDEX snapshot_owners_key ON snapshot_owners(key_id);`

// AddSnapshotOwner records that the server's key keyID owns the snapshot
// id, which must be recorded and not owned yet.
func (s *Store) AddSnapshotOwner(ctx context.Context, id, keyID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO snapshot_owners (snapshot_id, key_id, created_at) VALUES (?,?,?)",
			id, keyID, time.Now().UnixNano())
		if isUnique(err) {
			return fmt.Errorf("snapshot %s: %w", id, ErrExists)
		}
		if isForeignKey(err) {
			return fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
		}
		return err
	})
}

// SnapshotOwner returns the key that owns the snapshot id, or ErrNotFound
// when no key does (a snapshot taken outside the server).
func (s *Store) SnapshotOwner(ctx context.Context, id string) (string, error) {
	var k string
	err := s.db.QueryRowContext(ctx, "SELECT key_id FROM snapshot_owners WHERE snapshot_id = ?", id).Scan(&k)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	return k, err
}

// OwnedSnapshots returns the ids of the snapshots keyID owns, oldest first.
func (s *Store) OwnedSnapshots(ctx context.Context, keyID string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT snapshot_id FROM snapshot_owners WHERE key_id = ? ORDER BY created_at, snapshot_id", keyID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func isForeignKey(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}
