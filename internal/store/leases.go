package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/smolvm-go/smolvm/internal/netplan"
)

// Lease is a VM's lease index: netplan derives its address, TAP name, MAC
// and vsock context id from it.
type Lease struct {
	VMID  string
	Index int
}

// leaseLimit is netplan.MaxIndexes; tests lower it.
var leaseLimit = netplan.MaxIndexes

// allocLease records the lowest index that is free in this database and
// not claimed by another data directory on the host, and claims it
// host-wide. The caller releases the claim if the transaction fails.
func (s *Store) allocLease(ctx context.Context, tx *sql.Tx, vmID string) (Lease, error) {
	held, err := s.claims.Held(s.dir)
	if err != nil {
		return Lease{}, fmt.Errorf("read lease claims: %w", err)
	}
	used := map[int]bool{}
	rows, err := tx.QueryContext(ctx, "SELECT idx FROM leases")
	if err != nil {
		return Lease{}, fmt.Errorf("find free lease: %w", err)
	}
	for rows.Next() {
		var i int
		if err := rows.Scan(&i); err != nil {
			rows.Close()
			return Lease{}, err
		}
		used[i] = true
	}
	rows.Close()
	owner := netplan.Owner{DataDir: s.dir, VMID: vmID}
	stale := func(o netplan.Owner) bool { // a claim of ours that the database does not back
		var n int
		tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM leases l JOIN vms v ON v.id = l.vm_id WHERE v.id = ?", o.VMID).Scan(&n)
		return n == 0
	}
	for idx := 0; idx < leaseLimit; idx++ {
		if used[idx] || held[idx] {
			continue
		}
		if err := s.claims.Claim(idx, owner, stale); errors.Is(err, netplan.ErrClaimed) {
			continue
		} else if err != nil {
			return Lease{}, err
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO leases (idx, vm_id) VALUES (?,?)", idx, vmID)
		if isUnique(err) {
			s.claims.Release(idx, owner)
			return Lease{}, fmt.Errorf("lease for vm %s: %w", vmID, ErrExists)
		}
		if err != nil {
			s.claims.Release(idx, owner)
			return Lease{}, fmt.Errorf("record lease: %w", err)
		}
		return Lease{VMID: vmID, Index: idx}, nil
	}
	return Lease{}, fmt.Errorf("guest addresses: all %d in 172.16.0.0/16 are leased on this host: %w", leaseLimit, ErrExhausted)
}

// releaseClaim gives up the host-wide claim of a lease.
func (s *Store) releaseClaim(l Lease) {
	s.claims.Release(l.Index, netplan.Owner{DataDir: s.dir, VMID: l.VMID})
}

// LeaseOf returns the lease of the VM with id, or ErrNotFound.
func (s *Store) LeaseOf(ctx context.Context, vmID string) (Lease, error) {
	var idx int
	err := s.db.QueryRowContext(ctx, "SELECT idx FROM leases WHERE vm_id = ?", vmID).Scan(&idx)
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, fmt.Errorf("lease of vm %s: %w", vmID, ErrNotFound)
	}
	if err != nil {
		return Lease{}, err
	}
	return Lease{VMID: vmID, Index: idx}, nil
}

// Leases returns every lease, by index.
func (s *Store) Leases(ctx context.Context) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT idx, vm_id FROM leases ORDER BY idx")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var l Lease
		if err := rows.Scan(&l.Index, &l.VMID); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// Port forward kinds.
const (
	// KindSSH forwards a host port to the guest's sshd.
	KindSSH = "ssh"
	// KindExpose forwards a host port to any guest port.
	KindExpose = "expose"
)

// FirstPort is where automatic host port allocation starts.
const FirstPort = 2200

// PortForward is a host TCP port forwarded to a guest port.
type PortForward struct {
	HostPort  int
	VMID      string
	GuestPort int
	Kind      string
	// HostIP is the host address the forward answers on: "" for
	// 127.0.0.1 only, "0.0.0.0" for every address, else that address.
	HostIP string
}

// AllocatePort records a forward of hostPort (0: the first free port from
// FirstPort that nothing on the host is bound to) to guestPort of vmID.
func (s *Store) AllocatePort(ctx context.Context, vmID string, guestPort int, kind string, hostPort int) (PortForward, error) {
	return s.AllocatePortOn(ctx, vmID, guestPort, kind, "", hostPort)
}

// AllocatePortOn is AllocatePort for a forward answering on hostIP (see
// PortForward.HostIP).
func (s *Store) AllocatePortOn(ctx context.Context, vmID string, guestPort int, kind, hostIP string, hostPort int) (PortForward, error) {
	var out PortForward
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = allocPort(ctx, tx, vmID, guestPort, kind, hostPort)
		if err == nil && hostIP != "" {
			out.HostIP = hostIP
			_, err = tx.ExecContext(ctx, "UPDATE port_forwards SET host_ip = ? WHERE host_port = ?", hostIP, out.HostPort)
		}
		return err
	})
	return out, err
}

func allocPort(ctx context.Context, tx *sql.Tx, vmID string, guestPort int, kind string, want int) (PortForward, error) {
	if guestPort < 1 || guestPort > 65535 {
		return PortForward{}, fmt.Errorf("guest port %d: must be between 1 and 65535", guestPort)
	}
	taken, err := takenPorts(ctx, tx)
	if err != nil {
		return PortForward{}, err
	}
	port := want
	if want != 0 {
		if want < 1 || want > 65535 {
			return PortForward{}, fmt.Errorf("host port %d: must be between 1 and 65535", want)
		}
		if taken[want] {
			return PortForward{}, fmt.Errorf("host port %d is already forwarded by smolvm: %w", want, ErrExists)
		}
		if !hostPortFree(want) {
			return PortForward{}, fmt.Errorf("host port %d is already in use on this host: %w", want, ErrExists)
		}
	} else {
		port = 0
		for p := FirstPort; p <= 65535; p++ {
			if !taken[p] && hostPortFree(p) {
				port = p
				break
			}
		}
		if port == 0 {
			return PortForward{}, fmt.Errorf("no free host port from %d: %w", FirstPort, ErrExhausted)
		}
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO port_forwards (host_port, vm_id, guest_port, kind) VALUES (?,?,?,?)", port, vmID, guestPort, kind)
	if err != nil {
		return PortForward{}, fmt.Errorf("record port forward: %w", err)
	}
	return PortForward{HostPort: port, VMID: vmID, GuestPort: guestPort, Kind: kind}, nil
}

func takenPorts(ctx context.Context, tx *sql.Tx) (map[int]bool, error) {
	rows, err := tx.QueryContext(ctx, "SELECT host_port FROM port_forwards")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	taken := map[int]bool{}
	for rows.Next() {
		var p int
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		taken[p] = true
	}
	return taken, rows.Err()
}

// hostPortFree reports whether nothing on the host listens on TCP port p.
func hostPortFree(p int) bool {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// ReleasePort removes the forward of hostPort.
func (s *Store) ReleasePort(ctx context.Context, hostPort int) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM port_forwards WHERE host_port = ?", hostPort)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("port forward %d: %w", hostPort, ErrNotFound)
		}
		return nil
	})
}

// Ports returns the forwards of vmID ("" for all), by host port.
func (s *Store) Ports(ctx context.Context, vmID string) ([]PortForward, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT host_port, vm_id, guest_port, kind, host_ip FROM port_forwards WHERE ? = '' OR vm_id = ? ORDER BY host_port", vmID, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PortForward
	for rows.Next() {
		var p PortForward
		if err := rows.Scan(&p.HostPort, &p.VMID, &p.GuestPort, &p.Kind, &p.HostIP); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}
