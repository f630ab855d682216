package network

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/smolvm-go/smolvm/internal/network/netnstest"
)

// newWorld makes the fake outside world: a namespace behind ext0 (host
// 192.0.2.1, world 192.0.2.2) holding "public" 203.0.113.10 and .20, the
// metadata address 169.254.169.254 and a private 10.9.0.1 on its loopback,
// each with an echo server on port 80 answering "<name>:<line>". The host
// routes them to the world.
func newWorld(t *testing.T) *peerNS {
	t.Helper()
	w := newPeerNS(t, "ext0", "192.0.2.2/24", "")
	if err := netlink.AddrAdd(mustLink(t, "ext0"), mustAddr(t, "192.0.2.1/24")); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(w.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for addr, name := range map[string]string{"203.0.113.10": "pub1", "203.0.113.20": "pub2", "169.254.169.254": "meta", "10.9.0.1": "private"} {
		if err := h.AddrAdd(lo, mustAddr(t, addr+"/32")); err != nil {
			t.Fatal(err)
		}
		listenIn(t, w, "tcp4", addr+":80", name+":")
	}
	for _, dst := range []string{"203.0.113.0/24", "169.254.169.254/32", "10.9.0.0/24"} {
		_, n, _ := net.ParseCIDR(dst)
		if err := netlink.RouteAdd(&netlink.Route{Dst: n, Gw: net.ParseIP("192.0.2.2")}); err != nil {
			t.Fatalf("route %s: %v", dst, err)
		}
	}
	return w
}

func mustPolicy(t *testing.T, internet bool, allow, deny []string) Policy {
	t.Helper()
	p, err := ParsePolicy(internet, allow, deny, "")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func setPolicy(t *testing.T, l Lease, p Policy) time.Duration {
	t.Helper()
	start := time.Now()
	if err := SetPolicy(t.Context(), l, p); err != nil {
		t.Fatalf("SetPolicy(%+v): %v", p, err)
	}
	return time.Since(start)
}

// TestEgressPolicy checks the safe defaults, internet off, allow-out and
// deny-out (prefixes and resolved-address sets), their order, that a
// policy change cuts connections it no longer allows, and that Setup run
// again installs the policy it is given.
func TestEgressPolicy(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()
	w := newWorld(t)
	_ = w
	g := newPeerNS(t, "smol1", "172.16.0.2/24", "172.16.0.1")
	l := lease("vm-e", "smol1", 2)
	if err := Setup(ctx, l, DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	// A second guest with a service, to check isolation beats allow-out.
	g2 := newPeerNS(t, "smol2", "172.16.0.3/24", "172.16.0.1")
	g.addRoute(t, "172.16.0.3/32", "172.16.0.1")
	if err := Setup(ctx, lease("vm-e2", "smol2", 3), DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	listenIn(t, g2, "tcp4", ":80", "g2:")

	// Default: internet on, metadata and private ranges off.
	mustExchange(t, g, "203.0.113.10:80", "pub1:ping")
	mustBlock(t, g, "169.254.169.254:80")
	mustBlock(t, g, "10.9.0.1:80")
	mustBlock(t, g, "172.16.0.3:80")

	// A connection open before a policy change is judged by the new policy.
	var c net.Conn
	if err := netnstest.Do(g.ns, func() (err error) { c, err = net.DialTimeout("tcp", "203.0.113.20:80", 2*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got := lineOver(c, r); got != "pub2:ping" {
		t.Fatalf("open connection: %q", got)
	}

	// Internet off.
	d := setPolicy(t, l, Policy{})
	t.Logf("SetPolicy (internet off) took %v", d)
	mustBlock(t, g, "203.0.113.10:80")
	if got := lineOver(c, r); got != "" {
		t.Errorf("a connection opened before internet off still answers: %q", got)
	}

	// Allow-out of a private prefix opens it, and only it; isolation wins.
	private := mustPolicy(t, false, []string{"10.9.0.0/24", "172.16.0.0/12"}, nil)
	setPolicy(t, l, private)
	mustExchange(t, g, "10.9.0.1:80", "private:ping")
	mustBlock(t, g, "203.0.113.10:80")
	mustBlock(t, g, "169.254.169.254:80")
	mustBlock(t, g, "172.16.0.3:80")

	// Setup again installs the policy it is given, in the same batch: the
	// default policy opens the internet again, the VM's own closes it.
	if err := Setup(ctx, l, DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	mustExchange(t, g, "203.0.113.10:80", "pub1:ping")
	mustBlock(t, g, "10.9.0.1:80")
	if err := Setup(ctx, l, private); err != nil {
		t.Fatal(err)
	}
	mustExchange(t, g, "10.9.0.1:80", "private:ping")
	mustBlock(t, g, "203.0.113.10:80")

	// Resolved addresses: allowed for their timeout, then gone.
	setPolicy(t, l, mustPolicy(t, false, []string{"api.example.test"}, nil))
	if err := AllowAddrs(ctx, "vm-e", []netip.Addr{netip.MustParseAddr("203.0.113.20")}, time.Second); err != nil {
		t.Fatal(err)
	}
	mustExchange(t, g, "203.0.113.20:80", "pub2:ping")
	mustBlock(t, g, "203.0.113.10:80")
	waitBlocked(t, g, "203.0.113.20:80", 5*time.Second)

	// The same domains: a new policy keeps the resolved addresses; other
	// domains: they go.
	if err := AllowAddrs(ctx, "vm-e", []netip.Addr{netip.MustParseAddr("203.0.113.20")}, time.Minute); err != nil {
		t.Fatal(err)
	}
	setPolicy(t, l, mustPolicy(t, false, []string{"api.example.test", "10.9.0.0/24"}, nil))
	mustExchange(t, g, "203.0.113.20:80", "pub2:ping")
	setPolicy(t, l, mustPolicy(t, false, []string{"other.example.test"}, nil))
	mustBlock(t, g, "203.0.113.20:80")

	// Deny-out wins over allow-out, for prefixes and for resolved addresses.
	setPolicy(t, l, mustPolicy(t, true, []string{"203.0.113.0/24"}, []string{"203.0.113.10", "bad.example.test"}))
	mustBlock(t, g, "203.0.113.10:80")
	mustExchange(t, g, "203.0.113.20:80", "pub2:ping")
	if err := DenyAddrs(ctx, "vm-e", []netip.Addr{netip.MustParseAddr("203.0.113.20")}, time.Minute); err != nil {
		t.Fatal(err)
	}
	mustBlock(t, g, "203.0.113.20:80")

	// A policy with domains keeps guests on the gateway's resolver.
	listenIn(t, w, "tcp4", "203.0.113.20:53", "dns:")
	setPolicy(t, l, mustPolicy(t, true, []string{"api.example.test"}, nil))
	mustBlock(t, g, "203.0.113.20:53")
	setPolicy(t, l, DefaultPolicy())
	mustExchange(t, g, "203.0.113.20:53", "dns:ping")

	// Unknown VM; bad policy.
	other := lease("vm-none", "smol9", 9)
	if err := SetPolicy(ctx, other, Policy{}); !errors.Is(err, ErrNotSetUp) {
		t.Errorf("SetPolicy of a VM never set up = %v, want ErrNotSetUp", err)
	}
	if err := AllowAddrs(ctx, "vm-none", []netip.Addr{netip.MustParseAddr("203.0.113.20")}, time.Minute); !errors.Is(err, ErrNotSetUp) {
		t.Errorf("AllowAddrs of a VM never set up = %v, want ErrNotSetUp", err)
	}
	var fe *FieldError
	if err := SetPolicy(ctx, l, Policy{AllowOut: []Rule{{Prefix: netip.MustParsePrefix("10.0.0.1/8")}}}); !errors.As(err, &fe) || fe.Field != "AllowOut[0]" {
		t.Errorf("SetPolicy with a bad prefix = %v, want a FieldError", err)
	}

	// Teardown takes the chain and the sets.
	if err := Teardown(ctx, l); err != nil {
		t.Fatal(err)
	}
	conn, err := newConn()
	if err != nil {
		t.Fatal(err)
	}
	sets, err := conn.GetSets(table4)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		if strings.HasSuffix(s.Name, "-vm-e") {
			t.Errorf("set %s left after Teardown", s.Name)
		}
	}
	if ch, err := conn.ListChain(table4, egressChainName("vm-e")); err == nil {
		t.Errorf("chain %s left after Teardown", ch.Name)
	}
	if ch, err := conn.ListChain(table4, egressChainName("vm-e2")); err != nil {
		t.Errorf("Teardown of vm-e took vm-e2's chain: %v (%v)", err, ch)
	}
}

// lineOver sends a line on an open connection and returns the answer, or
// "" if none comes within a second.
func lineOver(c net.Conn, r *bufio.Reader) string {
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return ""
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return ""
	}
	return strings.TrimSpace(line)
}

// waitBlocked waits until connections from p to addr stop completing.
func waitBlocked(t *testing.T, p *peerNS, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if _, err := exchange(p, addr, 300*time.Millisecond); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s still connects after %v", who(p), addr, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestEgressRate checks that an egress rate caps what a guest sends out,
// and that without it the same sender goes much faster.
func TestEgressRate(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	w := newWorld(t)
	g := newPeerNS(t, "smol1", "172.16.0.2/24", "172.16.0.1")
	l := lease("vm-r", "smol1", 2)
	if err := Setup(t.Context(), l, DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := netnstest.Do(w.ns, func() (err error) { ln, err = net.Listen("tcp4", "203.0.113.10:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan int64, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, c)
			c.Close()
			received <- n
		}
	}()
	send := func() int64 {
		var c net.Conn
		if err := netnstest.Do(g.ns, func() (err error) { c, err = net.DialTimeout("tcp", "203.0.113.10:9000", 2*time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 32<<10)
		c.SetWriteDeadline(time.Now().Add(1500 * time.Millisecond))
		for {
			if _, err := c.Write(buf); err != nil {
				break
			}
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		select {
		case n := <-received:
			return n
		case <-time.After(5 * time.Second):
			t.Fatal("sink did not finish")
			return 0
		}
	}
	fast := send()
	const rate = 100_000 // bytes per second
	p := DefaultPolicy()
	p.EgressRate = rate
	setPolicy(t, l, p)
	slow := send()
	t.Logf("1.5 s of sending: %d bytes without a limit, %d bytes at %d B/s", fast, slow, rate)
	// 1.5 s at the rate, plus a full bucket (a second at the rate plus
	// 64 KiB), plus slack.
	if limit := int64(rate*1.5+rate+rateBurst) * 5 / 4; slow > limit || slow == 0 {
		t.Errorf("sent %d bytes in 1.5 s at %d B/s, want between 1 and %d", slow, rate, limit)
	}
	if fast <= 4*slow {
		t.Errorf("without a limit only %d bytes went (with: %d): the check proves nothing", fast, slow)
	}
}

// TestAntiSpoofing sends UDP from a guest with its own and with forged
// source addresses to a listener in the world, and checks that only its
// own arrive, and that the anti-spoofing rules and rp_filter are what stop
// the forged ones.
func TestAntiSpoofing(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	w := newWorld(t)
	g := newPeerNS(t, "smol1", "172.16.0.2/24", "172.16.0.1")
	if err := Setup(t.Context(), lease("vm-s", "smol1", 2), DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	var pc net.PacketConn
	if err := netnstest.Do(w.ns, func() (err error) { pc, err = net.ListenPacket("udp4", "203.0.113.10:7000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	h, err := netlink.NewHandleAt(g.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(eth0, mustAddr(t, "172.16.0.99/32")); err != nil {
		t.Fatal(err)
	}
	realMAC := eth0.Attrs().HardwareAddr
	fakeMAC, _ := net.ParseMAC("AA:FC:00:00:00:63")

	// arrives sends msg from src in the guest and reports whether the
	// world received it.
	arrives := func(src, msg string) bool {
		t.Helper()
		err := netnstest.Do(g.ns, func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, &net.UDPAddr{IP: net.ParseIP("203.0.113.10"), Port: 7000})
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(msg))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		for {
			pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return false
			}
			if string(buf[:n]) == msg {
				return true
			}
		}
	}
	setMAC := func(mac net.HardwareAddr) {
		if err := h.LinkSetHardwareAddr(eth0, mac); err != nil {
			t.Fatal(err)
		}
	}
	check := func(wantSpoofed bool) {
		t.Helper()
		if !arrives("172.16.0.2", "own") {
			t.Fatalf("the guest's own packet did not arrive")
		}
		if got := arrives("172.16.0.99", "forged-ip"); got != wantSpoofed {
			t.Errorf("forged source IP arrived = %v, want %v", got, wantSpoofed)
		}
		setMAC(fakeMAC)
		if got := arrives("172.16.0.2", "forged-mac"); got != wantSpoofed {
			t.Errorf("forged source MAC arrived = %v, want %v", got, wantSpoofed)
		}
		setMAC(realMAC)
	}
	check(false)

	// Without the rules and rp_filter, the same packets get out: the
	// check above could fail.
	if err := deleteRules(func(tg tag) bool { return strings.HasPrefix(tg.Kind, "spoof-") }, "test"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"all", "smol1"} {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+f+"/rp_filter", []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	check(true)
}

// TestForwardHostIP checks that a forward answers on 127.0.0.1 only by
// default, on one host address when published there, and on all with
// 0.0.0.0.
func TestForwardHostIP(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()
	w := newWorld(t)
	g := newPeerNS(t, "smol1", "172.16.0.2/24", "172.16.0.1")
	l := lease("vm-f", "smol1", 2)
	if err := Setup(ctx, l, DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	listenIn(t, g, "tcp4", ":22", "guest:")
	refused := func(p *peerNS, addr string) {
		t.Helper()
		if _, err := exchange(p, addr, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s -> %s = %v, want connection refused (not forwarded there)", who(p), addr, err)
		}
	}

	f := Forward{HostPort: 2300, GuestPort: 22, GuestIP: l.GuestIP, VMID: "vm-f"}
	if err := AddForward(ctx, f); err != nil {
		t.Fatal(err)
	}
	mustExchange(t, nil, "127.0.0.1:2300", "guest:ping")
	refused(nil, "192.0.2.1:2300")
	refused(w, "192.0.2.1:2300")

	pub := Forward{HostPort: 2301, GuestPort: 22, GuestIP: l.GuestIP, VMID: "vm-f", HostIP: netip.MustParseAddr("192.0.2.1")}
	if err := AddForward(ctx, pub); err != nil {
		t.Fatal(err)
	}
	mustExchange(t, w, "192.0.2.1:2301", "guest:ping")
	mustExchange(t, nil, "192.0.2.1:2301", "guest:ping")
	refused(nil, "127.0.0.1:2301")

	// Published on all addresses: the forward of 2300 is replaced.
	f.HostIP = netip.IPv4Unspecified()
	if err := AddForward(ctx, f); err != nil {
		t.Fatal(err)
	}
	mustExchange(t, w, "192.0.2.1:2300", "guest:ping")
	mustExchange(t, nil, "127.0.0.1:2300", "guest:ping")
	if n := countTags(ourTags(t), func(tg tag) bool { return tg.Port == 2300 }); n != len(forwardRules(f)) {
		t.Errorf("%d rules for port 2300 after replacing it, want %d", n, len(forwardRules(f)))
	}

	bad := Forward{HostPort: 2302, GuestPort: 22, GuestIP: l.GuestIP, VMID: "vm-f", HostIP: netip.MustParseAddr("198.51.100.1")}
	var fe *FieldError
	if err := AddForward(ctx, bad); !errors.As(err, &fe) || fe.Field != "HostIP" || !strings.Contains(err.Error(), "not an address of this host") {
		t.Errorf("AddForward on a foreign address = %v, want a HostIP FieldError", err)
	}
	if n := countTags(ourTags(t), func(tg tag) bool { return tg.Port == 2302 }); n != 0 {
		t.Errorf("a rejected forward left %d rules", n)
	}
}

// BenchmarkSetPolicy measures one policy change (an atomic replace of the
// VM's egress chain) with ten prefixes and two domains.
func BenchmarkSetPolicy(b *testing.B) {
	if !privileged {
		b.Skip("needs root and a private network namespace")
	}
	l := lease("vm-b", "smol1", 2)
	if err := Setup(b.Context(), l, DefaultPolicy()); err != nil {
		b.Fatal(err)
	}
	defer func() { _, _ = Cleanup(b.Context(), func(string) bool { return false }, false) }()
	var allow []string
	for i := range 10 {
		allow = append(allow, netip.AddrFrom4([4]byte{10, byte(i), 0, 0}).String()+"/16")
	}
	ps := []Policy{}
	for _, internet := range []bool{true, false} {
		p, err := ParsePolicy(internet, append(allow, "api.example.test", "*.github.com"), []string{"203.0.113.0/24"}, "")
		if err != nil {
			b.Fatal(err)
		}
		ps = append(ps, p)
	}
	b.ResetTimer()
	for i := range b.N {
		if err := SetPolicy(b.Context(), l, ps[i%2]); err != nil {
			b.Fatal(err)
		}
	}
}

// TestForgetConnections checks that ForgetConnections removes the
// conntrack entries of the connections one guest opened, and only those.
func TestForgetConnections(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()
	newWorld(t)
	g := newPeerNS(t, "smol1", "172.16.0.2/24", "172.16.0.1")
	g2 := newPeerNS(t, "smol2", "172.16.0.3/24", "172.16.0.1")
	for _, l := range []Lease{lease("vm-c", "smol1", 2), lease("vm-c2", "smol2", 3)} {
		if err := Setup(ctx, l, DefaultPolicy()); err != nil {
			t.Fatal(err)
		}
	}
	mustExchange(t, g, "203.0.113.10:80", "pub1:ping")
	mustExchange(t, g2, "203.0.113.20:80", "pub2:ping")
	one, two := netip.MustParseAddr("172.16.0.2"), netip.MustParseAddr("172.16.0.3")
	if n := flowsFrom(t, one); n == 0 {
		t.Fatal("no conntrack entry for the first guest's connection")
	}
	if err := ForgetConnections(ctx, one); err != nil {
		t.Fatal(err)
	}
	if n := flowsFrom(t, one); n != 0 {
		t.Errorf("%d conntrack entries of %v left after ForgetConnections", n, one)
	}
	if n := flowsFrom(t, two); n == 0 {
		t.Errorf("ForgetConnections(%v) also removed the entries of %v", one, two)
	}
}

// flowsFrom counts the conntrack entries of connections src opened.
func flowsFrom(t *testing.T, src netip.Addr) int {
	t.Helper()
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, syscall.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range flows {
		if a, ok := netip.AddrFromSlice(f.Forward.SrcIP); ok && a.Unmap() == src {
			n++
		}
	}
	return n
}
