package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// serverSchema is the migration that adds the HTTP server's tables: API
// keys (only a SHA-256 of each key is kept) and sandboxes, the server's
// record of which key owns a VM, its metadata and its timeout. A sandbox
// row goes away with its VM.
const serverSchema = `CREATE TABLE api_keys (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL UNIQUE,
		hash       BLOB NOT NULL UNIQUE,
		created_at INTEGER NOT NULL,
		revoked_at INTEGER NOT NULL DEFAULT 0,
		last_used  INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE sandboxes (
		vm_id      TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
		key_id     TEXT NOT NULL,
		metadata   TEXT NOT NULL DEFAULT '{}',
		expires_at INTEGER NOT NULL DEFAULT 0,
		on_timeout TEXT NOT NULL DEFAULT 'delete',
		created_at INTEGER NOT NULL
	);
	CREATE INDEX sandboxes_key ON sandboxes(key_id);`

// APIKey is a recorded API key of the HTTP server.
type APIKey struct {
	// ID is the key's public id ("key-" + hex).
	ID string `json:"id"`
	// Name is a unique human name.
	Name string `json:"name"`
	// Hash is the SHA-256 of the secret key.
	Hash []byte `json:"-"`
	// Created is when it was made.
	Created time.Time `json:"created_at"`
	// Revoked is when it was revoked; zero while it is valid.
	Revoked time.Time `json:"revoked_at,omitzero"`
	// LastUsed is when it last authenticated a request (updated at most once a minute).
	LastUsed time.Time `json:"last_used,omitzero"`
}

func unixOrZero(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// AddAPIKey records a key; its id, name and hash must be new.
func (s *Store) AddAPIKey(ctx context.Context, k APIKey) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO api_keys (id, name, hash, created_at) VALUES (?,?,?,?)",
			k.ID, k.Name, k.Hash, time.Now().UnixNano())
		if isUnique(err) {
			return fmt.Errorf("api key %s: %w", k.Name, ErrExists)
		}
		return err
	})
}

const keyColumns = "id, name, hash, created_at, revoked_at, last_used"

func scanKey(row interface{ Scan(...any) error }) (APIKey, error) {
	var k APIKey
	var c, r, l int64
	err := row.Scan(&k.ID, &k.Name, &k.Hash, &c, &r, &l)
	k.Created, k.Revoked, k.LastUsed = unixOrZero(c), unixOrZero(r), unixOrZero(l)
	return k, err
}

// APIKeys returns every recorded key, revoked ones included, oldest first.
func (s *Store) APIKeys(ctx context.Context) ([]APIKey, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+keyColumns+" FROM api_keys ORDER BY created_at, id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []APIKey{}
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// APIKeyByHash returns the valid (not revoked) key whose hash is hash.
func (s *Store) APIKeyByHash(ctx context.Context, hash []byte) (APIKey, error) {
	k, err := scanKey(s.db.QueryRowContext(ctx, "SELECT "+keyColumns+" FROM api_keys WHERE hash = ? AND revoked_at = 0", hash))
	if errors.Is(err, sql.ErrNoRows) {
		return APIKey{}, ErrNotFound
	}
	return k, err
}

// TouchAPIKey records that key id was used now.
func (s *Store) TouchAPIKey(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, "UPDATE api_keys SET last_used = ? WHERE id = ?", time.Now().UnixNano(), id)
	return err
}

// RevokeAPIKey revokes the key whose id or name is idOrName and returns it.
func (s *Store) RevokeAPIKey(ctx context.Context, idOrName string) (APIKey, error) {
	var k APIKey
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		k, err = scanKey(tx.QueryRowContext(ctx, "SELECT "+keyColumns+" FROM api_keys WHERE id = ? OR name = ?", idOrName, idOrName))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("api key %s: %w", idOrName, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !k.Revoked.IsZero() {
			return nil
		}
		now := time.Now().UnixNano()
		k.Revoked = unixOrZero(now)
		_, err = tx.ExecContext(ctx, "UPDATE api_keys SET revoked_at = ? WHERE id = ?", now, k.ID)
		return err
	})
	return k, err
}

// Sandbox is the server's record of a VM it created for a key.
type Sandbox struct {
	// VMID is the VM's id.
	VMID string
	// KeyID owns the sandbox.
	KeyID string
	// Metadata are the caller's labels.
	Metadata map[string]string
	// Expires is when the sandbox times out; zero means never.
	Expires time.Time
	// OnTimeout is "delete" or "save".
	OnTimeout string
	// Created is when it was recorded.
	Created time.Time
}

const sandboxColumns = "vm_id, key_id, metadata, expires_at, on_timeout, created_at"

func scanSandbox(row interface{ Scan(...any) error }) (Sandbox, error) {
	var sb Sandbox
	var md string
	var e, c int64
	if err := row.Scan(&sb.VMID, &sb.KeyID, &md, &e, &sb.OnTimeout, &c); err != nil {
		return sb, err
	}
	sb.Expires, sb.Created = unixOrZero(e), unixOrZero(c)
	if err := json.Unmarshal([]byte(md), &sb.Metadata); err != nil {
		return sb, fmt.Errorf("sandbox %s: corrupt metadata: %w", sb.VMID, err)
	}
	return sb, nil
}

// AddSandbox records a sandbox for a VM that exists.
func (s *Store) AddSandbox(ctx context.Context, sb Sandbox) error {
	md, err := json.Marshal(sb.Metadata)
	if err != nil {
		return err
	}
	if sb.Metadata == nil {
		md = []byte("{}")
	}
	var exp int64
	if !sb.Expires.IsZero() {
		exp = sb.Expires.UnixNano()
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO sandboxes ("+sandboxColumns+") VALUES (?,?,?,?,?,?)",
			sb.VMID, sb.KeyID, string(md), exp, sb.OnTimeout, time.Now().UnixNano())
		if isUnique(err) {
			return fmt.Errorf("sandbox %s: %w", sb.VMID, ErrExists)
		}
		return err
	})
}

// GetSandbox returns the sandbox record of vmID.
func (s *Store) GetSandbox(ctx context.Context, vmID string) (Sandbox, error) {
	sb, err := scanSandbox(s.db.QueryRowContext(ctx, "SELECT "+sandboxColumns+" FROM sandboxes WHERE vm_id = ?", vmID))
	if errors.Is(err, sql.ErrNoRows) {
		return Sandbox{}, fmt.Errorf("sandbox %s: %w", vmID, ErrNotFound)
	}
	return sb, err
}

// Sandboxes returns the sandboxes of keyID ("" for every key), oldest first.
func (s *Store) Sandboxes(ctx context.Context, keyID string) ([]Sandbox, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+sandboxColumns+" FROM sandboxes WHERE ? = '' OR key_id = ? ORDER BY created_at, vm_id", keyID, keyID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Sandbox{}
	for rows.Next() {
		sb, err := scanSandbox(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sb)
	}
	return out, rows.Err()
}

// ExpiredSandboxes returns the sandboxes whose timeout is at or before now.
func (s *Store) ExpiredSandboxes(ctx context.Context, now time.Time) ([]Sandbox, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+sandboxColumns+" FROM sandboxes WHERE expires_at > 0 AND expires_at <= ? ORDER BY expires_at", now.UnixNano())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Sandbox
	for rows.Next() {
		sb, err := scanSandbox(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sb)
	}
	return out, rows.Err()
}

// SetSandboxExpiry sets when vmID times out (zero: never).
func (s *Store) SetSandboxExpiry(ctx context.Context, vmID string, t time.Time) error {
	var exp int64
	if !t.IsZero() {
		exp = t.UnixNano()
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE sandboxes SET expires_at = ? WHERE vm_id = ?", exp, vmID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("sandbox %s: %w", vmID, ErrNotFound)
		}
		return nil
	})
}
