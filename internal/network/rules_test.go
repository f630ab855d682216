package network

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

var (
	testLease = Lease{
		VMID: "vm-a", TAP: "smol0", MAC: "AA:FC:00:00:00:01",
		GuestIP: netip.MustParseAddr("172.16.0.2"), Gateway: netip.MustParseAddr("172.16.0.1"), PrefixLen: 24,
	}
	testForward = Forward{HostPort: 2222, GuestPort: 22, GuestIP: netip.MustParseAddr("172.16.0.2"), VMID: "vm-a", HostIP: netip.IPv4Unspecified()}
)

// capture sends specs through a test netlink dial and returns the NEWRULE
// messages the kernel would have received.
func capture(t *testing.T, specs []ruleSpec) []netlink.Message {
	t.Helper()
	var msgs []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		for _, m := range req {
			if m.Header.Type == netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE) {
				msgs = append(msgs, m)
			}
		}
		return req, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	add(c, specs)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(specs) {
		t.Fatalf("captured %d NEWRULE messages, want %d", len(msgs), len(specs))
	}
	return msgs
}

// decode parses a captured NEWRULE message back into a rule, with the
// library's own decoder (it answers a GetRules call).
func decode(t *testing.T, fam nftables.TableFamily, m netlink.Message) *nftables.Rule {
	t.Helper()
	// The test dial is called for the request (no reply), then for each
	// receive: the rule as a multi-part dump, then the end of the dump.
	rule := m
	rule.Header.Flags = netlink.Multi
	replies := [][]netlink.Message{nil, {rule}, {{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi}, Data: []byte{0, 0, 0, 0}}}}
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if len(replies) == 0 {
			return nil, errors.New("unexpected netlink call")
		}
		r := replies[0]
		replies = replies[1:]
		return r, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := c.GetRules(&nftables.Table{Family: fam, Name: TableName}, &nftables.Chain{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 {
		t.Fatalf("decoded %d rules, want 1", len(rs))
	}
	return rs[0]
}

// golden compares b with testdata/name.golden (hex), or rewrites it with -update.
func golden(t *testing.T, name string, b []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	got := hex.Dump(b)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("netlink message for %s differs from %s:\ngot:\n%s\nwant:\n%s", name, path, got, want)
	}
}

// find returns the expressions of the given type in r, in order.
func find[T expr.Any](r *nftables.Rule) []T {
	var out []T
	for _, e := range r.Exprs {
		if v, ok := e.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestDNATRuleMessage(t *testing.T) {
	specs := forwardRules(testForward)
	for _, s := range specs {
		if s.tag.Kind != kindDNATPre {
			continue
		}
		msg := capture(t, []ruleSpec{s})[0]
		golden(t, "dnat-prerouting", msg.Data)
		r := decode(t, nftables.TableFamilyIPv4, msg)

		tg, ok := parseTag(r.UserData)
		if !ok || tg != (tag{VM: "vm-a", Kind: kindDNATPre, Port: 2222}) {
			t.Errorf("tag = %+v, %v; want vm-a dnat-pre 2222", tg, ok)
		}
		metas := find[*expr.Meta](r)
		if len(metas) != 2 || metas[0].Key != expr.MetaKeyIIFNAME || metas[1].Key != expr.MetaKeyL4PROTO {
			t.Errorf("meta expressions = %+v, want iifname then l4proto", metas)
		}
		cmps := find[*expr.Cmp](r)
		wantCmps := []expr.Cmp{
			{Op: expr.CmpOpNeq, Register: 1, Data: []byte("smol")},                                       // iifname != "smol*"
			{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)}, // fib daddr type local
			{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},                              // meta l4proto tcp
			{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x08, 0xae}},                                    // tcp dport 2222
		}
		if len(cmps) != len(wantCmps) {
			t.Fatalf("got %d cmp expressions, want %d", len(cmps), len(wantCmps))
		}
		for i := range wantCmps {
			if !reflect.DeepEqual(*cmps[i], wantCmps[i]) {
				t.Errorf("cmp %d = %+v, want %+v", i, *cmps[i], wantCmps[i])
			}
		}
		pl := find[*expr.Payload](r)
		if len(pl) != 1 || pl[0].Base != expr.PayloadBaseTransportHeader || pl[0].Offset != 2 || pl[0].Len != 2 {
			t.Errorf("payload = %+v, want transport header offset 2 len 2 (tcp dport)", pl)
		}
		if fib := find[*expr.Fib](r); len(fib) != 1 || !fib[0].FlagDADDR || !fib[0].ResultADDRTYPE {
			t.Errorf("fib = %+v, want daddr type", fib)
		}
		dst, ok := dnatTarget(r)
		if !ok || dst != netip.MustParseAddrPort("172.16.0.2:22") {
			t.Errorf("dnat target = %v, %v; want 172.16.0.2:22", dst, ok)
		}
		nat := find[*expr.NAT](r)
		if len(nat) != 1 || nat[0].Type != expr.NATTypeDestNAT || nat[0].Family != unix.NFPROTO_IPV4 || nat[0].RegAddrMin != 1 || nat[0].RegProtoMin != 2 {
			t.Errorf("nat = %+v, want ipv4 dnat addr reg 1 proto reg 2", nat)
		}
		return
	}
	t.Fatal("no dnat-pre rule in forwardRules")
}

func TestMasqueradeRuleMessage(t *testing.T) {
	for _, s := range vmRules(testLease) {
		if s.tag.Kind != kindMasqOut {
			continue
		}
		if s.chain.Name != chainPostrouting || s.chain.Table != table4 {
			t.Errorf("masquerade rule in %s %s, want ip postrouting", s.chain.Table.Name, s.chain.Name)
		}
		msg := capture(t, []ruleSpec{s})[0]
		golden(t, "masquerade", msg.Data)
		r := decode(t, nftables.TableFamilyIPv4, msg)
		if tg, _ := parseTag(r.UserData); tg != (tag{VM: "vm-a", Kind: kindMasqOut}) {
			t.Errorf("tag = %+v", tg)
		}
		want := []expr.Any{
			&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{172, 16, 0, 2}},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte("smol")},
			&expr.Masq{},
		}
		if !reflect.DeepEqual(r.Exprs, want) {
			t.Errorf("masquerade rule:\ngot  %#v\nwant %#v", r.Exprs, want)
		}
		return
	}
	t.Fatal("no masq-out rule in vmRules")
}

func TestTagRoundTrip(t *testing.T) {
	for _, tg := range []tag{
		{Kind: kindInDrop},
		{VM: "abc", Kind: kindMasqOut},
		{VM: "x.y_z-1", Kind: kindDNATOut, Port: 65535},
	} {
		got, ok := parseTag(tg.userData())
		if !ok || got != tg {
			t.Errorf("parseTag(%q) = %+v, %v", tg, got, ok)
		}
	}
	for _, s := range []string{"", "other vm=a kind=b", "smolvm vm=a", "smolvm kind=x port=70000"} {
		ud := tag{}.userData()
		if s != "" {
			ud = append([]byte{0, byte(len(s) + 1)}, append([]byte(s), 0)...)
		}
		if got, ok := parseTag(ud); ok {
			t.Errorf("parseTag(%q) = %+v, want not ours", s, got)
		}
	}
}

func TestLeaseValidate(t *testing.T) {
	mod := func(f func(*Lease)) Lease { l := testLease; f(&l); return l }
	tests := []struct {
		name  string
		lease Lease
		field string
	}{
		{"empty vm id", mod(func(l *Lease) { l.VMID = "" }), "VMID"},
		{"vm id with space", mod(func(l *Lease) { l.VMID = "a b" }), "VMID"},
		{"tap without prefix", mod(func(l *Lease) { l.TAP = "tap0" }), "TAP"},
		{"tap too long", mod(func(l *Lease) { l.TAP = "smol0123456789ab" }), "TAP"},
		{"tap with slash", mod(func(l *Lease) { l.TAP = "smol/0" }), "TAP"},
		{"bad mac", mod(func(l *Lease) { l.MAC = "zz" }), "MAC"},
		{"multicast mac", mod(func(l *Lease) { l.MAC = "01:00:5e:00:00:01" }), "MAC"},
		{"no guest ip", mod(func(l *Lease) { l.GuestIP = netip.Addr{} }), "GuestIP"},
		{"ipv6 guest", mod(func(l *Lease) { l.GuestIP = netip.MustParseAddr("fd00::2") }), "GuestIP"},
		{"loopback gateway", mod(func(l *Lease) { l.Gateway = netip.MustParseAddr("127.0.0.1") }), "Gateway"},
		{"prefix 0", mod(func(l *Lease) { l.PrefixLen = 0 }), "PrefixLen"},
		{"prefix 31", mod(func(l *Lease) { l.PrefixLen = 31 }), "PrefixLen"},
		{"same ip", mod(func(l *Lease) { l.Gateway = l.GuestIP }), "GuestIP"},
		{"gateway outside subnet", mod(func(l *Lease) { l.Gateway = netip.MustParseAddr("172.16.1.1") }), "Gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.lease.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want a FieldError for %s", err, tt.field)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q does not name %s", err, tt.field)
			}
			// Setup rejects it before touching anything.
			if err := Setup(t.Context(), tt.lease, DefaultPolicy()); !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("Setup() = %v, want a FieldError for %s", err, tt.field)
			}
		})
	}
	if err := testLease.Validate(); err != nil {
		t.Errorf("valid lease: %v", err)
	}
}

func TestForwardValidate(t *testing.T) {
	mod := func(f func(*Forward)) Forward { x := testForward; f(&x); return x }
	tests := []struct {
		name  string
		fwd   Forward
		field string
	}{
		{"no vm", mod(func(f *Forward) { f.VMID = "" }), "VMID"},
		{"host port 0", mod(func(f *Forward) { f.HostPort = 0 }), "HostPort"},
		{"guest port 0", mod(func(f *Forward) { f.GuestPort = 0 }), "GuestPort"},
		{"no guest ip", mod(func(f *Forward) { f.GuestIP = netip.Addr{} }), "GuestIP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fe *FieldError
			if err := AddForward(t.Context(), tt.fwd); !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("AddForward() = %v, want a FieldError for %s", err, tt.field)
			}
		})
	}
}

func TestCheckSentinels(t *testing.T) {
	err := Check()
	if os.Geteuid() == 0 {
		if _, serr := os.Stat("/dev/net/tun"); serr == nil && err != nil {
			t.Errorf("Check() as root with /dev/net/tun = %v, want nil", err)
		}
		return
	}
	if !errors.Is(err, ErrNoPermission) {
		t.Errorf("Check() without root = %v, want ErrNoPermission", err)
	}
}
