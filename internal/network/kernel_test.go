package network

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/network/netnstest"
)

func netipAddr(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }

func TestSetupTeardown(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()
	l := lease("vm-a", "smol0", 2)

	if err := Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	// A fresh namespace's loopback is down; forwards on 127.0.0.1 need it.
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(lo); err != nil {
		t.Fatal(err)
	}
	if err := Setup(ctx, l, DefaultPolicy()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if lo, err = netlink.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("Setup left lo down (%v)", err)
	}

	link, err := netlink.LinkByName("smol0")
	if err != nil {
		t.Fatal(err)
	}
	tap, ok := link.(*netlink.Tuntap)
	if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
		t.Fatalf("smol0 is %T (%s), want a TAP", link, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("smol0 is not up")
	}
	if link.Attrs().Alias != "smolvm vm=vm-a" {
		t.Errorf("alias = %q", link.Attrs().Alias)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "172.16.0.1/32" {
		t.Errorf("smol0 addresses = %v, want 172.16.0.1/32", addrs)
	}
	routes, err := netlink.RouteGet(net.ParseIP("172.16.0.2"))
	if err != nil || len(routes) == 0 || routes[0].LinkIndex != link.Attrs().Index {
		t.Errorf("route to the guest = %v, %v; want via smol0", routes, err)
	}
	for path, want := range map[string]string{
		"/proc/sys/net/ipv4/ip_forward":                "1",
		"/proc/sys/net/ipv4/conf/all/route_localnet":   "1",
		"/proc/sys/net/ipv4/conf/smol0/route_localnet": "1",
		"/proc/sys/net/ipv6/conf/smol0/disable_ipv6":   "1",
	} {
		b, err := os.ReadFile(path)
		if err != nil && strings.Contains(path, "ipv6") {
			continue
		}
		if got := strings.TrimSpace(string(b)); err != nil || got != want {
			t.Errorf("%s = %q, %v; want %s", path, got, err, want)
		}
	}

	tags := ourTags(t)
	vmA := func(tg tag) bool { return tg.VM == "vm-a" }
	if n := countTags(tags, vmA); n != len(vmRules(l)) {
		t.Errorf("%d rules tagged vm-a, want %d: %v", n, len(vmRules(l)), tags)
	}
	if n := countTags(tags, func(tg tag) bool { return tg.VM == "" }); n != len(sharedRules()) {
		t.Errorf("%d shared rules, want %d", n, len(sharedRules()))
	}
	if rs := nftRuleset(t); rs != "" {
		for _, want := range []string{
			"table ip smolvm",
			"type nat hook prerouting priority dstnat; policy accept;",
			"type nat hook output priority -100; policy accept;",
			"type nat hook postrouting priority srcnat; policy accept;",
			"type filter hook forward priority filter; policy accept;",
			`ip saddr 172.16.0.2 oifname != "smol*" masquerade comment "smolvm vm=vm-a kind=masq-out"`,
			`oifname "smol0" ip saddr 127.0.0.0/8 masquerade comment "smolvm vm=vm-a kind=masq-local"`,
			`iifname "smol0" ip daddr 172.16.0.1 udp dport 53 accept comment "smolvm vm=vm-a kind=in-dns-udp"`,
			`iifname "smol*" oifname "smol*" drop comment "smolvm kind=fwd-vm2vm"`,
			`iifname "smol*" ct state established,related accept comment "smolvm kind=in-established"`,
			`iifname != "lo" ip daddr 127.0.0.0/8 ct state ! established,related drop comment "smolvm kind=localnet-guard"`,
			"table ip6 smolvm",
		} {
			if !strings.Contains(rs, want) {
				t.Errorf("ruleset lacks %q:\n%s", want, rs)
			}
		}
		// Per-VM accepts come before the shared drop.
		if i, j := strings.Index(rs, "kind=in-icmp"), strings.Index(rs, "kind=in-drop"); i < 0 || j < i {
			t.Errorf("in-icmp (at %d) must come before in-drop (at %d)", i, j)
		}
	}

	// Setup again: the same rules, no duplicates.
	before := ourTags(t)
	if err := Setup(ctx, l, DefaultPolicy()); err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	after := ourTags(t)
	if !slices.Equal(before, after) {
		t.Errorf("Setup twice changed the rules:\nbefore %v\nafter  %v", before, after)
	}

	if err := AddForward(ctx, Forward{HostPort: 2222, GuestPort: 22, GuestIP: l.GuestIP, VMID: "vm-a", HostIP: netip.IPv4Unspecified()}); err != nil {
		t.Fatalf("AddForward: %v", err)
	}
	if rs := nftRuleset(t); rs != "" {
		for _, want := range []string{
			`iifname != "smol*" fib daddr type local tcp dport 2222 dnat to 172.16.0.2:22 comment "smolvm vm=vm-a kind=dnat-pre port=2222"`,
			`fib daddr type local tcp dport 2222 dnat to 172.16.0.2:22 comment "smolvm vm=vm-a kind=dnat-out port=2222"`,
			`iifname != "smol*" ip daddr 172.16.0.2 tcp dport 22 ct status dnat accept comment "smolvm vm=vm-a kind=fwd-dnat port=2222"`,
			`ip6 daddr ::1 tcp dport 2222 reject with tcp reset comment "smolvm vm=vm-a kind=v6lo-reject port=2222"`,
		} {
			if !strings.Contains(rs, want) {
				t.Errorf("ruleset lacks %q:\n%s", want, rs)
			}
		}
	}

	// A second VM keeps its rules when the first goes.
	if err := Setup(ctx, lease("vm-b", "smol1", 3), DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	for range 2 { // Teardown is idempotent
		if err := Teardown(ctx, l); err != nil {
			t.Fatalf("Teardown: %v", err)
		}
	}
	if _, err := netlink.LinkByName("smol0"); err == nil {
		t.Errorf("smol0 still exists after Teardown")
	}
	tags = ourTags(t)
	if n := countTags(tags, vmA); n != 0 {
		t.Errorf("%d rules of vm-a left after Teardown: %v", n, tags)
	}
	if n := countTags(tags, func(tg tag) bool { return tg.VM == "vm-b" }); n != len(vmRules(l)) {
		t.Errorf("Teardown of vm-a left %d rules of vm-b, want %d", n, len(vmRules(l)))
	}
	if rs := nftRuleset(t); strings.Contains(rs, "vm-a") {
		t.Errorf("ruleset still mentions vm-a:\n%s", rs)
	}
}

func TestSetupRejectsOtherLinkTypes(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	if err := createTAP("smol7", unix.IFF_TUN); err != nil {
		t.Fatal(err)
	}
	err := Setup(t.Context(), lease("vm-x", "smol7", 9), DefaultPolicy())
	if err == nil || !strings.Contains(err.Error(), "smol7") || !strings.Contains(err.Error(), "not a TAP") {
		t.Fatalf("Setup over a dummy link = %v, want an error naming smol7", err)
	}
	if _, err := netlink.LinkByName("smol7"); err != nil {
		t.Errorf("Setup removed a link it did not create: %v", err)
	}
}

func TestCleanup(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()
	for i, vm := range []string{"keep-me", "orphan"} {
		l := lease(vm, "smol"+string(rune('1'+i)), byte(2+i))
		if err := Setup(ctx, l, DefaultPolicy()); err != nil {
			t.Fatal(err)
		}
		if err := AddForward(ctx, Forward{HostPort: uint16(3000 + i), GuestPort: 22, GuestIP: l.GuestIP, VMID: vm}); err != nil {
			t.Fatal(err)
		}
	}
	// A TAP of ours without an owner, and a link that is not ours.
	if err := createTAP("smol9", unix.IFF_TAP); err != nil {
		t.Fatal(err)
	}
	if err := createTAP("smolx", unix.IFF_TAP); err != nil {
		t.Fatal(err)
	}
	defer deleteLink("smolx")

	keepMe := func(id string) bool { return id == "keep-me" }
	want := []string{"link smol2 (vm orphan)", "link smol9", "rules of vm orphan"}
	// A dry run lists the same and removes nothing.
	tagsBefore := len(ourTags(t))
	dry, err := Cleanup(ctx, keepMe, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dry, want) {
		t.Errorf("dry-run Cleanup listed %q, want %q", dry, want)
	}
	if links, _ := ourLinks(); len(links) != 3 || len(ourTags(t)) != tagsBefore {
		t.Errorf("dry-run Cleanup changed something: links %v, %d rules (had %d)", links, len(ourTags(t)), tagsBefore)
	}
	removed, err := Cleanup(ctx, keepMe, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, want) {
		t.Errorf("Cleanup removed %q, want %q", removed, want)
	}
	links, _ := ourLinks()
	if _, ok := links["smol1"]; !ok || len(links) != 1 {
		t.Errorf("links after Cleanup = %v, want only smol1", links)
	}
	if _, err := netlink.LinkByName("smolx"); err != nil {
		t.Errorf("Cleanup removed smolx, which is not named like ours")
	}
	tags := ourTags(t)
	if n := countTags(tags, func(tg tag) bool { return tg.VM == "orphan" }); n != 0 {
		t.Errorf("%d rules of the orphan left", n)
	}
	if n := countTags(tags, func(tg tag) bool { return tg.VM == "keep-me" }); n != len(vmRules(testLease))+len(forwardRules(Forward{HostPort: 3000, GuestPort: 22, VMID: "keep-me", GuestIP: testLease.GuestIP})) {
		t.Errorf("%d rules of keep-me left, want all", n)
	}

	// Nothing kept: the tables go.
	removed, err = Cleanup(ctx, func(string) bool { return false }, false)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"link smol1 (vm keep-me)", "rules of vm keep-me", "table ip smolvm", "table ip6 smolvm"}
	if !slices.Equal(removed, want) {
		t.Errorf("second Cleanup removed %q, want %q", removed, want)
	}
	// And again: nothing to do.
	if removed, err := Cleanup(ctx, func(string) bool { return false }, false); err != nil || len(removed) != 0 {
		t.Errorf("third Cleanup = %q, %v; want nothing", removed, err)
	}
}

func TestAddForwardPortInUse(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()
	l := lease("vm-p", "smol3", 4)
	if err := Setup(ctx, l, DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	err = AddForward(ctx, Forward{HostPort: port, GuestPort: 22, GuestIP: l.GuestIP, VMID: "vm-p"})
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "port "+strconv.Itoa(int(port))) {
		t.Fatalf("AddForward on a bound port = %v, want ErrPortInUse naming port %d", err, port)
	}

	// Forwarded to another VM already.
	f := Forward{HostPort: 4000, GuestPort: 22, GuestIP: l.GuestIP, VMID: "vm-p"}
	if err := AddForward(ctx, f); err != nil {
		t.Fatal(err)
	}
	if err := AddForward(ctx, f); err != nil { // same forward: no-op
		t.Fatalf("AddForward twice: %v", err)
	}
	if n := countTags(ourTags(t), func(tg tag) bool { return tg.Port == 4000 }); n != len(forwardRules(f)) {
		t.Errorf("%d rules for port 4000 after adding it twice, want %d", n, len(forwardRules(f)))
	}
	other := Forward{HostPort: 4000, GuestPort: 22, GuestIP: netipAddr(172, 16, 0, 9), VMID: "vm-q"}
	if err := AddForward(ctx, other); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "4000") {
		t.Fatalf("AddForward of a port forwarded to another VM = %v, want ErrPortInUse", err)
	}
	if err := RemoveForward(ctx, f); err != nil {
		t.Fatal(err)
	}
	if err := RemoveForward(ctx, f); err != nil {
		t.Fatalf("RemoveForward twice: %v", err)
	}
	if n := countTags(ourTags(t), func(tg tag) bool { return tg.Port == 4000 }); n != 0 {
		t.Errorf("%d rules for port 4000 after RemoveForward", n)
	}
}

// TestForwardTraffic stands a namespace behind a veth named like a TAP in
// for a VM, and checks real connections through a forward: from 127.0.0.1
// and the host's own address (output DNAT), from another host (prerouting
// DNAT), the guest's egress masquerade, IPv6 loopback, and removal.
func TestForwardTraffic(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()

	// Another host on 192.0.2.0/24 (TEST-NET-1, inside our namespaces only).
	ext := newPeerNS(t, "ext0", "192.0.2.2/24", "")
	if err := netlink.AddrAdd(mustLink(t, "ext0"), mustAddr(t, "192.0.2.1/24")); err != nil {
		t.Fatal(err)
	}
	guest := newPeerNS(t, "smol1", "172.16.0.2/24", "172.16.0.1")
	l := lease("vm-t", "smol1", 2)
	if err := Setup(ctx, l, DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	listenIn(t, guest, "tcp4", ":22", "guest:")
	f := Forward{HostPort: 2222, GuestPort: 22, GuestIP: l.GuestIP, VMID: "vm-t", HostIP: netip.IPv4Unspecified()}
	if err := AddForward(ctx, f); err != nil {
		t.Fatal(err)
	}

	mustExchange(t, nil, "127.0.0.1:2222", "guest:ping") // localhost, output DNAT
	mustExchange(t, nil, "192.0.2.1:2222", "guest:ping") // own address, output DNAT
	mustExchange(t, ext, "192.0.2.1:2222", "guest:ping") // other host, prerouting DNAT
	mustExchange(t, nil, "172.16.0.2:22", "guest:ping")  // the host reaches its guest directly

	// Egress: the other host has no route back to 172.16.0.0/16, so this
	// works only masqueraded; the server sees the host's address.
	var srcSeen string
	var extLn net.Listener
	if err := netnstest.Do(ext.ns, func() (err error) { extLn, err = net.Listen("tcp4", "192.0.2.2:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer extLn.Close()
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		c, err := extLn.Accept()
		if err != nil {
			return
		}
		srcSeen = c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Write([]byte("ext:ping\n"))
		c.Close()
	}()
	var c net.Conn
	if err := netnstest.Do(guest.ns, func() (err error) { c, err = net.DialTimeout("tcp", "192.0.2.2:8080", 5*time.Second); return err }); err != nil {
		t.Fatalf("guest -> other host: %v", err)
	}
	c.Close()
	<-accepted
	if srcSeen != "192.0.2.1" {
		t.Errorf("other host saw the guest's connection from %s, want the host's 192.0.2.1 (masquerade)", srcSeen)
	}

	// IPv6 loopback: refused at once, even with something listening on
	// [::1]:2222, so clients resolving localhost to ::1 fall back to 127.0.0.1.
	if hasIPv6Loopback() {
		ln6, err := net.Listen("tcp6", "[::1]:2222")
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, ln6, "impostor:")
		start := time.Now()
		_, err = exchange(nil, "[::1]:2222", 2*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("[::1]:2222 = %v, want connection refused", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("[::1]:2222 took %v to fail", d)
		}
		// A client given "localhost" (::1 first in /etc/hosts here) falls
		// back to 127.0.0.1 and reaches the guest, not the impostor.
		if addrs, _ := net.LookupHost("localhost"); slices.Contains(addrs, "::1") {
			mustExchange(t, nil, "localhost:2222", "guest:ping")
		}
		ln6.Close()
	} else {
		t.Log("no IPv6 loopback here: IPv6 checks skipped")
	}

	if err := RemoveForward(ctx, f); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*peerNS{nil, ext} {
		addr := "127.0.0.1:2222"
		if p != nil {
			addr = "192.0.2.1:2222"
		}
		if _, err := exchange(p, addr, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s -> %s after RemoveForward: %v, want connection refused", who(p), addr, err)
		}
	}
}

// TestIsolation checks that guests reach neither each other nor the host,
// except through the documented exceptions, and that other hosts reach a
// guest only through a forward.
func TestIsolation(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := t.Context()

	ext := newPeerNS(t, "ext0", "192.0.2.2/24", "")
	if err := netlink.AddrAdd(mustLink(t, "ext0"), mustAddr(t, "192.0.2.1/24")); err != nil {
		t.Fatal(err)
	}
	ext.addRoute(t, "172.16.0.0/16", "192.0.2.1") // as if the LAN routed guests' addresses here
	g1 := newPeerNS(t, "smol1", "172.16.0.2/24", "172.16.0.1")
	g2 := newPeerNS(t, "smol2", "172.16.0.3/24", "172.16.0.1")
	// Without these, each guest would ARP for the other on its own link
	// (they share a /24) and never send through the host.
	g1.addRoute(t, "172.16.0.3/32", "172.16.0.1")
	g2.addRoute(t, "172.16.0.2/32", "172.16.0.1")
	for i, g := range []*peerNS{g1, g2} {
		if err := Setup(ctx, lease("vm-"+g.name, g.name, byte(2+i)), DefaultPolicy()); err != nil {
			t.Fatal(err)
		}
	}
	listenIn(t, g2, "tcp4", ":80", "g2:")
	listenIn(t, nil, "tcp4", ":8081", "host:") // a host service
	listenIn(t, nil, "tcp4", ":53", "dns:")    // the guests' resolver
	if err := AddForward(ctx, Forward{HostPort: 2223, GuestPort: 80, GuestIP: netipAddr(172, 16, 0, 3), VMID: "vm-smol2", HostIP: netip.IPv4Unspecified()}); err != nil {
		t.Fatal(err)
	}

	// What must work (also proves the paths exist).
	mustExchange(t, nil, "172.16.0.3:80", "g2:ping")
	mustExchange(t, nil, "127.0.0.1:2223", "g2:ping")
	mustExchange(t, ext, "192.0.2.1:2223", "g2:ping")
	mustExchange(t, ext, "192.0.2.1:8081", "host:ping")
	mustExchange(t, g1, "172.16.0.1:53", "dns:ping") // exception: DNS to the gateway

	// What must not.
	mustBlock(t, g1, "172.16.0.3:80")   // guest -> guest
	mustBlock(t, g1, "172.16.0.1:2223") // guest -> guest through the other's forward
	mustBlock(t, g1, "192.0.2.1:2223")  // same, through another host address
	mustBlock(t, g1, "172.16.0.1:8081") // guest -> host service on the gateway
	mustBlock(t, g1, "192.0.2.1:8081")  // guest -> host service on another address
	mustBlock(t, g1, "192.0.2.1:53")    // DNS only on the gateway address
	mustBlock(t, g1, "127.0.0.1:8081")  // sanity: the guest's own loopback has nothing
	mustBlock(t, ext, "172.16.0.3:80")  // other host -> guest directly, not forwarded

	// The forward chain's drops are what block guest -> guest: without
	// them (both drop new connections between guests), g1 reaches g2.
	if err := deleteRules(func(tg tag) bool { return tg.Kind == kindFwdVMToVM || tg.Kind == kindFwdDrop }, "test"); err != nil {
		t.Fatal(err)
	}
	mustExchange(t, g1, "172.16.0.3:80", "g2:ping")
	if err := Setup(ctx, lease("vm-smol1", "smol1", 2), DefaultPolicy()); err != nil { // restores the shared rules
		t.Fatal(err)
	}
	mustBlock(t, g1, "172.16.0.3:80")
}

// TestQEMUAttachesToTAP checks that QEMU opens the TAP Setup made, with and
// without vnet_hdr.
func TestQEMUAttachesToTAP(t *testing.T) {
	needNetNS(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	t.Cleanup(func() { cleanAll(t) })
	if err := Setup(t.Context(), lease("vm-q", "smol5", 6), DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	for _, opt := range []string{"", ",vnet_hdr=on", ",vnet_hdr=off"} {
		t.Run("netdev"+opt, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, qemu, "-M", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S",
				"-netdev", "tap,id=n0,ifname=smol5,script=no,downscript=no"+opt)
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			defer func() {
				select {
				case <-waited: // already exited and reaped
				default:
					cmd.Process.Kill() // our own child, not yet reaped
					<-waited
				}
			}()
			// Attached: the TAP gets a carrier once QEMU holds it open.
			deadline := time.Now().Add(15 * time.Second)
			for {
				l, err := netlink.LinkByName("smol5")
				if err != nil {
					t.Fatal(err)
				}
				if l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("QEMU did not attach to smol5 in 15s")
				}
				select {
				case err := <-waited:
					waited <- err
					t.Fatalf("QEMU exited (%v) without attaching: %s", err, stderr.String())
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
}

func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustAddr(t *testing.T, s string) *netlink.Addr {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
