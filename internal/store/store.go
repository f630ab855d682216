// Package store keeps SmolVM's state in SQLite: VMs, their network leases,
// port forwards and snapshots. Every allocation happens inside one write
// transaction, so many smolvm processes can share one database without
// handing out the same address, TAP name, MAC or port twice.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/smolvm-go/smolvm/internal/netplan"
)

// Error kinds returned by the store; check them with errors.Is.
var (
	// ErrNotFound means no row has that key.
	ErrNotFound = errors.New("not found")
	// ErrExists means a row with that key already exists.
	ErrExists = errors.New("already exists")
	// ErrExhausted means no address, TAP name or port is left to allocate.
	ErrExhausted = errors.New("exhausted")
)

// FileName is the database's name inside the data directory.
const FileName = "smolvm.db"

// busyTimeout is how long a connection waits for another writer before
// SQLite reports the database as locked.
const busyTimeout = 30 * time.Second

// Store is an open state database. It is safe for concurrent use.
type Store struct {
	db     *sql.DB
	path   string
	dir    string
	claims netplan.Claims
}

// Options tune Open.
type Options struct {
	// Claims is the host-wide record of lease indexes, shared by every data
	// directory on the host; the zero value makes indexes unique only
	// within this database.
	Claims netplan.Claims
}

// Open opens (creating if needed) the database in dir and brings its schema
// up to date. dir is created with mode 0700.
func Open(ctx context.Context, dir string) (*Store, error) {
	return OpenWith(ctx, dir, Options{})
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, dir string, o Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dir, FileName)
	if err := privateFiles(path); err != nil {
		return nil, err
	}
	dsn := "file:" + path + "?_txlock=immediate" +
		fmt.Sprintf("&_pragma=busy_timeout(%d)", busyTimeout.Milliseconds()) +
		"&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{db: db, path: path, dir: abs, claims: o.Claims}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// migrations[i] brings the schema from version i to i+1.
var migrations = []string{
	`CREATE TABLE vms (
		id         TEXT PRIMARY KEY,
		status     TEXT NOT NULL,
		config     TEXT NOT NULL,
		backend    TEXT NOT NULL DEFAULT '',
		accel      TEXT NOT NULL DEFAULT '',
		pid        INTEGER NOT NULL DEFAULT 0,
		pid_start  INTEGER NOT NULL DEFAULT 0,
		control    TEXT NOT NULL DEFAULT '',
		agent      TEXT NOT NULL DEFAULT '',
		error      TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE ip_leases (
		idx    INTEGER PRIMARY KEY,
		vm_id  TEXT NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE,
		ip     TEXT NOT NULL UNIQUE,
		tap    TEXT NOT NULL UNIQUE,
		mac    TEXT NOT NULL UNIQUE
	);
	CREATE TABLE port_forwards (
		host_port  INTEGER PRIMARY KEY,
		vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		guest_port INTEGER NOT NULL,
		kind       TEXT NOT NULL
	);
	CREATE INDEX port_forwards_vm ON port_forwards(vm_id);
	CREATE TABLE snapshots (
		id         TEXT PRIMARY KEY,
		vm_id      TEXT NOT NULL,
		path       TEXT NOT NULL,
		created_at INTEGER NOT NULL
	);`,
	// 2: the guest's vsock context id, when its agent is reachable over vsock.
	`ALTER TABLE vms ADD COLUMN vsock_cid INTEGER NOT NULL DEFAULT 0;`,
	// 3: a lease is its index alone (netplan derives the rest); an
	// operation in progress is a typed column, not a marker in error.
	`CREATE TABLE leases (
		idx   INTEGER PRIMARY KEY,
		vm_id TEXT NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE
	);
	INSERT INTO leases (idx, vm_id) SELECT idx, vm_id FROM ip_leases;
	DROP TABLE ip_leases;
	ALTER TABLE vms ADD COLUMN op TEXT NOT NULL DEFAULT '';
	UPDATE vms SET op = 'stopping', error = '' WHERE error = 'stop in progress';
	UPDATE vms SET op = 'deleting', error = '' WHERE error = 'delete in progress';`,
	// 4: a snapshot's description (the SDK's JSON: files, checksums, config).
	`ALTER TABLE snapshots ADD COLUMN meta TEXT NOT NULL DEFAULT '';`,
	// 5: the host address a port forward answers on ('' = 127.0.0.1).
	`ALTER TABLE port_forwards ADD COLUMN host_ip TEXT NOT NULL DEFAULT '';`,
	// 6: the HTTP server's API keys and sandboxes (apikeys.go).
	serverSchema,
	// 7: which API key of the HTTP server owns a snapshot (snapowners.go).
	snapshotOwnersSchema,
}

// SchemaVersion is the schema version this package writes.
var SchemaVersion = len(migrations)

func (s *Store) migrate(ctx context.Context) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var v int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		if v > len(migrations) {
			return fmt.Errorf("database %s has schema version %d, newer than this smolvm knows (%d): upgrade smolvm", s.path, v, len(migrations))
		}
		for ; v < len(migrations); v++ {
			if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
			}
		}
		_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v))
		return err
	})
}

// tx runs fn in one write transaction (BEGIN IMMEDIATE), retrying when
// SQLite reports the database busy despite the busy timeout, so callers never
// see "database is locked".
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	deadline := time.Now().Add(2 * busyTimeout)
	backoff := 5 * time.Millisecond
	for {
		err := s.tryTx(ctx, fn)
		if err == nil || !isBusy(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		if backoff < 200*time.Millisecond {
			backoff *= 2
		}
	}
}

func (s *Store) tryTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func isBusy(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff
		return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
	}
	return false
}

func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
	}
	return false
}

// privateFiles creates the database file with mode 0600 (SQLite gives its
// WAL and SHM files the database's mode) and tightens an existing
// database, WAL and SHM to 0600: they hold env vars and API key hashes.
func privateFiles(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("make %s private: %w", p, err)
		}
	}
	return nil
}
