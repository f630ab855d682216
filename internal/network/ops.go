package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Setup gives the VM of l its network: the TAP (persistent, without owner,
// up, with l.Gateway/32 and a route to l.GuestIP/32), IPv4 forwarding and
// route_localnet on, our nftables tables and chains, the shared isolation
// rules, and this VM's rules (masquerade of its traffic leaving through any
// non-guest interface, masquerade of 127.0.0.0/8 towards it, and its two
// input exceptions). Setup is idempotent: run again it replaces the VM's
// rules with the same ones in one atomic batch. The VM's egress policy p
// goes in the same batch (SetPolicy changes it later), so one transaction
// makes all of a new VM's rules. If Setup fails, it removes a TAP it
// created, and no rule is left half-made. Setup does not remove conntrack
// entries (ForgetConnections does).
func Setup(ctx context.Context, l Lease, p Policy) (retErr error) {
	if err := l.Validate(); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if err := ctxErr(ctx, "setup"); err != nil {
		return err
	}
	unlock, lerr := lock()
	if lerr != nil {
		return lerr
	}
	defer unlock()

	created, err := ensureLink(l)
	if created {
		defer func() {
			if retErr != nil {
				_ = deleteLink(l.TAP)
			}
		}()
	}
	if err != nil {
		return err
	}
	// Forwards answer on 127.0.0.1: a fresh network namespace (`ip netns
	// add`) has its loopback down, and `ssh -p PORT root@localhost` would
	// find no network.
	if err := loopbackUp(); err != nil {
		return err
	}
	for _, s := range [][2]string{
		{"/proc/sys/net/ipv4/ip_forward", "1"},
		{"/proc/sys/net/ipv4/conf/all/route_localnet", "1"},
	} {
		if err := writeSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	if err := ctxErr(ctx, "setup"); err != nil {
		return err
	}
	c, s, err := current("setup")
	if err != nil {
		return err
	}
	s.ensureChains(c)
	if err := s.ensureShared(c); err != nil {
		return err
	}
	if _, err := s.delWhere(c, func(t tag) bool { return t.VM == l.VMID && t.Port == 0 }); err != nil {
		return err
	}
	if err := queuePolicy(c, s, l, p, "setup "+l.VMID); err != nil {
		return err
	}
	add(c, vmRules(l))
	return flush(c, "setup "+l.VMID)
}

// Teardown removes the VM's TAP and every rule tagged with its id,
// forwards included. Anything already gone counts as removed.
func Teardown(ctx context.Context, l Lease) error {
	if err := validateVMID(l.VMID); err != nil {
		return err
	}
	if l.TAP != "" {
		if err := validateTAP(l.TAP); err != nil {
			return err
		}
	}
	if err := ctxErr(ctx, "teardown"); err != nil {
		return err
	}
	unlock, lerr := lock()
	if lerr != nil {
		return lerr
	}
	defer unlock()
	if err := deleteVM(l.VMID); err != nil {
		return err
	}
	if l.TAP != "" {
		return deleteLink(l.TAP)
	}
	return nil
}

// deleteVM deletes, in one batch, every rule tagged with vm and its egress
// chain and sets.
func deleteVM(vm string) error {
	op := "teardown " + vm
	c, s, err := current(op)
	if err != nil {
		return err
	}
	deleted, err := s.delWhere(c, func(t tag) bool { return t.VM == vm })
	if err != nil {
		return err
	}
	if s.egress[vm] {
		delEgress(c, vm)
	} else if len(deleted) == 0 {
		return nil
	}
	return flush(c, op)
}

// deleteRules deletes, in one batch, every rule of ours whose tag matches.
func deleteRules(match func(tag) bool, op string) error {
	c, s, err := current(op)
	if err != nil {
		return err
	}
	deleted, err := s.delWhere(c, match)
	if err != nil || len(deleted) == 0 {
		return err
	}
	return flush(c, op)
}

// AddForward forwards TCP connections to f.HostPort on this host to
// f.GuestIP:f.GuestPort: from other hosts (DNAT in prerouting), from this
// host to any of its addresses, 127.0.0.1 included (DNAT in output, with
// route_localnet and masquerade set up by Setup), and lets the translated
// connection through the forward chain. A connection to [::1]:f.HostPort is
// reset so that clients fall back to 127.0.0.1 (see the package comment).
//
// The port must not be bound on this host (an error wrapping ErrPortInUse
// names it) nor forwarded to another VM. Adding the same forward twice is a
// no-op; adding one with a new guest address or port replaces the old.
func AddForward(ctx context.Context, f Forward) error {
	if err := f.Validate(); err != nil {
		return err
	}
	if err := ctxErr(ctx, "add forward"); err != nil {
		return err
	}
	unlock, lerr := lock()
	if lerr != nil {
		return lerr
	}
	defer unlock()
	op := fmt.Sprintf("forward host port %d to vm %s", f.HostPort, f.VMID)

	c, s, err := current(op)
	if err != nil {
		return err
	}
	want := forwardRules(f)
	var mine []*nftables.Rule
	same := true
	for r, t := range s.tags {
		if t.Port != f.HostPort || t.Kind != kindDNATOut && t.Kind != kindDNATPre && t.Kind != kindFwdDNAT && t.Kind != kindV6Reject {
			continue
		}
		if t.VM != f.VMID {
			return fmt.Errorf("network: host port %d is already forwarded to vm %s: %w", f.HostPort, t.VM, ErrPortInUse)
		}
		mine = append(mine, r)
		if dst, ok := dnatTarget(r); ok && dst != netip.AddrPortFrom(f.GuestIP, f.GuestPort) || t.Host != f.hostTag() {
			same = false
		}
	}
	if same && len(mine) == len(want) && s.chainsComplete() {
		return nil // already in place
	}
	if len(mine) == 0 {
		if err := checkPortFree(f.HostPort); err != nil {
			return err
		}
	}
	if err := checkHostIP(f); err != nil {
		return err
	}
	s.ensureChains(c)
	if err := s.ensureShared(c); err != nil {
		return err
	}
	for _, r := range mine {
		if err := c.DelRule(r); err != nil {
			return err
		}
	}
	add(c, want)
	return flush(c, op)
}

func (s *state) chainsComplete() bool {
	for _, ch := range chains {
		if !s.chains[ch] {
			return false
		}
	}
	return true
}

// RemoveForward removes the rules of f (found by f.VMID and f.HostPort); a
// forward already gone counts as removed.
func RemoveForward(ctx context.Context, f Forward) error {
	if err := validateVMID(f.VMID); err != nil {
		return err
	}
	if f.HostPort == 0 {
		return fieldErr("HostPort", "0", "must be between 1 and 65535")
	}
	if err := ctxErr(ctx, "remove forward"); err != nil {
		return err
	}
	unlock, lerr := lock()
	if lerr != nil {
		return lerr
	}
	defer unlock()
	return deleteRules(func(t tag) bool { return t.VM == f.VMID && t.Port == f.HostPort },
		fmt.Sprintf("remove forward of host port %d from vm %s", f.HostPort, f.VMID))
}

// checkHostIP reports, as a *FieldError, whether f.HostIP is a specific
// address that this host does not have.
func checkHostIP(f Forward) error {
	h := f.hostIP()
	if h.IsUnspecified() || h.IsLoopback() {
		return nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("network: list host addresses: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == h {
				return nil
			}
		}
	}
	return fieldErr("HostIP", h.String(), "is not an address of this host (use 0.0.0.0 for all addresses, or leave it unset for 127.0.0.1)")
}

// checkPortFree reports, wrapping ErrPortInUse, whether something on this
// host is bound to TCP port p on IPv4 or IPv6.
func checkPortFree(p uint16) error {
	port := strconv.Itoa(int(p))
	for _, a := range [][2]string{{"tcp4", "0.0.0.0"}, {"tcp6", "::"}} {
		ln, err := net.Listen(a[0], net.JoinHostPort(a[1], port))
		if err == nil {
			ln.Close()
			continue
		}
		if errors.Is(err, unix.EADDRINUSE) {
			return fmt.Errorf("network: host port %d is already in use on this host: %w", p, ErrPortInUse)
		}
		if a[0] == "tcp6" && (errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL)) {
			continue // no IPv6 here
		}
		return fmt.Errorf("network: check host port %d: %w", p, err)
	}
	return nil
}

// Cleanup removes what VMs left behind: TAPs named like ours (smol<digits>)
// and rules tagged with VM ids for which keep returns false. A TAP whose
// owner is unknown is passed to keep as "". When nothing is kept, our
// tables are deleted entirely. removed describes what was removed, e.g.
// "link smol3 (vm abc)" or "rules of vm abc". With dryRun it removes
// nothing and describes what it would remove.
func Cleanup(ctx context.Context, keep func(vmID string) bool, dryRun bool) (removed []string, err error) {
	if err := ctxErr(ctx, "cleanup"); err != nil {
		return nil, err
	}
	unlock, lerr := lock()
	if lerr != nil {
		return nil, lerr
	}
	defer unlock()

	links, err := ourLinks()
	if err != nil {
		return nil, err
	}
	kept := false
	names := make([]string, 0, len(links))
	for name := range links {
		names = append(names, name)
	}
	slices.Sort(names)
	gone := map[string]bool{} // links removed (or, in a dry run, to be)
	for _, name := range names {
		vm := links[name]
		if keep(vm) {
			kept = true
			continue
		}
		if !dryRun {
			if err := deleteLink(name); err != nil {
				return removed, err
			}
		}
		gone[name] = true
		if vm == "" {
			removed = append(removed, "link "+name)
		} else {
			removed = append(removed, fmt.Sprintf("link %s (vm %s)", name, vm))
		}
	}

	detached, err := cleanupAttached(gone, dryRun)
	removed = append(removed, detached...)
	if err != nil {
		return removed, err
	}
	rules, err := cleanupRules(keep, kept, dryRun)
	if err != nil {
		return removed, err
	}
	return append(removed, rules...), nil
}

// cleanupRules removes the rules, egress chains and sets of the VMs keep
// refuses, or our tables entirely when no VM is kept (kept says whether a
// link was), and describes what it removed (with dryRun: would remove).
func cleanupRules(keep func(vmID string) bool, kept, dryRun bool) ([]string, error) {
	c, s, err := current("cleanup")
	if err != nil {
		return nil, err
	}
	decided := map[string]bool{} // vm id -> keep
	vms := make([]string, 0, len(s.tags)+len(s.egress))
	for _, t := range s.tags {
		vms = append(vms, t.VM)
	}
	for vm := range s.egress {
		vms = append(vms, vm)
	}
	for _, vm := range vms {
		if vm == "" {
			continue
		}
		if _, ok := decided[vm]; !ok {
			decided[vm] = keep(vm)
		}
		if decided[vm] {
			kept = true
		}
	}
	var gone []string
	if !kept {
		for _, t := range []*nftables.Table{table4, table6} {
			if s.tables[t] {
				c.DelTable(t)
				gone = append(gone, fmt.Sprintf("table %s %s", familyName(t.Family), TableName))
			}
		}
	} else {
		if _, err := s.delWhere(c, func(t tag) bool { return t.VM != "" && !decided[t.VM] }); err != nil {
			return nil, err
		}
		for vm := range s.egress {
			if !decided[vm] {
				delEgress(c, vm)
			}
		}
	}
	for vm, k := range decided {
		if !k {
			gone = append(gone, "rules of vm "+vm)
		}
	}
	if len(gone) == 0 {
		return nil, nil
	}
	slices.Sort(gone)
	if dryRun {
		return gone, nil // the batch is never sent
	}
	if err := flush(c, "cleanup"); err != nil {
		return nil, err
	}
	return gone, nil
}
