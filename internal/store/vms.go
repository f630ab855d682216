package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// VM is a VM's row. Config holds the SDK's JSON encoding of the VM's
// configuration; the store does not interpret it.
type VM struct {
	ID       string
	Status   string
	Config   []byte
	Backend  string
	Accel    string
	PID      int
	PIDStart uint64 // the VMM process's start time (clock ticks since boot), to detect PID reuse
	Control  string // VMM control socket
	Agent    string // agent socket
	VsockCID uint32 // guest vsock context id when the agent is reachable over vsock
	Op       Op     // operation in progress, recorded so an interrupted one is recognised
	Error    string
	Created  time.Time
	Updated  time.Time
}

// Op is an operation in progress on a VM, recorded before it starts so that
// its interruption can be recognised and finished (or undone) later.
type Op string

// Operations.
const (
	// OpNone means no operation is in progress.
	OpNone Op = ""
	// OpCreating means a create has not finished: the VM must not start.
	OpCreating Op = "creating"
	// OpStopping means a stop is under way: the VMM's exit is not a crash.
	OpStopping Op = "stopping"
	// OpDeleting means a delete is under way: cleanup finishes it.
	OpDeleting Op = "deleting"
)

const vmColumns = "id, status, config, backend, accel, pid, pid_start, control, agent, error, created_at, updated_at, vsock_cid, op"

func scanVM(row interface{ Scan(...any) error }) (VM, error) {
	var v VM
	var created, updated int64
	var cfg string
	err := row.Scan(&v.ID, &v.Status, &cfg, &v.Backend, &v.Accel, &v.PID, &v.PIDStart, &v.Control, &v.Agent, &v.Error, &created, &updated, &v.VsockCID, &v.Op)
	v.Config = []byte(cfg)
	v.Created = time.Unix(0, created).UTC()
	v.Updated = time.Unix(0, updated).UTC()
	return v, err
}

// Alloc says what CreateVM allocates along with the VM's row.
type Alloc struct {
	// Lease asks for a guest IP, TAP name and MAC.
	Lease bool
	// SSHPort asks for a host port forwarded to guest port 22:
	// 0 none, -1 the first free port from FirstPort, else that port.
	SSHPort int
}

// Allocation is what CreateVM allocated.
type Allocation struct {
	Lease *Lease       // nil unless asked for
	SSH   *PortForward // nil unless asked for
}

// CreateVM records v and allocates what a asks for, all in one transaction:
// either everything is recorded or nothing is.
func (s *Store) CreateVM(ctx context.Context, v VM, a Alloc) (Allocation, error) {
	var out Allocation
	now := time.Now().UTC()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		out = Allocation{}
		_, err := tx.ExecContext(ctx, "INSERT INTO vms ("+vmColumns+") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
			v.ID, v.Status, string(v.Config), v.Backend, v.Accel, v.PID, v.PIDStart, v.Control, v.Agent, v.Error, now.UnixNano(), now.UnixNano(), v.VsockCID, string(v.Op))
		if isUnique(err) {
			return fmt.Errorf("vm %s: %w", v.ID, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("insert vm %s: %w", v.ID, err)
		}
		if a.Lease {
			l, err := s.allocLease(ctx, tx, v.ID)
			if err != nil {
				return err
			}
			out.Lease = &l
		}
		if a.SSHPort != 0 {
			want := a.SSHPort
			if want < 0 {
				want = 0
			}
			p, err := allocPort(ctx, tx, v.ID, 22, KindSSH, want)
			if err != nil {
				return err
			}
			out.SSH = &p
		}
		return nil
	})
	if err != nil && out.Lease != nil {
		s.releaseClaim(*out.Lease)
		out.Lease = nil
	}
	return out, err
}

// GetVM returns the VM with id, or ErrNotFound.
func (s *Store) GetVM(ctx context.Context, id string) (VM, error) {
	v, err := scanVM(s.db.QueryRowContext(ctx, "SELECT "+vmColumns+" FROM vms WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	return v, err
}

// ListVMs returns every VM, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+vmColumns+" FROM vms ORDER BY created_at, id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// UpdateVM reads the VM with id, lets fn change it and writes it back, in one
// transaction. The id and creation time cannot change.
func (s *Store) UpdateVM(ctx context.Context, id string, fn func(*VM) error) (VM, error) {
	var out VM
	err := s.tx(ctx, func(tx *sql.Tx) error {
		v, err := scanVM(tx.QueryRowContext(ctx, "SELECT "+vmColumns+" FROM vms WHERE id = ?", id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("vm %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if err := fn(&v); err != nil {
			return err
		}
		v.ID = id
		v.Updated = time.Now().UTC()
		_, err = tx.ExecContext(ctx, `UPDATE vms SET status=?, config=?, backend=?, accel=?, pid=?, pid_start=?,
			control=?, agent=?, error=?, updated_at=?, vsock_cid=?, op=? WHERE id=?`,
			v.Status, string(v.Config), v.Backend, v.Accel, v.PID, v.PIDStart, v.Control, v.Agent, v.Error, v.Updated.UnixNano(), v.VsockCID, string(v.Op), id)
		out = v
		return err
	})
	return out, err
}

// DeleteVM removes the VM with id and everything allocated to it (lease,
// port forwards). Deleting a missing VM returns ErrNotFound.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	var lease *Lease
	err := s.tx(ctx, func(tx *sql.Tx) error {
		lease = nil
		var idx int
		if err := tx.QueryRowContext(ctx, "SELECT idx FROM leases WHERE vm_id = ?", id).Scan(&idx); err == nil {
			lease = &Lease{VMID: id, Index: idx}
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM vms WHERE id = ?", id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("vm %s: %w", id, ErrNotFound)
		}
		return nil
	})
	if err == nil && lease != nil {
		s.releaseClaim(*lease)
	}
	return err
}
