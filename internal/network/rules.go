package network

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the name of our nftables tables (families ip and ip6).
const TableName = "smolvm"

// Chain names in our tables.
const (
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
	chainInput       = "input"
	chainForward     = "forward"
	chainAntispoof   = "antispoof"
)

var (
	table4 = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	table6 = &nftables.Table{Family: nftables.TableFamilyIPv6, Name: TableName}
)

// chains lists every base chain we own, in creation order.
var chains = []*nftables.Chain{
	{Table: table4, Name: chainAntispoof, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw},
	{Table: table4, Name: chainPrerouting, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
	{Table: table4, Name: chainOutput, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest},
	{Table: table4, Name: chainPostrouting, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
	{Table: table4, Name: chainInput, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter},
	{Table: table4, Name: chainForward, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter},
	{Table: table6, Name: chainInput, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter},
	{Table: table6, Name: chainForward, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter},
	{Table: table6, Name: chainOutput, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter},
}

func chainOf(t *nftables.Table, name string) *nftables.Chain {
	for _, c := range chains {
		if c.Table == t && c.Name == name {
			return c
		}
	}
	panic("network: unknown chain " + name)
}

// Rule kinds, the "kind=" of a rule's tag.
const (
	// Shared rules (no VM).
	kindLocalnetGuard = "localnet-guard" // ip input: iifname != lo, daddr 127/8, not a reply: drop
	kindInEstablished = "in-established" // ip input: from guests, replies only
	kindInDrop        = "in-drop"        // ip input: from guests: drop
	kindFwdVMToVM     = "fwd-vm2vm"      // ip forward: guest -> guest: drop
	kindFwdEstablish  = "fwd-established"
	kindFwdDrop       = "fwd-drop"    // ip forward: new connections into guests: drop
	kindIn6Drop       = "in6-drop"    // ip6 input: from guests: drop
	kindFwd6DropIn    = "fwd6-drop-i" // ip6 forward: from guests: drop
	kindFwd6DropOut   = "fwd6-drop-o" // ip6 forward: to guests: drop

	// Per-VM rules, made by Setup.
	kindInICMP    = "in-icmp"    // ip input: echo request to the gateway
	kindInDNSUDP  = "in-dns-udp" // ip input: udp 53 to the gateway
	kindInDNSTCP  = "in-dns-tcp" // ip input: tcp 53 to the gateway
	kindMasqOut   = "masq-out"   // ip postrouting: guest -> non-guest interface: masquerade
	kindMasqLocal = "masq-local" // ip postrouting: 127/8 -> guest: masquerade
	kindSpoofMAC  = "spoof-mac"  // ip antispoof: from the TAP with another source MAC: drop
	kindSpoofIP   = "spoof-ip"   // ip antispoof: from the TAP with another source IP: drop
	kindSpoofIn   = "spoof-in"   // ip antispoof: the guest's IP from any other interface: drop
	kindEgress    = "egress"     // ip forward: from the TAP to a non-guest interface: jump to the VM's egress chain

	// Per-forward rules, made by AddForward; tagged with port=<host port>.
	kindDNATPre  = "dnat-pre"    // ip prerouting
	kindDNATOut  = "dnat-out"    // ip output
	kindFwdDNAT  = "fwd-dnat"    // ip forward: accept the DNATed connection
	kindV6Reject = "v6lo-reject" // ip6 output: [::1]:port -> tcp reset
)

// tag identifies a rule of ours. VM is empty for shared rules; Port is the
// host port for forward rules.
type tag struct {
	VM   string
	Kind string
	Port uint16
	Host string // forwards: the host address they answer on; "" means all
	Sum  string // egress: a digest of the policy's domain lists
}

// String renders t as the rule comment, e.g. "smolvm vm=abc kind=dnat-pre port=2222".
func (t tag) String() string {
	var b strings.Builder
	b.WriteString(TableName)
	if t.VM != "" {
		b.WriteString(" vm=" + t.VM)
	}
	b.WriteString(" kind=" + t.Kind)
	if t.Port != 0 {
		b.WriteString(" port=" + strconv.Itoa(int(t.Port)))
	}
	if t.Host != "" {
		b.WriteString(" host=" + t.Host)
	}
	if t.Sum != "" {
		b.WriteString(" sum=" + t.Sum)
	}
	return b.String()
}

func (t tag) userData() []byte {
	return userdata.AppendString(nil, userdata.TypeComment, t.String())
}

// parseTag reads the tag of a rule; ok is false for rules that are not ours.
func parseTag(ud []byte) (t tag, ok bool) {
	s, found := userdata.GetString(ud, userdata.TypeComment)
	if !found {
		return tag{}, false
	}
	f := strings.Fields(s)
	if len(f) < 2 || f[0] != TableName {
		return tag{}, false
	}
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "vm":
			t.VM = v
		case "kind":
			t.Kind = v
		case "port":
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return tag{}, false
			}
			t.Port = uint16(p)
		case "host":
			t.Host = v
		case "sum":
			t.Sum = v
		}
	}
	return t, t.Kind != ""
}

// ruleSpec is a rule to add: where, how, and its tag.
type ruleSpec struct {
	chain  *nftables.Chain
	insert bool // insert at the head of the chain instead of appending
	tag    tag
	exprs  []expr.Any
}

func (s ruleSpec) rule() *nftables.Rule {
	return &nftables.Rule{Table: s.chain.Table, Chain: s.chain, Exprs: s.exprs, UserData: s.tag.userData()}
}

// Expression helpers. Register 1 is used for matches throughout.

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// ifname matches the input (in=true) or output interface name exactly, or by
// prefix when name ends in "*", like nft's `iifname "smol*"`.
func ifname(in bool, op expr.CmpOp, name string) []expr.Any {
	key := expr.MetaKeyOIFNAME
	if in {
		key = expr.MetaKeyIIFNAME
	}
	data := ifnameBytes(name)
	if p, ok := strings.CutSuffix(name, "*"); ok {
		data = []byte(p)
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// dport matches the TCP or UDP destination port (after l4proto).
func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// ip4addr matches the IPv4 source (src=true) or destination address.
func ip4addr(src bool, a netip.Addr) []expr.Any { return ip4addrOp(src, expr.CmpOpEq, a) }

// ip4addrOp compares the IPv4 source (src=true) or destination address with a.
func ip4addrOp(src bool, op expr.CmpOp, a netip.Addr) []expr.Any {
	off := uint32(16)
	if src {
		off = 12
	}
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: b[:]},
	}
}

// ip4prefix matches the IPv4 source or destination in a prefix.
func ip4prefix(src bool, p netip.Prefix) []expr.Any {
	off := uint32(16)
	if src {
		off = 12
	}
	mask := netMask4(p.Bits())
	a := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

func netMask4(bits int) []byte {
	m := uint32(0xffffffff) << (32 - bits)
	return binary.BigEndian.AppendUint32(nil, m)
}

// ctStateReplies matches `ct state established,related`, or with
// not=true `ct state != established,related`.
func ctStateReplies(not ...bool) []expr.Any {
	mask := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	op := expr.CmpOpNeq
	if len(not) > 0 && not[0] {
		op = expr.CmpOpEq
	}
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// ctStatusDNAT matches `ct status dnat`.
func ctStatusDNAT() []expr.Any {
	mask := binary.NativeEndian.AppendUint32(nil, ipsDstNAT)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// fibDaddrLocal matches `fib daddr type local`: the destination is an
// address of this host (in this namespace).
func fibDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
	}
}

func dnatTo(a netip.Addr, port uint16) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: b[:]},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var loopback4 = netip.MustParsePrefix("127.0.0.0/8")

// sharedRules are the rules every VM relies on, in chain order. They are
// appended; per-VM accepts are inserted at the head of the same chains, so
// they come before the drops.
func sharedRules() []ruleSpec {
	in4, fwd4 := chainOf(table4, chainInput), chainOf(table4, chainForward)
	in6, fwd6 := chainOf(table6, chainInput), chainOf(table6, chainForward)
	guests := TAPPrefix + "*"
	return []ruleSpec{
		{chain: in4, tag: tag{Kind: kindLocalnetGuard}, exprs: cat(ifname(true, expr.CmpOpNeq, "lo"), ip4prefix(false, loopback4), ctStateReplies(true), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: in4, tag: tag{Kind: kindInEstablished}, exprs: cat(ifname(true, expr.CmpOpEq, guests), ctStateReplies(), []expr.Any{verdict(expr.VerdictAccept)})},
		{chain: in4, tag: tag{Kind: kindInDrop}, exprs: cat(ifname(true, expr.CmpOpEq, guests), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: fwd4, tag: tag{Kind: kindFwdVMToVM}, exprs: cat(ifname(true, expr.CmpOpEq, guests), ifname(false, expr.CmpOpEq, guests), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: fwd4, tag: tag{Kind: kindFwdEstablish}, exprs: cat(ifname(false, expr.CmpOpEq, guests), ctStateReplies(), []expr.Any{verdict(expr.VerdictAccept)})},
		{chain: fwd4, tag: tag{Kind: kindFwdDrop}, exprs: cat(ifname(false, expr.CmpOpEq, guests), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: in6, tag: tag{Kind: kindIn6Drop}, exprs: cat(ifname(true, expr.CmpOpEq, guests), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: fwd6, tag: tag{Kind: kindFwd6DropIn}, exprs: cat(ifname(true, expr.CmpOpEq, guests), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: fwd6, tag: tag{Kind: kindFwd6DropOut}, exprs: cat(ifname(false, expr.CmpOpEq, guests), []expr.Any{verdict(expr.VerdictDrop)})},
	}
}

// vmRules are the rules Setup makes for one VM.
func vmRules(l Lease) []ruleSpec {
	in4, post := chainOf(table4, chainInput), chainOf(table4, chainPostrouting)
	t := func(kind string) tag { return tag{VM: l.VMID, Kind: kind} }
	toGateway := cat(ifname(true, expr.CmpOpEq, l.TAP), ip4addr(false, l.Gateway))
	spoof := chainOf(table4, chainAntispoof)
	mac, _ := net.ParseMAC(l.MAC) // valid: checked by Validate
	return []ruleSpec{
		// Exception: ping the gateway.
		{chain: in4, insert: true, tag: t(kindInICMP), exprs: cat(toGateway, l4proto(unix.IPPROTO_ICMP), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}}, // echo-request
			verdict(expr.VerdictAccept),
		})},
		// Exception: DNS to the gateway, the guest's resolver.
		{chain: in4, insert: true, tag: t(kindInDNSUDP), exprs: cat(toGateway, l4proto(unix.IPPROTO_UDP), dport(53), []expr.Any{verdict(expr.VerdictAccept)})},
		{chain: in4, insert: true, tag: t(kindInDNSTCP), exprs: cat(toGateway, l4proto(unix.IPPROTO_TCP), dport(53), []expr.Any{verdict(expr.VerdictAccept)})},
		// NAT for the guest's own connections out of any non-guest interface.
		{chain: post, tag: t(kindMasqOut), exprs: masqOutExprs(l)},
		// Connections to 127.0.0.1:PORT, DNATed to the guest, leave with the gateway as source.
		{chain: post, tag: t(kindMasqLocal), exprs: cat(ifname(false, expr.CmpOpEq, l.TAP), ip4prefix(true, loopback4), []expr.Any{&expr.Masq{}})},
		// Anti-spoofing, before conntrack: only the lease's MAC and IP
		// come in through the TAP, and the lease's IP through nothing else.
		{chain: spoof, tag: t(kindSpoofMAC), exprs: cat(ifname(true, expr.CmpOpEq, l.TAP), etherSaddr(expr.CmpOpNeq, mac), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: spoof, tag: t(kindSpoofIP), exprs: cat(ifname(true, expr.CmpOpEq, l.TAP), ip4addrOp(true, expr.CmpOpNeq, l.GuestIP), []expr.Any{verdict(expr.VerdictDrop)})},
		{chain: spoof, tag: t(kindSpoofIn), exprs: cat(ifname(true, expr.CmpOpNeq, l.TAP), ip4addr(true, l.GuestIP), []expr.Any{verdict(expr.VerdictDrop)})},
		// The egress policy, for everything leaving through a non-guest interface.
		{chain: chainOf(table4, chainForward), insert: true, tag: t(kindEgress), exprs: cat(ifname(true, expr.CmpOpEq, l.TAP), ifname(false, expr.CmpOpNeq, TAPPrefix+"*"),
			[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: egressChainName(l.VMID)}})},
	}
}

// etherSaddr matches the Ethernet source address of the packet.
func etherSaddr(op expr.CmpOp, mac net.HardwareAddr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(mac)},
	}
}

func masqOutExprs(l Lease) []expr.Any {
	return cat(ip4addr(true, l.GuestIP), ifname(false, expr.CmpOpNeq, TAPPrefix+"*"), []expr.Any{&expr.Masq{}})
}

// forwardRules are the rules AddForward makes for one forward.
func forwardRules(f Forward) []ruleSpec {
	host := f.hostIP()
	t := func(kind string) tag { return tag{VM: f.VMID, Kind: kind, Port: f.HostPort, Host: f.hostTag()} }
	tcp := l4proto(unix.IPPROTO_TCP)
	guestsPrefix := TAPPrefix + "*"
	// The destinations the forward answers on: every local address, or one.
	dst := fibDaddrLocal()
	if !host.IsUnspecified() {
		dst = ip4addr(false, host)
	}
	var out []ruleSpec
	if !host.IsLoopback() {
		// From other hosts (and from namespaces routed through this one);
		// never from guests, which must not reach each other this way.
		out = append(out, ruleSpec{chain: chainOf(table4, chainPrerouting), tag: t(kindDNATPre), exprs: cat(ifname(true, expr.CmpOpNeq, guestsPrefix), dst, tcp, dport(f.HostPort), dnatTo(f.GuestIP, f.GuestPort))})
	}
	out = append(out,
		// From this host: 127.0.0.1 or another local address.
		ruleSpec{chain: chainOf(table4, chainOutput), tag: t(kindDNATOut), exprs: cat(dst, tcp, dport(f.HostPort), dnatTo(f.GuestIP, f.GuestPort))},
		// Let the DNATed connection through the forward chain's drop.
		ruleSpec{chain: chainOf(table4, chainForward), insert: true, tag: t(kindFwdDNAT), exprs: cat(ifname(true, expr.CmpOpNeq, guestsPrefix), ip4addr(false, f.GuestIP), tcp, dport(f.GuestPort), ctStatusDNAT(), []expr.Any{verdict(expr.VerdictAccept)})},
	)
	if host.IsLoopback() || host.IsUnspecified() {
		// [::1]:port cannot be DNATed to IPv4: reset, so clients fall back to 127.0.0.1.
		out = append(out, ruleSpec{chain: chainOf(table6, chainOutput), tag: t(kindV6Reject), exprs: cat([]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: netip.IPv6Loopback().AsSlice()},
		}, tcp, dport(f.HostPort), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})})
	}
	return out
}

// dnatTarget returns the guest address and port of a DNAT rule, if r is one.
func dnatTarget(r *nftables.Rule) (netip.AddrPort, bool) {
	var imm [3][]byte
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Immediate:
			if e.Register < 3 {
				imm[e.Register] = e.Data
			}
		case *expr.NAT:
			if e.Type != expr.NATTypeDestNAT || len(imm[1]) != 4 || len(imm[2]) != 2 {
				return netip.AddrPort{}, false
			}
			a, _ := netip.AddrFromSlice(imm[1])
			return netip.AddrPortFrom(a, binary.BigEndian.Uint16(imm[2])), true
		}
	}
	return netip.AddrPort{}, false
}

// ipsDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h.
const ipsDstNAT = 1 << 5
