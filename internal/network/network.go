// Package network gives a microVM its host-side network: a persistent TAP
// device (made with netlink), NAT for the guest's outbound traffic, TCP port
// forwards from the host to the guest, and isolation rules (made with
// nftables). It acts on the network namespace of the calling thread.
//
// # Addressing
//
// Every TAP gets the gateway address as a /32 and a host route to the guest's
// /32 through the TAP. Many VMs share one gateway (172.16.0.1 by default) and
// one guest netmask (/24), each behind its own TAP: putting gateway/24 on every
// TAP would give the kernel one connected route to 172.16.0.0/24 per TAP, and
// traffic for all guests would leave through whichever TAP came first. With
// /32 host routes each guest is reached through its own TAP, the guest still
// sees the gateway on its link (the host answers ARP for the gateway address
// on the TAP), and a guest's ARP for a neighbour in its /24 goes unanswered.
//
// # nftables layout
//
// All rules live in tables of our own, never anyone else's:
//
//	table ip smolvm {
//		chain antispoof   { type filter hook prerouting priority raw; }   # per TAP: only the lease's MAC and IP get in
//		chain prerouting  { type nat hook prerouting priority dstnat; }   # DNAT host port -> guest (other hosts)
//		chain output      { type nat hook output priority -100; }         # DNAT host port -> guest (this host, incl. 127.0.0.1)
//		chain postrouting { type nat hook postrouting priority srcnat; }  # masquerade guest egress; masquerade 127/8 towards guests
//		chain input       { type filter hook input priority filter; }     # guests cannot reach host services
//		chain forward     { type filter hook forward priority filter; }   # guests cannot reach each other; only forwards get in; jump to egress-<vm>
//		chain egress-<vm> { }                                             # the VM's egress policy (SetPolicy)
//		set allow-<vm>    { type ipv4_addr; flags timeout; size 4096; }   # addresses of allowed domains (DNS forwarder)
//		set deny-<vm>     { type ipv4_addr; flags timeout; size 4096; }   # addresses of denied domains (DNS forwarder)
//	}
//	table ip6 smolvm {
//		chain input   { type filter hook input priority filter; }   # no IPv6 from guests to the host
//		chain forward { type filter hook forward priority filter; } # no IPv6 through the host to or from guests
//		chain output  { type filter hook output priority filter; }  # [::1]:PORT of a forward is reset, so clients fall back to 127.0.0.1
//	}
//
// Every base chain has policy accept: our tables only drop what they mean to
// drop, and leave the verdict on other traffic to the host's own rules. Each
// rule carries a comment (nftables user data) "smolvm vm=<id> kind=<kind>"
// naming the VM it belongs to, or "smolvm kind=<kind>" for the shared rules,
// so rules are found and removed by tag, never by position. Rules match
// guest interfaces by the name prefix "smol" (`iifname "smol*"`).
//
// # Isolation
//
// A guest cannot reach another guest (forward: smol* -> smol* is dropped,
// also through another VM's forwarded port). A guest cannot reach the host:
// input from smol* is dropped except replies to connections the host opened
// and two documented exceptions, both only to the guest's own gateway
// address: ICMP echo (so a guest can check its link with ping) and DNS on port
// 53 over UDP and TCP (guests use the gateway as their resolver; a DNS
// forwarder may listen there). New connections into a guest are dropped
// except the forwarded ports. IPv6 is disabled on every TAP and dropped by the
// ip6 table, so link-local addresses are no way around these rules.
//
// # Anti-spoofing
//
// Before conntrack and NAT (prerouting, priority raw), a packet arriving on
// a VM's TAP is dropped unless its Ethernet source is the lease's MAC and
// its IPv4 source the lease's address, and a packet with the lease's
// address as source arriving on any other interface is dropped. Strict
// reverse-path filtering (rp_filter=1) on the TAP is a second layer. So a
// guest's source address names it: the DNS forwarder relies on that. IPv6
// from guests is dropped (above); ARP is not filtered, but a forged ARP
// only touches the neighbour entries of the guest's own TAP, since every
// guest is reached through a /32 route on its own TAP.
//
// # Egress policy
//
// Traffic from a guest leaving through a non-guest interface jumps to the
// VM's chain egress-<vm>, which Policy describes (see its comment for the
// order of the rules). Setup gives a new VM DefaultPolicy and keeps the
// policy of a VM set up again; SetPolicy replaces it in one transaction and
// then removes the conntrack entries of the guest's connections, so those
// the new policy refuses stop at their next packet. Domain rules work
// through the DNS forwarder (package dnsfwd), which adds the addresses
// its answers carry to allow-<vm> or deny-<vm> with the records' TTL;
// with domain rules the guest cannot use other resolvers (ports 53 and 853
// elsewhere are dropped). The guest reaches the host (DNS and ping to its
// gateway only) and other guests (never) whatever its policy says: those
// rules come first.
//
// # Forwards
//
// A forward answers on 127.0.0.1 only unless its HostIP names another
// address of the host (that one only) or 0.0.0.0 (every address).
//
// # Host-wide effects
//
// Setup writes three sysctls of the current network namespace:
// net.ipv4.ip_forward=1 (routing for guests), and
// net.ipv4.conf.all.route_localnet=1 plus the TAP's route_localnet=1, needed
// to route a connection to 127.0.0.1:PORT out to a guest. route_localnet is
// global; to keep other interfaces from reaching 127.0.0.0/8 services because
// of it, the input chain drops packets to 127.0.0.0/8 that did not arrive on
// lo and are not replies (the replies are those of forwarded localhost
// connections, un-NATed back to 127.0.0.1), as the kernel would without
// route_localnet. This is the guard kube-proxy added for CVE-2020-8558.
//
// # IPv6 loopback
//
// Netfilter cannot translate between IPv6 and IPv4, so [::1]:PORT cannot be
// DNATed to an IPv4 guest; that would need a user-space proxy that lives as
// long as the VM. Instead a SYN to [::1]:PORT gets a TCP reset at once
// (whether or not something listens there), and clients that resolve
// "localhost" to ::1 first (ssh, curl, Go's net.Dial) fall back to 127.0.0.1
// immediately. Clients given ::1 explicitly must use 127.0.0.1.
package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Error kinds, checked with errors.Is.
var (
	// ErrNoTun means /dev/net/tun is missing or unusable.
	ErrNoTun = errors.New("network: /dev/net/tun is not available")
	// ErrNoPermission means the process lacks CAP_NET_ADMIN.
	ErrNoPermission = errors.New("network: CAP_NET_ADMIN is required")
	// ErrInvalid means a Lease or Forward has a bad field; the error is a *FieldError.
	ErrInvalid = errors.New("network: invalid argument")
	// ErrPortInUse means a host port is already bound on this host or
	// forwarded to another VM.
	ErrPortInUse = errors.New("network: host port in use")
	// ErrNotSetUp means the VM has no network here: Setup has not run, or
	// Teardown has.
	ErrNotSetUp = errors.New("network: vm network not set up")
)

// TAPPrefix is the name prefix every guest interface must have: the
// isolation and NAT rules match interfaces by it.
const TAPPrefix = "smol"

// Lease is a VM's network as the store leased it.
type Lease struct {
	VMID      string     // VMID names the VM; rules are tagged with it.
	TAP       string     // TAP is the host interface, e.g. "smol0"; it must start with TAPPrefix.
	MAC       string     // MAC is the guest NIC's address, e.g. "AA:FC:00:00:00:01".
	GuestIP   netip.Addr // GuestIP is the guest's IPv4 address, e.g. 172.16.0.2.
	Gateway   netip.Addr // Gateway is the host side of the TAP, e.g. 172.16.0.1.
	PrefixLen int        // PrefixLen is the guest's netmask length, e.g. 24.
}

// Forward is a host TCP port forwarded to a guest port.
type Forward struct {
	HostPort  uint16     // HostPort is the TCP port on the host.
	GuestPort uint16     // GuestPort is the TCP port in the guest.
	GuestIP   netip.Addr // GuestIP is the guest's IPv4 address.
	VMID      string     // VMID names the VM the forward belongs to.
	// HostIP is the host address the forward answers on. The zero value
	// means 127.0.0.1 only (the safe default); 0.0.0.0 means every address
	// of the host, loopback included; any other IPv4 address of the host
	// means that address only.
	HostIP netip.Addr
}

// loopbackIP is where forwards answer unless published elsewhere.
var loopbackIP = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// hostIP returns f.HostIP, or 127.0.0.1 when it is unset.
func (f Forward) hostIP() netip.Addr {
	if !f.HostIP.IsValid() {
		return loopbackIP
	}
	return f.HostIP
}

// hostTag is the host= part of f's rule tags: "" for all addresses (the
// tag of forwards made before HostIP existed), else the address.
func (f Forward) hostTag() string {
	if h := f.hostIP(); !h.IsUnspecified() {
		return h.String()
	}
	return ""
}

// FieldError reports an invalid field of a Lease or Forward. It wraps ErrInvalid.
type FieldError struct {
	Field  string // Field is the Go field name, e.g. "TAP".
	Value  string // Value is the rejected value.
	Reason string // Reason says what is wrong.
}

// Error implements error.
func (e *FieldError) Error() string {
	return fmt.Sprintf("network: %s %q: %s", e.Field, e.Value, e.Reason)
}

// Unwrap returns ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, value, reason string) error {
	return &FieldError{Field: field, Value: value, Reason: reason}
}

// Validate reports the first invalid field of l as a *FieldError.
func (l Lease) Validate() error {
	if err := validateVMID(l.VMID); err != nil {
		return err
	}
	if err := validateTAP(l.TAP); err != nil {
		return err
	}
	hw, err := net.ParseMAC(l.MAC)
	switch {
	case err != nil || len(hw) != 6:
		return fieldErr("MAC", l.MAC, "must be a MAC address such as AA:FC:00:00:00:01")
	case hw[0]&1 != 0:
		return fieldErr("MAC", l.MAC, "must be a unicast address")
	}
	if err := validateGuestIP("GuestIP", l.GuestIP); err != nil {
		return err
	}
	if err := validateGuestIP("Gateway", l.Gateway); err != nil {
		return err
	}
	if l.PrefixLen < 1 || l.PrefixLen > 30 {
		return fieldErr("PrefixLen", fmt.Sprint(l.PrefixLen), "must be between 1 and 30")
	}
	if l.GuestIP == l.Gateway {
		return fieldErr("GuestIP", l.GuestIP.String(), "must differ from Gateway")
	}
	p := netip.PrefixFrom(l.GuestIP, l.PrefixLen).Masked()
	if !p.Contains(l.Gateway) {
		return fieldErr("Gateway", l.Gateway.String(), fmt.Sprintf("must be in the guest's subnet %s", p))
	}
	return nil
}

// Validate reports the first invalid field of f as a *FieldError.
func (f Forward) Validate() error {
	if err := validateVMID(f.VMID); err != nil {
		return err
	}
	if f.HostPort == 0 {
		return fieldErr("HostPort", "0", "must be between 1 and 65535")
	}
	if f.GuestPort == 0 {
		return fieldErr("GuestPort", "0", "must be between 1 and 65535")
	}
	if h := f.HostIP; h.IsValid() {
		switch {
		case !h.Is4():
			return fieldErr("HostIP", h.String(), "must be an IPv4 address (IPv4 guests cannot be reached through IPv6 NAT)")
		case h.IsLoopback() && h != loopbackIP:
			return fieldErr("HostIP", h.String(), "must be 127.0.0.1 when it is a loopback address")
		case h.IsMulticast(), h == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return fieldErr("HostIP", h.String(), "must be 0.0.0.0, 127.0.0.1 or a unicast address of this host")
		}
	}
	return validateGuestIP("GuestIP", f.GuestIP)
}

func validateVMID(id string) error {
	switch {
	case id == "":
		return fieldErr("VMID", id, "is required")
	case len(id) > 64:
		return fieldErr("VMID", id, "must be at most 64 characters")
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fieldErr("VMID", id, "must contain only letters, digits, '-', '_' and '.'")
		}
	}
	return nil
}

func validateTAP(name string) error {
	switch {
	case !strings.HasPrefix(name, TAPPrefix):
		return fieldErr("TAP", name, "must start with "+TAPPrefix+" (the isolation rules match that prefix)")
	case len(name) > 15:
		return fieldErr("TAP", name, "must be at most 15 characters (IFNAMSIZ)")
	}
	for _, r := range name {
		if r <= ' ' || r > '~' || r == '/' || r == ':' {
			return fieldErr("TAP", name, "must be printable ASCII without whitespace, '/' or ':'")
		}
	}
	return nil
}

func validateGuestIP(field string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fieldErr(field, "", "is required")
	case !a.Is4():
		return fieldErr(field, a.String(), "must be an IPv4 address")
	case a.IsLoopback(), a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fieldErr(field, a.String(), "must be a unicast, non-loopback address")
	}
	return nil
}

// ctxErr returns ctx's error, wrapped with the operation's name.
func ctxErr(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network: %s: %w", op, err)
	}
	return nil
}
