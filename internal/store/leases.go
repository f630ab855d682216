package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Address plan: guest subnets are the /24s of 172.16.0.0/16. In each, .1 is
// the gateway (the host side of the TAP) and .2-.254 are guests, so lease
// index i lives in subnet i/253 at host number 2+i%253.
const (
	guestsPerSubnet = 253
	subnets         = 256
	// MaxLeases is how many guest leases the address plan holds.
	MaxLeases = guestsPerSubnet * subnets
	// LeasePrefixLen is the prefix length of every guest subnet.
	LeasePrefixLen = 24
)

// leaseLimit is MaxLeases; tests lower it.
var leaseLimit = MaxLeases

// Lease is a VM's network identity: its address, gateway, TAP name and MAC.
type Lease struct {
	VMID    string
	Index   int
	IP      netip.Addr
	Gateway netip.Addr
	TAP     string
	MAC     string
}

// LeaseFor returns the lease that index i maps to (without a VM id).
func LeaseFor(i int) Lease {
	subnet, host := i/guestsPerSubnet, 2+i%guestsPerSubnet
	n := i + 1
	return Lease{
		Index:   i,
		IP:      netip.AddrFrom4([4]byte{172, 16, byte(subnet), byte(host)}),
		Gateway: netip.AddrFrom4([4]byte{172, 16, byte(subnet), 1}),
		TAP:     "smol" + strconv.Itoa(i),
		MAC:     fmt.Sprintf("AA:FC:00:00:%02X:%02X", n>>8&0xff, n&0xff),
	}
}

// CID returns the vsock context id derived from the lease (3 upward; 0-2 are reserved).
func (l Lease) CID() uint32 { return uint32(l.Index) + 3 }

func allocLease(ctx context.Context, tx *sql.Tx, vmID string) (Lease, error) {
	var idx int
	err := tx.QueryRowContext(ctx, `SELECT CASE
		WHEN NOT EXISTS (SELECT 1 FROM ip_leases WHERE idx = 0) THEN 0
		ELSE (SELECT MIN(a.idx + 1) FROM ip_leases a WHERE NOT EXISTS (SELECT 1 FROM ip_leases b WHERE b.idx = a.idx + 1))
		END`).Scan(&idx)
	if err != nil {
		return Lease{}, fmt.Errorf("find free lease: %w", err)
	}
	if idx >= leaseLimit {
		return Lease{}, fmt.Errorf("guest addresses: all %d in 172.16.0.0/16 are leased: %w", MaxLeases, ErrExhausted)
	}
	l := LeaseFor(idx)
	l.VMID = vmID
	_, err = tx.ExecContext(ctx, "INSERT INTO ip_leases (idx, vm_id, ip, tap, mac) VALUES (?,?,?,?,?)",
		l.Index, vmID, l.IP.String(), l.TAP, l.MAC)
	if isUnique(err) {
		return Lease{}, fmt.Errorf("lease for vm %s: %w", vmID, ErrExists)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("record lease: %w", err)
	}
	return l, nil
}

// LeaseOf returns the lease of the VM with id, or ErrNotFound.
func (s *Store) LeaseOf(ctx context.Context, vmID string) (Lease, error) {
	var idx int
	err := s.db.QueryRowContext(ctx, "SELECT idx FROM ip_leases WHERE vm_id = ?", vmID).Scan(&idx)
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, fmt.Errorf("lease of vm %s: %w", vmID, ErrNotFound)
	}
	if err != nil {
		return Lease{}, err
	}
	l := LeaseFor(idx)
	l.VMID = vmID
	return l, nil
}

// Leases returns every lease, by index.
func (s *Store) Leases(ctx context.Context) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT idx, vm_id FROM ip_leases ORDER BY idx")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var idx int
		var id string
		if err := rows.Scan(&idx, &id); err != nil {
			return nil, err
		}
		l := LeaseFor(idx)
		l.VMID = id
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
}

// AllocatePort records a forward of hostPort (0: the first free port from
// FirstPort that nothing on the host is bound to) to guestPort of vmID.
func (s *Store) AllocatePort(ctx context.Context, vmID string, guestPort int, kind string, hostPort int) (PortForward, error) {
	var out PortForward
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = allocPort(ctx, tx, vmID, guestPort, kind, hostPort)
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
	rows, err := s.db.QueryContext(ctx, "SELECT host_port, vm_id, guest_port, kind FROM port_forwards WHERE ? = '' OR vm_id = ? ORDER BY host_port", vmID, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PortForward
	for rows.Next() {
		var p PortForward
		if err := rows.Scan(&p.HostPort, &p.VMID, &p.GuestPort, &p.Kind); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}
