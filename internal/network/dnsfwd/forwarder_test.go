package dnsfwd

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/network/netnstest"
)

// fakeDNS is the world's resolver: A records from a map, TTL 1 s, and a
// count of the questions it was asked.
type fakeDNS struct {
	mu      sync.Mutex
	records map[string]string // name (fqdn) -> IPv4
	asked   map[string]int
}

func (f *fakeDNS) set(name, ip string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records[name] = ip
}

func (f *fakeDNS) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked[name]
}

func (f *fakeDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	f.mu.Lock()
	f.asked[q.Name]++
	ip, ok := f.records[q.Name]
	f.mu.Unlock()
	if q.Name == "slow.example.test." {
		time.Sleep(time.Second)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	if !ok {
		m.Rcode = dns.RcodeNameError
	} else if q.Qtype == dns.TypeA {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.ParseIP(ip)})
	}
	_ = w.WriteMsg(m)
}

// world is the fake outside world and one guest, with its network set up.
type world struct {
	dns   *fakeDNS
	guest *peer
	lease network.Lease
}

func newTestWorld(t *testing.T) *world {
	t.Helper()
	w := newPeer(t, "ext0", "192.0.2.2/24", "", "")
	ext0, err := netlink.LinkByName("ext0")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr("192.0.2.1/24")
	if err := netlink.AddrAdd(ext0, a); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(w.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	for addr, name := range map[string]string{"203.0.113.10": "pub1", "203.0.113.20": "pub2", "169.254.169.254": "meta"} {
		a, _ := netlink.ParseAddr(addr + "/32")
		if err := h.AddrAdd(lo, a); err != nil {
			t.Fatal(err)
		}
		var ln net.Listener
		if err := netnstest.Do(w.ns, func() (err error) { ln, err = net.Listen("tcp4", addr+":80"); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, name+"\n")
				c.Close()
			}
		}()
	}
	for _, dst := range []string{"203.0.113.0/24", "169.254.169.254/32"} {
		_, n, _ := net.ParseCIDR(dst)
		if err := netlink.RouteAdd(&netlink.Route{Dst: n, Gw: net.ParseIP("192.0.2.2")}); err != nil {
			t.Fatal(err)
		}
	}
	fd := &fakeDNS{records: map[string]string{
		"www.example.test.":  "203.0.113.10",
		"api.example.test.":  "203.0.113.20",
		"meta.example.test.": "169.254.169.254",
		"slow.example.test.": "203.0.113.10",
	}, asked: map[string]int{}}
	var pc net.PacketConn
	if err := netnstest.Do(w.ns, func() (err error) { pc, err = net.ListenPacket("udp4", "192.0.2.2:53"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: fd}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })

	g := newPeer(t, "smol1", "172.16.0.2/24", "AA:FC:00:00:00:02", "172.16.0.1")
	l := network.Lease{VMID: "vm-d", TAP: "smol1", MAC: "AA:FC:00:00:00:02",
		GuestIP: netip.MustParseAddr("172.16.0.2"), Gateway: netip.MustParseAddr("172.16.0.1"), PrefixLen: 24}
	if err := network.Setup(t.Context(), l, network.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := network.Cleanup(context.Background(), func(string) bool { return false }, false); err != nil {
			t.Error(err)
		}
	})
	return &world{dns: fd, guest: g, lease: l}
}

// query asks the guest's resolver (its gateway) for name's A record.
func (w *world) query(t *testing.T, name string) (rcode int, addrs []string) {
	t.Helper()
	rcode, addrs, err := w.tryQuery(name)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return rcode, addrs
}

// tryQuery is query that returns its error (e.g. nothing listens yet).
func (w *world) tryQuery(name string) (rcode int, addrs []string, err error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	var resp *dns.Msg
	err = netnstest.Do(w.guest.ns, func() (err error) {
		resp, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, "172.16.0.1:53")
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			addrs = append(addrs, a.A.String())
		}
	}
	return resp.Rcode, addrs, nil
}

func (w *world) mustResolve(t *testing.T, name, want string) {
	t.Helper()
	rcode, addrs := w.query(t, name)
	if rcode != dns.RcodeSuccess || len(addrs) != 1 || addrs[0] != want {
		t.Fatalf("resolve %s = %s %v, want %s", name, dns.RcodeToString[rcode], addrs, want)
	}
}

func (w *world) mustRefuse(t *testing.T, name string) {
	t.Helper()
	if rcode, addrs := w.query(t, name); rcode != dns.RcodeRefused {
		t.Fatalf("resolve %s = %s %v, want REFUSED", name, dns.RcodeToString[rcode], addrs)
	}
}

// connect reports what the world's server at ip:80 says to the guest, or
// "" if the guest cannot reach it.
func (w *world) connect(ip string) string {
	var c net.Conn
	if err := netnstest.Do(w.guest.ns, func() (err error) { c, err = net.DialTimeout("tcp", ip+":80", 700*time.Millisecond); return err }); err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

func (w *world) setPolicy(t *testing.T, f *Forwarder, p network.Policy) {
	t.Helper()
	if err := network.SetPolicy(t.Context(), w.lease, p); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVM(VM{ID: w.lease.VMID, GuestIP: w.lease.GuestIP, Gateway: w.lease.Gateway, Policy: p}); err != nil {
		t.Fatal(err)
	}
}

func policy(t *testing.T, internet bool, allow, deny []string) network.Policy {
	t.Helper()
	p, err := network.ParsePolicy(internet, allow, deny, "")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestForwarder runs a guest against the fake world through the forwarder:
// default policy, internet off with one allowed name (whose address moves),
// wildcard rebinding to the metadata address, deny-out, queries from
// strangers, and the bound on concurrent queries.
func TestForwarder(t *testing.T) {
	needNetNS(t)
	w := newTestWorld(t)
	f, err := New(Config{Upstreams: []string{"192.0.2.2:53"}, TTLFloor: time.Second, MaxInflightPerVM: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w.setPolicy(t, f, network.DefaultPolicy())

	// Default: names resolve; public reachable, metadata not.
	w.mustResolve(t, "www.example.test", "203.0.113.10")
	if got := w.connect("203.0.113.10"); got != "pub1" {
		t.Errorf("guest -> public www: %q, want pub1", got)
	}
	w.mustResolve(t, "meta.example.test", "169.254.169.254")
	if got := w.connect("169.254.169.254"); got != "" {
		t.Errorf("guest reached the metadata address: %q", got)
	}

	// Internet off, allow-out api.example.test: only that name resolves,
	// other names never leave the host, only its address answers.
	w.setPolicy(t, f, policy(t, false, []string{"api.example.test"}, nil))
	before := w.dns.count("www.example.test.")
	w.mustRefuse(t, "www.example.test")
	w.mustRefuse(t, "exfil-secret.attacker.test")
	if n := w.dns.count("www.example.test.") + w.dns.count("exfil-secret.attacker.test."); n != before {
		t.Errorf("refused names were asked upstream (%d more times)", n-before)
	}
	if got := w.connect("203.0.113.20"); got != "" {
		t.Errorf("guest reached api's address before resolving it: %q", got)
	}
	w.mustResolve(t, "api.example.test", "203.0.113.20")
	if got := w.connect("203.0.113.20"); got != "pub2" {
		t.Errorf("guest -> resolved api: %q, want pub2", got)
	}
	if got := w.connect("203.0.113.10"); got != "" {
		t.Errorf("guest reached www's address with internet off: %q", got)
	}

	// The record moves: access moves with it once the old TTL has run out.
	w.dns.set("api.example.test.", "203.0.113.10")
	time.Sleep(1100 * time.Millisecond) // the cached answer's TTL (1 s)
	w.mustResolve(t, "api.example.test", "203.0.113.10")
	if got := w.connect("203.0.113.10"); got != "pub1" {
		t.Errorf("guest -> api's new address: %q, want pub1", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for w.connect("203.0.113.20") != "" {
		if time.Now().After(deadline) {
			t.Fatal("api's old address still reachable 5 s after its record moved")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A wildcard whose names resolve to the metadata address opens nothing.
	w.setPolicy(t, f, policy(t, false, []string{"*.example.test"}, nil))
	w.mustResolve(t, "meta.example.test", "169.254.169.254")
	if got := w.connect("169.254.169.254"); got != "" {
		t.Errorf("DNS rebinding opened the metadata address: %q", got)
	}

	// Deny-out wins: the name is refused and its address dropped.
	w.setPolicy(t, f, policy(t, true, nil, []string{"www.example.test"}))
	w.dns.set("www.example.test.", "203.0.113.20")
	w.mustRefuse(t, "www.example.test")
	if got := w.connect("203.0.113.20"); got != "" {
		t.Errorf("guest reached a denied name's address: %q", got)
	}
	w.mustResolve(t, "api.example.test", "203.0.113.10")

	// Strangers: the host itself is no guest.
	m := new(dns.Msg)
	m.SetQuestion("api.example.test.", dns.TypeA)
	resp, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, "172.16.0.1:53")
	if err != nil || resp.Rcode != dns.RcodeRefused {
		t.Errorf("query from the host = %v, %v; want REFUSED", resp, err)
	}

	// TCP works too.
	m.SetQuestion("api.example.test.", dns.TypeA)
	err = netnstest.Do(w.guest.ns, func() (err error) {
		resp, _, err = (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(m, "172.16.0.1:53")
		return err
	})
	if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("TCP query = %v, %v", resp, err)
	}

	// At most 4 queries of the VM at once: the rest fail fast.
	var servfail atomic.Int32
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			m := new(dns.Msg)
			m.SetQuestion("slow.example.test.", dns.TypeA)
			_ = netnstest.Do(w.guest.ns, func() error {
				r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, "172.16.0.1:53")
				if err == nil && r.Rcode == dns.RcodeServerFailure {
					servfail.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	if n := servfail.Load(); n < 8 {
		t.Errorf("%d of 12 concurrent queries got SERVFAIL with 4 allowed at once, want at least 8", n)
	}
}

// TestForwarderLatency measures what the forwarder adds to a query: the
// guest asking through it (cached, allowed name, so the nftables set is
// refreshed each time) against the host asking the upstream directly.
func TestForwarderLatency(t *testing.T) {
	needNetNS(t)
	w := newTestWorld(t)
	f, err := New(Config{Upstreams: []string{"192.0.2.2:53"}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w.setPolicy(t, f, policy(t, false, []string{"api.example.test"}, nil))
	w.dns.mu.Lock()
	w.dns.records["long.example.test."] = "203.0.113.20"
	w.dns.mu.Unlock()
	const n = 200
	measure := func(ns func(func() error) error, server, name string) time.Duration {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		var d time.Duration
		err := ns(func() error {
			c := &dns.Client{Timeout: 2 * time.Second}
			conn, err := c.Dial(server)
			if err != nil {
				return err
			}
			defer conn.Close()
			start := time.Now()
			for range n {
				if _, _, err := c.ExchangeWithConn(m, conn); err != nil {
					return err
				}
			}
			d = time.Since(start) / n
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	here := func(f func() error) error { return f() }
	inGuest := func(f func() error) error { return netnstest.Do(w.guest.ns, f) }
	direct := measure(here, "192.0.2.2:53", "api.example.test.")
	through := measure(inGuest, "172.16.0.1:53", "api.example.test.")
	t.Logf("per query: %v direct to the upstream, %v through the forwarder (cached answer + nftables set refresh): %v added",
		direct, through, through-direct)
}

// TestSupervisor runs Serve as its own process through Start,
// checks that it serves a VM written to its directory, applies a changed
// policy, and exits once no VM is left.
func TestSupervisor(t *testing.T) {
	needNetNS(t)
	w := newTestWorld(t)
	dir := tempDir(t)
	vm := VM{ID: "vm-d", GuestIP: w.lease.GuestIP, Gateway: w.lease.Gateway, Policy: network.DefaultPolicy()}
	if err := WriteVM(dir, vm); err != nil {
		t.Fatal(err)
	}
	start := func() {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), serveEnv+"="+dir)
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		wait, err := Start(dir, cmd)
		if err == nil {
			err = wait(t.Context())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	start()
	pid, running, err := Running(dir)
	if err != nil || !running || pid == 0 || pid == os.Getpid() {
		t.Fatalf("Running = %d, %v, %v; want the supervisor's pid", pid, running, err)
	}
	start() // a second call finds it running
	if pid2, _, _ := Running(dir); pid2 != pid {
		t.Errorf("second Start started another supervisor (%d, was %d)", pid2, pid)
	}

	// Running means the lock is held; the listeners follow within moments.
	waitFor(t, "the supervisor answers", func() bool {
		rc, _, err := w.tryQuery("www.example.test")
		return err == nil && rc == dns.RcodeSuccess
	})

	vm.Policy = policy(t, false, []string{"api.example.test"}, nil)
	if err := network.SetPolicy(t.Context(), w.lease, vm.Policy); err != nil {
		t.Fatal(err)
	}
	if err := WriteVM(dir, vm); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new policy applies", func() bool { rc, _ := w.query(t, "www.example.test"); return rc == dns.RcodeRefused })
	w.mustResolve(t, "api.example.test", "203.0.113.20")
	if got := w.connect("203.0.113.20"); got != "pub2" {
		t.Errorf("guest -> api through the supervisor's sets: %q", got)
	}

	if err := RemoveVM(dir, vm.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the supervisor exits", func() bool { _, running, _ := Running(dir); return !running })
	if ids, _ := ListVMs(dir); len(ids) != 0 {
		t.Errorf("VM files left: %v", ids)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	empty := dir + "/resolv.conf"
	os.WriteFile(empty, []byte("search example\n"), 0o600)
	for _, cfg := range []Config{
		{ResolvConf: dir + "/missing"},
		{ResolvConf: empty},
		{Upstreams: []string{"resolver.example:53"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	os.WriteFile(empty, []byte("nameserver 192.0.2.53\nnameserver 198.51.100.53\n"), 0o600)
	f, err := New(Config{ResolvConf: empty})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.cfg.Upstreams, ","); got != "192.0.2.53:53,198.51.100.53:53" {
		t.Errorf("upstreams from resolv.conf = %s", got)
	}
	if err := WriteVM(dir, VM{ID: "../x"}); err == nil {
		t.Error("WriteVM accepted an id with a slash")
	}
	if err := WriteVM(dir, VM{ID: "x", GuestIP: netip.MustParseAddr("172.16.0.2"), Gateway: netip.MustParseAddr("172.16.0.1"),
		Policy: network.Policy{AllowOut: []network.Rule{{Domain: "Bad..x"}}}}); err == nil || !strings.Contains(err.Error(), "AllowOut[0]") {
		t.Errorf("WriteVM with a bad policy = %v, want an error naming AllowOut[0]", err)
	}
}

func TestCacheBounded(t *testing.T) {
	c := newCache(8)
	now := time.Now()
	for i := range 100 {
		c.put(cacheKey{name: strings.Repeat("a", i%50) + ".", qtype: uint16(i)}, &answer{got: now, expires: now.Add(time.Minute)})
	}
	if n := c.len(); n != 8 {
		t.Errorf("cache holds %d entries, want 8", n)
	}
	k := cacheKey{name: "x.", qtype: 1}
	c.put(k, &answer{got: now, expires: now.Add(time.Second)})
	if c.get(k, now) == nil || c.get(k, now.Add(2*time.Second)) != nil {
		t.Error("cache entry not served before, or served after, its expiry")
	}
}
