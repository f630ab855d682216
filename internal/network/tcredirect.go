package network

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attached TAPs. Instead of a routed TAP behind NAT, a VM's TAP can take
// over an existing interface of the current network namespace (a pod's
// eth0): the guest gets the interface's address, gateway and MAC, and tc
// joins the two devices as Kata Containers does, so the interface's IP is
// the guest's:
//
//	interface ingress: u32 match-all        -> mirred egress redirect to the TAP
//	TAP ingress:       u32 IPv4 from the guest's MAC and IP -> mirred egress redirect to the interface
//	                   u32 ARP from the guest's MAC, sender MAC and sender IP -> the same
//	table netdev smolvm { chain <tap> { type filter hook ingress device <tap> priority 0; policy drop; } }
//
// The TAP side is not a match-all: tc ingress runs before any nftables
// hook, so anti-spoofing has to be the redirect's own match. A frame from
// the guest that matches neither filter is not redirected; it reaches the
// netdev ingress chain, whose policy drops it, so nothing the guest sends
// reaches this namespace's own stack (its services, its routing) and no
// frame with another source leaves through the interface. IPv6 is dropped
// the same way. No NAT, forward or egress policy applies: the guest is on
// the interface's network as the namespace was.

// attachTable is our netdev table; it holds one chain per attached TAP.
var attachTable = &nftables.Table{Family: nftables.TableFamilyNetdev, Name: TableName}

// ingressParent is the ingress qdisc's handle (tc's "parent ffff:").
var ingressParent = netlink.MakeHandle(0xffff, 0)

// Filter priorities on the TAP's ingress (lower runs first).
const (
	prioIPv4 = 1
	prioARP  = 2
)

// Attachment joins a VM's TAP to an interface of the current namespace.
type Attachment struct {
	VMID    string           // VMID owns the TAP (its alias names it).
	TAP     string           // TAP is the VM's TAP device, made by Attach.
	Iface   string           // Iface is the interface whose traffic the guest takes over.
	MAC     net.HardwareAddr // MAC is the guest's (the interface's) Ethernet address.
	GuestIP netip.Addr       // GuestIP is the guest's (the interface's) IPv4 address.
}

// Validate checks a's fields.
func (a Attachment) Validate() error {
	if err := validateVMID(a.VMID); err != nil {
		return err
	}
	if err := validateTAP(a.TAP); err != nil {
		return err
	}
	if a.Iface == "" || len(a.Iface) > 15 || a.Iface == a.TAP {
		return fieldErr("Iface", a.Iface, "must name another interface (at most 15 characters)")
	}
	if len(a.MAC) != 6 || a.MAC[0]&1 != 0 {
		return fieldErr("MAC", a.MAC.String(), "must be a unicast Ethernet address")
	}
	if !a.GuestIP.Is4() || a.GuestIP.IsUnspecified() {
		return fieldErr("GuestIP", a.GuestIP.String(), "must be an IPv4 address")
	}
	return nil
}

// InterfaceInfo is what a guest takes over from an interface.
type InterfaceInfo struct {
	Name    string           // Name is the interface's name.
	MAC     net.HardwareAddr // MAC is its Ethernet address.
	Addr    netip.Prefix     // Addr is its one IPv4 address with the prefix length.
	Gateway netip.Addr       // Gateway is the default route's gateway through it.
	MTU     int              // MTU is its MTU.
}

// InspectInterface reads the interface called name in the current network
// namespace: it must be an Ethernet interface with exactly one IPv4 address
// and the namespace's IPv4 default route must go through it via a gateway
// (in its prefix, or on-link outside it as with a pod's /32).
func InspectInterface(name string) (InterfaceInfo, error) {
	link, err := netlink.LinkByName(name)
	if _, ok := err.(netlink.LinkNotFoundError); ok {
		return InterfaceInfo{}, fmt.Errorf("no interface %q in this network namespace", name)
	}
	if err != nil {
		return InterfaceInfo{}, linkErr("find "+name, err)
	}
	at := link.Attrs()
	info := InterfaceInfo{Name: name, MAC: at.HardwareAddr, MTU: at.MTU}
	if at.EncapType != "ether" || len(at.HardwareAddr) != 6 {
		return info, fmt.Errorf("interface %s is not an Ethernet interface (%s)", name, at.EncapType)
	}
	if ourLinkRE.MatchString(name) {
		return info, fmt.Errorf("interface %s is a SmolVM TAP", name)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return info, linkErr("list addresses of "+name, err)
	}
	if len(addrs) != 1 {
		return info, fmt.Errorf("interface %s has %d IPv4 addresses; it must have exactly one", name, len(addrs))
	}
	ip, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	bits, _ := addrs[0].Mask.Size()
	info.Addr = netip.PrefixFrom(ip, bits)
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return info, linkErr("list routes", err)
	}
	for _, r := range routes {
		if !isDefault(r) || r.Gw == nil {
			continue
		}
		if r.LinkIndex != at.Index {
			return info, fmt.Errorf("the default route goes through another interface than %s", name)
		}
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		if !gw.IsValid() || gw == ip || gw.IsUnspecified() || gw.IsMulticast() {
			return info, fmt.Errorf("the default gateway %s on %s is not another unicast IPv4 address", gw, name)
		}
		info.Gateway = gw
		return info, nil
	}
	return info, fmt.Errorf("this network namespace has no IPv4 default route via a gateway on %s", name)
}

// isDefault reports whether r is a default route.
func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// DefaultInterface names the interface the namespace's IPv4 default route
// goes through or, without one, its only interface other than loopback.
func DefaultInterface() (string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", linkErr("list routes", err)
	}
	for _, r := range routes {
		if isDefault(r) {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().Name, nil
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return "", linkErr("list links", err)
	}
	var names []string
	for _, l := range links {
		if a := l.Attrs(); a.Flags&net.FlagLoopback == 0 && !ourLinkRE.MatchString(a.Name) {
			names = append(names, a.Name)
		}
	}
	if len(names) != 1 {
		return "", fmt.Errorf("this network namespace has no default route and %d interfaces other than loopback (%v): cannot tell which is the pod's", len(names), names)
	}
	return names[0], nil
}

// Attach makes a.TAP (a new TAP) and joins it to a.Iface with tc
// redirects; from then on the interface's traffic is the guest's. It fails
// if the interface already has an ingress qdisc that redirects to another
// existing device (another VM took it). If Attach fails, it removes what
// it made. It acts on the current network namespace.
func Attach(ctx context.Context, a Attachment) (retErr error) {
	if err := a.Validate(); err != nil {
		return err
	}
	if err := ctxErr(ctx, "attach"); err != nil {
		return err
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	iface, err := netlink.LinkByName(a.Iface)
	if err != nil {
		return linkErr("find "+a.Iface, err)
	}
	if err := freeIngress(iface, a.TAP); err != nil {
		return err
	}
	// A TAP left by a crashed start is replaced: its filters may be stale.
	if err := detach(a); err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			detach(a)
		}
	}()
	if err := createTAP(a.TAP, unix.IFF_TAP); err != nil {
		return err
	}
	tap, err := netlink.LinkByName(a.TAP)
	if err != nil {
		return linkErr("find "+a.TAP, err)
	}
	if err := netlink.LinkSetAlias(tap, aliasPrefix+a.VMID); err != nil {
		return linkErr("set alias of "+a.TAP, err)
	}
	if err := writeSysctl(filepath.Join("/proc/sys/net/ipv6/conf", a.TAP, "disable_ipv6"), "1"); err != nil {
		return err
	}
	if mtu := iface.Attrs().MTU; mtu > 0 {
		if err := netlink.LinkSetMTU(tap, mtu); err != nil {
			return linkErr("set MTU of "+a.TAP, err)
		}
	}
	// First the drop chain, then the TAP's filters, the interface's last:
	// until the end the interface stays the namespace's.
	c, err := newConn()
	if err != nil {
		return fmt.Errorf("network: attach %s: nftables: %w", a.TAP, err)
	}
	c.AddTable(attachTable)
	drop := nftables.ChainPolicyDrop
	c.AddChain(&nftables.Chain{Name: a.TAP, Table: attachTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Device: a.TAP, Policy: &drop})
	if err := flush(c, "attach "+a.TAP); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return linkErr("bring up "+a.TAP, err)
	}
	if err := addIngress(tap); err != nil {
		return err
	}
	for _, f := range guestFilters(tap.Attrs().Index, iface.Attrs().Index, a.MAC, a.GuestIP) {
		if err := netlink.FilterAdd(f); err != nil {
			return linkErr("add tc filter on "+a.TAP, err)
		}
	}
	if err := addIngress(iface); err != nil {
		return err
	}
	all := redirect(iface.Attrs().Index, tap.Attrs().Index, 1, unix.ETH_P_ALL, nil)
	if err := netlink.FilterAdd(all); err != nil {
		return linkErr("add tc filter on "+a.Iface, err)
	}
	if err := netlink.LinkSetUp(iface); err != nil {
		return linkErr("bring up "+a.Iface, err)
	}
	return nil
}

// Detach removes what Attach made: the interface's ingress qdisc (with its
// redirect), the TAP's drop chain and the TAP (its qdisc and filters go
// with it). The interface keeps its addresses and routes. Anything already
// gone counts as removed.
func Detach(ctx context.Context, a Attachment) error {
	if err := validateVMID(a.VMID); err != nil {
		return err
	}
	if err := validateTAP(a.TAP); err != nil {
		return err
	}
	if err := ctxErr(ctx, "detach"); err != nil {
		return err
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	return detach(a)
}

func detach(a Attachment) error {
	var errs []error
	if iface, err := netlink.LinkByName(a.Iface); err == nil {
		if ours, err := redirectsOnlyTo(iface, func(name string) bool { return name == a.TAP }); err != nil {
			errs = append(errs, err)
		} else if ours {
			errs = append(errs, delIngress(iface))
		}
	}
	errs = append(errs, delAttachChain(a.TAP), deleteLink(a.TAP))
	return errors.Join(errs...)
}

// delAttachChain deletes the TAP's chain of our netdev table, and the
// table when that was its last chain.
func delAttachChain(tapName string) error {
	c, err := newConn()
	if err != nil {
		return fmt.Errorf("network: detach %s: nftables: %w", tapName, err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return fmt.Errorf("network: detach %s: list chains: %w", tapName, err)
	}
	others, found := 0, false
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != TableName {
			continue
		}
		if ch.Name == tapName {
			found = true
		} else {
			others++
		}
	}
	switch {
	case found && others == 0:
		c.DelTable(attachTable)
	case found:
		c.DelChain(&nftables.Chain{Name: tapName, Table: attachTable})
	default:
		return nil
	}
	return flush(c, "detach "+tapName)
}

// AttachedTAPs lists the TAPs that have a chain in our netdev table.
func AttachedTAPs() ([]string, error) {
	c, err := newConn()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			out = append(out, ch.Name)
		}
	}
	return out, nil
}

// freeIngress fails if link has an ingress qdisc with filters other than
// redirects, or one redirecting to an existing device other than tapName
// (another VM took it); one left by a VM whose TAP is gone (or by this VM)
// is removed.
func freeIngress(link netlink.Link, tapName string) error {
	q, err := ingressOf(link)
	if err != nil || q == nil {
		return err
	}
	filters, err := netlink.FilterList(link, ingressParent)
	if err != nil {
		return linkErr("list tc filters of "+link.Attrs().Name, err)
	}
	for _, f := range filters {
		kind, to := classify(f)
		switch {
		case kind == filterOther:
			return fmt.Errorf("interface %s already has tc ingress filters of someone else's: %w", link.Attrs().Name, ErrInUse)
		case kind == filterRedirect && to != nil && to.Attrs().Name != tapName:
			return fmt.Errorf("interface %s is already attached to %s (%s): %w", link.Attrs().Name, to.Attrs().Name, to.Attrs().Alias, ErrInUse)
		}
	}
	return delIngress(link)
}

// Kinds of tc filters, by classify.
const (
	filterTable    = iota + 1 // a u32 hash table entry (tc lists one per u32 filter)
	filterRedirect            // a u32 filter whose action is a mirred redirect
	filterOther               // anything else
)

// classify tells what f is and, for a redirect, the device it goes to
// (nil when that device is gone).
func classify(f netlink.Filter) (kind int, to netlink.Link) {
	u, ok := f.(*netlink.U32)
	if !ok {
		return filterOther, nil
	}
	if len(u.Actions) == 0 {
		if u.Divisor != 0 || u.Sel == nil {
			return filterTable, nil
		}
		return filterOther, nil
	}
	for _, a := range u.Actions {
		if _, ok := a.(*netlink.MirredAction); !ok {
			return filterOther, nil
		}
	}
	if u.RedirIndex != 0 {
		to, _ = netlink.LinkByIndex(u.RedirIndex)
	}
	return filterRedirect, to
}

// ErrInUse is the cause of attaching to an interface another VM holds.
var ErrInUse = errors.New("interface in use")

// ourRedirect reports whether link's ingress filters have the shape Attach
// gives an interface: one match-all redirect, priority 1, every protocol.
func ourRedirect(link netlink.Link) bool {
	filters, err := netlink.FilterList(link, ingressParent)
	if err != nil {
		return false
	}
	n := 0
	for _, f := range filters {
		switch kind, _ := classify(f); kind {
		case filterRedirect:
			n++
			if a := f.Attrs(); a.Priority != 1 || a.Protocol != unix.ETH_P_ALL {
				return false
			}
		case filterOther:
			return false
		}
	}
	return n == 1
}

// redirectsOnlyTo reports whether link has an ingress qdisc whose filters
// all redirect to devices to accepts or to devices that are gone.
func redirectsOnlyTo(link netlink.Link, to func(name string) bool) (bool, error) {
	q, err := ingressOf(link)
	if err != nil || q == nil {
		return false, err
	}
	filters, err := netlink.FilterList(link, ingressParent)
	if err != nil {
		return false, linkErr("list tc filters of "+link.Attrs().Name, err)
	}
	redirects := 0
	for _, f := range filters {
		switch kind, dev := classify(f); {
		case kind == filterOther:
			return false, nil
		case kind == filterRedirect && dev != nil && !to(dev.Attrs().Name):
			return false, nil
		case kind == filterRedirect:
			redirects++
		}
	}
	return redirects > 0, nil
}

func ingressOf(link netlink.Link) (netlink.Qdisc, error) {
	qs, err := netlink.QdiscList(link)
	if err != nil {
		return nil, linkErr("list qdiscs of "+link.Attrs().Name, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS {
			return q, nil
		}
	}
	return nil, nil
}

func ingressQdisc(link netlink.Link) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
}

func addIngress(link netlink.Link) error {
	if err := netlink.QdiscAdd(ingressQdisc(link)); err != nil {
		return linkErr("add ingress qdisc to "+link.Attrs().Name, err)
	}
	return nil
}

func delIngress(link netlink.Link) error {
	err := netlink.QdiscDel(ingressQdisc(link))
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENODEV) {
		return linkErr("delete ingress qdisc of "+link.Attrs().Name, err)
	}
	return nil
}

// redirect is a u32 filter on from's ingress that sends the frames its
// keys match (all, without keys) out of to.
func redirect(from, to int, prio uint16, proto uint16, keys []netlink.TcU32Key) *netlink.U32 {
	var sel *netlink.TcU32Sel
	if keys != nil {
		sel = &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: keys}
	}
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from, Parent: ingressParent, Priority: prio, Protocol: proto},
		Sel:         sel,
		Actions:     []netlink.Action{netlink.NewMirredAction(to)},
	}
}

// guestFilters are the TAP's filters: IPv4 from the guest's MAC and IP, and
// ARP from the guest's MAC with its MAC and IP as sender. u32 offsets are
// from the network header; the Ethernet source is at -8 (4 bytes) and -4
// (2 bytes, then the EtherType). Keys are 32-bit aligned words.
func guestFilters(tap, iface int, mac net.HardwareAddr, ip netip.Addr) []*netlink.U32 {
	m0 := binary.BigEndian.Uint32(mac[0:4])
	m1 := uint32(mac[4])<<24 | uint32(mac[5])<<16
	a := ip.As4()
	ipw := binary.BigEndian.Uint32(a[:])
	src := []netlink.TcU32Key{
		{Val: m0, Mask: 0xffffffff, Off: -8},
		{Val: m1, Mask: 0xffff0000, Off: -4},
	}
	v4 := append(append([]netlink.TcU32Key{}, src...), netlink.TcU32Key{Val: ipw, Mask: 0xffffffff, Off: 12})
	// ARP: sender MAC at 8-13, sender IP at 14-17.
	arp := append(append([]netlink.TcU32Key{}, src...),
		netlink.TcU32Key{Val: m0, Mask: 0xffffffff, Off: 8},
		netlink.TcU32Key{Val: m1 | uint32(a[0])<<8 | uint32(a[1]), Mask: 0xffffffff, Off: 12},
		netlink.TcU32Key{Val: uint32(a[2])<<24 | uint32(a[3])<<16, Mask: 0xffff0000, Off: 16},
	)
	return []*netlink.U32{
		redirect(tap, iface, prioIPv4, unix.ETH_P_IP, v4),
		redirect(tap, iface, prioARP, unix.ETH_P_ARP, arp),
	}
}

// cleanupAttached removes what attached TAPs that are gone left behind in
// the current namespace: their chains of our netdev table (the table too
// when none is left) and ingress qdiscs whose only filters are u32
// redirects to devices that no longer exist. TAPs in removed count as
// gone (Cleanup removes them, or in a dry run would). With dryRun it
// removes nothing and describes what it would remove.
func cleanupAttached(removed map[string]bool, dryRun bool) ([]string, error) {
	var gone []string
	taps, err := AttachedTAPs()
	if err != nil {
		return nil, fmt.Errorf("network: cleanup: list netdev chains: %w", err)
	}
	for _, tap := range taps {
		if _, err := netlink.LinkByName(tap); err == nil && !removed[tap] {
			continue
		}
		if !dryRun {
			if err := delAttachChain(tap); err != nil {
				return gone, err
			}
		}
		gone = append(gone, "netdev chain "+tap)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return gone, linkErr("list links", err)
	}
	for _, l := range links {
		if removed[l.Attrs().Name] {
			continue
		}
		if ok, err := redirectsOnlyTo(l, func(name string) bool { return removed[name] }); err != nil || !ok || !ourRedirect(l) {
			continue // no ingress qdisc, not ours, or its VM's TAP is there
		}
		if !dryRun {
			if err := delIngress(l); err != nil {
				return gone, err
			}
		}
		gone = append(gone, "ingress redirect of "+l.Attrs().Name)
	}
	return gone, nil
}
