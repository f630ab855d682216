package network

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/smolvm-go/smolvm/internal/network/netnstest"
)

// peerNS is a network namespace, inside the test namespace, standing in for
// a guest (behind a veth named like a TAP) or for another host.
type peerNS struct {
	name string // name of the host side of the veth
	ns   netns.NsHandle
}

// newPeerNS makes a namespace joined to this one by a veth pair: hostIf on
// this side, eth0 with addr (CIDR) on the other, with a default route via
// gw unless gw is empty. The namespace and the veth are removed when t ends.
func newPeerNS(t *testing.T, hostIf, addr, gw string) *peerNS {
	t.Helper()
	ns, err := netnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	p := &peerNS{name: hostIf, ns: ns}
	t.Cleanup(func() {
		_ = deleteLink(hostIf) // takes the peer with it
		ns.Close()             // the namespace goes with its last reference
	})
	peer := hostIf + "p"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: peer}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", hostIf, err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := netlink.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(pl, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	pl, err = h.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(hostIf, TAPPrefix) {
		// A stand-in guest has the MAC that lease() gives its address, so
		// that the anti-spoofing rules let it through.
		mac, _ := net.ParseMAC(fmt.Sprintf("AA:FC:00:00:00:%02X", a.IP.To4()[3]))
		if err := h.LinkSetHardwareAddr(pl, mac); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []error{
		h.LinkSetUp(lo),
		h.LinkSetName(pl, "eth0"),
		h.AddrAdd(pl, a),
		h.LinkSetUp(pl),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	if gw != "" {
		r := &netlink.Route{LinkIndex: pl.Attrs().Index, Gw: net.ParseIP(gw)}
		if err := h.RouteAdd(r); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
	hl, err := netlink.LinkByName(hostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	return p
}

// addRoute adds dst (CIDR) via gw inside p.
func (p *peerNS) addRoute(t *testing.T, dst, gw string) {
	t.Helper()
	h, err := netlink.NewHandleAt(p.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{Dst: n, Gw: net.ParseIP(gw)}); err != nil {
		t.Fatalf("route %s via %s in %s's namespace: %v", dst, gw, p.name, err)
	}
}

// echoServer listens on addr and answers each line with prefix + line.
func echoServer(t *testing.T, ln net.Listener, prefix string) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, prefix+line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// listenIn listens on addr inside p's namespace (or here when p is nil) and
// serves echo with the given prefix.
func listenIn(t *testing.T, p *peerNS, network, addr, prefix string) {
	t.Helper()
	var ln net.Listener
	listen := func() (err error) { ln, err = net.Listen(network, addr); return err }
	var err error
	if p == nil {
		err = listen()
	} else {
		err = netnstest.Do(p.ns, listen)
	}
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	echoServer(t, ln, prefix)
}

// exchange connects from p's namespace (here when p is nil) to addr, sends
// a line and returns the answer.
func exchange(p *peerNS, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	dial := func() (err error) {
		// One address, no resolver: the socket is made on this thread.
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	}
	var err error
	if p == nil {
		err = dial()
	} else {
		err = netnstest.Do(p.ns, dial)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func mustExchange(t *testing.T, p *peerNS, addr, want string) {
	t.Helper()
	got, err := exchange(p, addr, 5*time.Second)
	if err != nil || got != want {
		t.Fatalf("%s -> %s: got %q, %v; want %q", who(p), addr, got, err, want)
	}
}

// mustBlock asserts that a connection from p to addr does not complete.
func mustBlock(t *testing.T, p *peerNS, addr string) {
	t.Helper()
	got, err := exchange(p, addr, 700*time.Millisecond)
	if err == nil {
		t.Fatalf("%s -> %s: connected (answer %q), want blocked", who(p), addr, got)
	}
}

func who(p *peerNS) string {
	if p == nil {
		return "host"
	}
	return p.name
}

// nftRuleset returns `nft list ruleset` of this namespace, or "" when nft is
// not installed.
func nftRuleset(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v\n%s", err, out)
	}
	return string(out)
}

// ourTags lists the tags of every rule in our tables.
func ourTags(t *testing.T) []tag {
	t.Helper()
	c, err := newConn()
	if err != nil {
		t.Fatal(err)
	}
	s, err := readState(c)
	if err != nil {
		t.Fatal(err)
	}
	var out []tag
	for _, ch := range chains {
		for _, r := range s.rules[ch] {
			if tg, ok := s.tags[r]; ok {
				out = append(out, tg)
			}
		}
	}
	return out
}

func countTags(tags []tag, match func(tag) bool) int {
	n := 0
	for _, tg := range tags {
		if match(tg) {
			n++
		}
	}
	return n
}

// cleanAll removes everything of ours from the test namespace and checks
// nothing is left.
func cleanAll(t *testing.T) {
	t.Helper()
	if _, err := Cleanup(context.Background(), func(string) bool { return false }, false); err != nil {
		t.Errorf("Cleanup: %v", err)
	}
	links, err := ourLinks()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 0 {
		t.Errorf("links left after Cleanup: %v", links)
	}
	if rs := nftRuleset(t); strings.Contains(rs, TableName) {
		t.Errorf("ruleset after Cleanup still has our tables:\n%s", rs)
	}
}

func lease(vm, tap string, guest byte) Lease {
	return Lease{
		VMID: vm, TAP: tap, MAC: fmt.Sprintf("AA:FC:00:00:00:%02X", guest),
		GuestIP:   netipAddr(172, 16, 0, guest),
		Gateway:   netipAddr(172, 16, 0, 1),
		PrefixLen: 24,
	}
}
