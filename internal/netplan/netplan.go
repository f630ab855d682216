// Package netplan is one VM's network identity: the subnet, gateway, guest
// address, TAP device name, MAC address and vsock context id that follow
// from its lease index, plus its SSH port. Everything else (the kernel
// command line, the VMM's NIC, the host's TAP and nftables rules, the
// public NetworkConfig) is derived from a Plan, so the identity has one
// shape from the store to the guest.
//
// Lease indexes are unique per host, not per data directory: Claims records
// which index each data directory holds, in a directory every SmolVM
// process on the host shares.
package netplan

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Address plan: guest subnets are the /24s of 172.16.0.0/16. In each, .1 is
// the gateway (the host side of the TAP) and .2-.254 are guests, so lease
// index i lives in subnet i/253 at host number 2+i%253.
const (
	guestsPerSubnet = 253
	subnets         = 256
	// MaxIndexes is how many lease indexes the address plan holds.
	MaxIndexes = guestsPerSubnet * subnets
	// PrefixLen is the prefix length of every guest subnet.
	PrefixLen = 24
	// TAPPrefix starts every TAP device name.
	TAPPrefix = "smol"
	// firstCID is the vsock context id of index 0 (0-2 are reserved).
	firstCID = 3
)

// Plan is one VM's network identity.
type Plan struct {
	// Index is the lease index the rest follows from.
	Index int
	// Subnet is the guest's /24, e.g. 172.16.0.0/24.
	Subnet netip.Prefix
	// Gateway is the host side of the TAP, e.g. 172.16.0.1.
	Gateway netip.Addr
	// GuestIP is the guest's address, e.g. 172.16.0.2.
	GuestIP netip.Addr
	// TAP is the host TAP device's name, e.g. smol0.
	TAP string
	// MAC is the guest NIC's address, e.g. AA:FC:00:00:00:01.
	MAC string
	// CID is the guest's vsock context id.
	CID uint32
	// SSHPort is the host port forwarded to the guest's sshd; 0 means none.
	SSHPort int
}

// For returns the plan of lease index i with SSH port sshPort (0: none).
func For(i, sshPort int) (Plan, error) {
	if i < 0 || i >= MaxIndexes {
		return Plan{}, fmt.Errorf("lease index %d out of range 0-%d", i, MaxIndexes-1)
	}
	subnet, host := i/guestsPerSubnet, 2+i%guestsPerSubnet
	n := i + 1
	return Plan{
		Index:   i,
		Subnet:  netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(subnet), 0}), PrefixLen),
		Gateway: netip.AddrFrom4([4]byte{172, 16, byte(subnet), 1}),
		GuestIP: netip.AddrFrom4([4]byte{172, 16, byte(subnet), byte(host)}),
		TAP:     TAPPrefix + strconv.Itoa(i),
		MAC:     fmt.Sprintf("AA:FC:00:00:%02X:%02X", n>>8&0xff, n&0xff),
		CID:     uint32(i) + firstCID,
		SSHPort: sshPort,
	}, nil
}

// MustFor is For for indexes known to be valid (read back from the store).
func MustFor(i, sshPort int) Plan {
	p, err := For(i, sshPort)
	if err != nil {
		panic(err)
	}
	return p
}

// GuestPrefix is the guest's address with its prefix length, as the guest
// configures eth0.
func (p Plan) GuestPrefix() netip.Prefix { return netip.PrefixFrom(p.GuestIP, PrefixLen) }

// Netmask returns the subnet mask in dotted-quad form.
func (p Plan) Netmask() string { return "255.255.255.0" }

// Resolvers returns the guest's DNS resolvers: custom when given, else its
// gateway. This is the one place the default is decided.
func (p Plan) Resolvers(custom []netip.Addr) []netip.Addr {
	if len(custom) > 0 {
		return append([]netip.Addr(nil), custom...)
	}
	return []netip.Addr{p.Gateway}
}
