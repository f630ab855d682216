package network

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Per-VM egress objects in table ip smolvm: a regular chain the forward
// chain jumps to for the VM's traffic leaving the host, and two sets of
// addresses (with per-element timeouts) that the DNS forwarder fills with
// the answers for the policy's domains.
const (
	egressPrefix   = "egress-"
	allowSetPrefix = "allow-"
	denySetPrefix  = "deny-"

	// MaxSetElements bounds each per-VM address set.
	MaxSetElements = 4096
	// MaxSetTimeout caps how long a resolved address stays in a set.
	MaxSetTimeout = 24 * time.Hour

	// rateBurst is the burst of an egress rate limit, in bytes.
	rateBurst = 64 << 10
)

// Egress rule kinds, in chain order.
const (
	kindEgRate        = "eg-rate"        // over the egress rate: drop
	kindEgEstablished = "eg-established" // replies and established flows: accept
	kindEgDenySet     = "eg-deny-set"    // addresses of denied domains: drop
	kindEgDeny        = "eg-deny"        // a DenyOut prefix: drop
	kindEgAllow       = "eg-allow"       // an AllowOut prefix: accept
	kindEgDNS         = "eg-dns"         // with domain rules: DNS (53, 853) to anyone but the gateway: drop
	kindEgAllowSet    = "eg-allow-set"   // addresses of allowed domains: accept
	kindEgNoInternet  = "eg-no-internet" // internet off: drop
	kindEgDefault     = "eg-default"     // a safe default range: drop
	kindEgAccept      = "eg-accept"      // the rest: accept
)

func egressChainName(vm string) string { return egressPrefix + vm }

func egressChain(vm string) *nftables.Chain {
	return &nftables.Chain{Table: table4, Name: egressChainName(vm)}
}

func addrSet(prefix, vm string) *nftables.Set {
	return &nftables.Set{Table: table4, Name: prefix + vm, KeyType: nftables.TypeIPAddr, HasTimeout: true, Size: MaxSetElements}
}

// egressVMs returns the ids of the VMs with an egress chain in cs.
func egressVMs(cs []*nftables.Chain) map[string]bool {
	out := map[string]bool{}
	for _, c := range cs {
		if c.Table.Name == TableName && c.Table.Family == nftables.TableFamilyIPv4 && c.Hooknum == nil {
			if vm, ok := strings.CutPrefix(c.Name, egressPrefix); ok {
				out[vm] = true
			}
		}
	}
	return out
}

// domainSum digests p's domain lists, so that SetPolicy keeps the sets'
// addresses when the domains did not change.
func domainSum(p Policy) string {
	h := sha256.New()
	for _, l := range [][]Rule{p.AllowOut, p.DenyOut} {
		for _, r := range l {
			if r.Domain != "" {
				fmt.Fprintf(h, "%s,", r.Domain)
			}
		}
		h.Write([]byte{';'})
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// policyRules are the rules of the VM's egress chain for p.
func policyRules(l Lease, p Policy) []ruleSpec {
	ch := egressChain(l.VMID)
	sum := domainSum(p)
	t := func(kind string) tag { return tag{VM: l.VMID, Kind: kind, Sum: sum} }
	drop, accept := []expr.Any{verdict(expr.VerdictDrop)}, []expr.Any{verdict(expr.VerdictAccept)}
	var out []ruleSpec
	r := func(kind string, parts ...[]expr.Any) {
		out = append(out, ruleSpec{chain: ch, tag: t(kind), exprs: cat(parts...)})
	}
	if p.EgressRate != 0 {
		// The bucket holds a second at the rate plus rateBurst, so that a
		// 64 KiB GSO packet always fits.
		r(kindEgRate, []expr.Any{&expr.Limit{Type: expr.LimitTypePktBytes, Rate: p.EgressRate, Unit: expr.LimitTimeSecond, Burst: rateBurst, Over: true}}, drop)
	}
	r(kindEgEstablished, ctStateReplies(), accept)
	r(kindEgDenySet, lookup(denySetPrefix+l.VMID), drop)
	for _, d := range p.DenyOut {
		if d.Domain == "" {
			r(kindEgDeny, ip4prefix(false, d.Prefix), drop)
		}
	}
	for _, a := range p.AllowOut {
		if a.Domain == "" {
			r(kindEgAllow, ip4prefix(false, a.Prefix), accept)
		}
	}
	if p.HasDomains() {
		// Names are checked by the forwarder on the gateway; other resolvers
		// (plain DNS and DNS over TLS) would bypass it.
		for _, pp := range []struct {
			proto byte
			port  uint16
		}{{unix.IPPROTO_UDP, 53}, {unix.IPPROTO_TCP, 53}, {unix.IPPROTO_TCP, 853}, {unix.IPPROTO_UDP, 853}} {
			r(kindEgDNS, l4proto(pp.proto), dport(pp.port), drop)
		}
	}
	r(kindEgAllowSet, lookup(allowSetPrefix+l.VMID), accept)
	if !p.Internet {
		r(kindEgNoInternet, drop)
	}
	for _, d := range SafeDefaults {
		r(kindEgDefault, ip4prefix(false, d), drop)
	}
	r(kindEgAccept, accept)
	return out
}

// lookup matches `ip daddr @set`.
func lookup(set string) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	}
}

// addEgress queues the creation of vm's egress chain and sets and the
// rules of p in it.
func addEgress(c *nftables.Conn, l Lease, p Policy) error {
	c.AddChain(egressChain(l.VMID))
	for _, pre := range []string{allowSetPrefix, denySetPrefix} {
		if err := c.AddSet(addrSet(pre, l.VMID), nil); err != nil {
			return fmt.Errorf("network: set %s%s: %w", pre, l.VMID, err)
		}
	}
	add(c, policyRules(l, p))
	return nil
}

// delEgress queues the deletion of vm's egress chain and sets. The jump
// to the chain must be deleted in the same batch, before.
func delEgress(c *nftables.Conn, vm string) {
	ch := egressChain(vm)
	c.FlushChain(ch)
	c.DelChain(ch)
	for _, pre := range []string{allowSetPrefix, denySetPrefix} {
		c.DelSet(addrSet(pre, vm))
	}
}

// SetPolicy replaces the egress policy of the VM of l, which Setup must
// have set up (else an error wrapping ErrNotSetUp). The VM's egress rules
// are replaced in one nftables transaction, so no packet sees a mix of the
// old and new policy. When the policy's domains change, the addresses the
// DNS forwarder resolved for the old ones are dropped with them (the
// forwarder adds them again for names the new policy allows). Then the
// conntrack entries of connections the guest opened are removed, so that
// connections the old policy let through are judged again by the new one
// at their next packet.
func SetPolicy(ctx context.Context, l Lease, p Policy) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if err := ctxErr(ctx, "set policy"); err != nil {
		return err
	}
	op := "set egress policy of vm " + l.VMID
	if err := replacePolicy(l, p, op); err != nil {
		return err
	}
	return forgetConnections(l.GuestIP, op)
}

func replacePolicy(l Lease, p Policy, op string) error {
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	c, s, err := current(op)
	if err != nil {
		return err
	}
	if !s.egress[l.VMID] {
		return fmt.Errorf("network: %s: %w", op, ErrNotSetUp)
	}
	if err := queuePolicy(c, s, l, p, op); err != nil {
		return err
	}
	return flush(c, op)
}

// queuePolicy queues, in c's batch, what gives the VM of l the egress
// policy p: its chain and sets if it has none yet, else the replacement of
// its chain's rules (and of its sets' addresses when the policy's domains
// change).
func queuePolicy(c *nftables.Conn, s *state, l Lease, p Policy, op string) error {
	if !s.egress[l.VMID] {
		return addEgress(c, l, p)
	}
	ch := egressChain(l.VMID)
	old, err := c.GetRules(table4, ch)
	if err != nil {
		return fmt.Errorf("network: %s: list rules: %w", op, err)
	}
	keepSets := false
	if len(old) > 0 {
		t, _ := parseTag(old[0].UserData)
		keepSets = t.Sum == domainSum(p)
	}
	c.FlushChain(ch)
	if !keepSets {
		for _, pre := range []string{allowSetPrefix, denySetPrefix} {
			c.FlushSet(addrSet(pre, l.VMID))
		}
	}
	add(c, policyRules(l, p))
	return nil
}

// ForgetConnections removes the conntrack entries of connections that
// guest opened, so that none a former holder of its address opened
// outlives it: the established-flow rules would let such a flow past the
// policy. It walks the whole conntrack table (about 10 ms with the
// kernel's default 256k buckets, whatever the number of entries), so the
// start of a VM runs it while the VMM starts up, before the guest runs.
func ForgetConnections(ctx context.Context, guest netip.Addr) error {
	if err := ctxErr(ctx, "forget connections"); err != nil {
		return err
	}
	return forgetConnections(guest, "forget connections of "+guest.String())
}

// forgetConnections removes the conntrack entries of connections guest
// opened.
func forgetConnections(guest netip.Addr, op string) error {
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigSrcIP, net.IP(guest.AsSlice())); err != nil {
		return fmt.Errorf("network: %s: conntrack filter: %w", op, err)
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("network: %s: policy applied, but removing the guest's existing connections failed: %w", op, err)
	}
	return nil
}

// AllowAddrs adds addrs to the addresses the VM may reach because a name
// its policy allows resolved to them, each for ttl (at least a second, at
// most MaxSetTimeout; a new ttl replaces an address's old one). Addresses
// other than IPv4 are ignored. The DNS forwarder calls it; an error wraps
// ErrNotSetUp when the VM has no egress sets.
func AllowAddrs(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error {
	return addAddrs(ctx, allowSetPrefix, vmID, addrs, ttl)
}

// DenyAddrs is AllowAddrs for names the VM's policy denies: the addresses
// are dropped even if an AllowOut rule covers them.
func DenyAddrs(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error {
	return addAddrs(ctx, denySetPrefix, vmID, addrs, ttl)
}

// maxAddrsPerCall bounds one AllowAddrs or DenyAddrs batch.
const maxAddrsPerCall = 256

func addAddrs(ctx context.Context, prefix, vmID string, addrs []netip.Addr, ttl time.Duration) error {
	if err := validateVMID(vmID); err != nil {
		return err
	}
	if err := ctxErr(ctx, "add resolved addresses"); err != nil {
		return err
	}
	ttl = min(max(ttl, time.Second), MaxSetTimeout).Truncate(time.Millisecond)
	var elems []nftables.SetElement
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.Is4() || seen[a] || len(elems) == maxAddrsPerCall {
			continue
		}
		seen[a] = true
		b := a.As4()
		elems = append(elems, nftables.SetElement{Key: b[:], Timeout: ttl})
	}
	if len(elems) == 0 {
		return nil
	}
	op := fmt.Sprintf("add %d addresses to set %s%s", len(elems), prefix, vmID)
	c, err := newConn()
	if err != nil {
		return fmt.Errorf("network: %s: nftables: %w", op, err)
	}
	if err := c.SetAddElements(addrSet(prefix, vmID), elems); err != nil {
		return fmt.Errorf("network: %s: %w", op, err)
	}
	err = flush(c, op)
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("network: %s: %w", op, ErrNotSetUp)
	}
	return err
}
