package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/smolvm-go/smolvm/internal/network/netnstest"
)

// podNetns makes a "pod" network namespace as a CNI plugin would: eth0
// with 10.88.0.5/16 and a default route via 10.88.0.1, whose veth peer
// pod0 (10.88.0.1/16) is in the test's namespace, both with an overlay
// network's MTU of 1400. extra adds more addresses to eth0.
func podNetns(t *testing.T, extra ...string) netns.NsHandle {
	t.Helper()
	ns, err := netnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("pod0"); err == nil {
			netlink.LinkDel(l)
		}
		ns.Close()
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pod0"}, PeerName: "podeth0"}))
	peer, err := netlink.LinkByName("podeth0")
	must(err)
	must(netlink.LinkSetNsFd(peer, int(ns)))
	h, err := netlink.NewHandleAt(ns)
	must(err)
	defer h.Close()
	pl, err := h.LinkByName("podeth0")
	must(err)
	must(h.LinkSetName(pl, "eth0"))
	must(h.LinkSetMTU(pl, 1400))
	for _, a := range append([]string{"10.88.0.5/16"}, extra...) {
		na, _ := netlink.ParseAddr(a)
		must(h.AddrAdd(pl, na))
	}
	lo, _ := h.LinkByName("lo")
	must(h.LinkSetUp(lo))
	must(h.LinkSetUp(pl))
	must(h.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: net.ParseIP("10.88.0.1")}))
	hostSide, err := netlink.LinkByName("pod0")
	must(err)
	ha, _ := netlink.ParseAddr("10.88.0.1/16")
	must(netlink.AddrAdd(hostSide, ha))
	must(netlink.LinkSetMTU(hostSide, 1400))
	must(netlink.LinkSetUp(hostSide))
	return ns
}

// inNs runs f on a thread in ns, failing the test on error.
func inNs(t *testing.T, ns netns.NsHandle, f func() error) {
	t.Helper()
	if err := netnstest.Do(ns, f); err != nil {
		t.Fatal(err)
	}
}

// echoLog records the payload sizes of ICMP echo requests reaching this
// namespace, by source address.
type echoLog struct {
	mu   sync.Mutex
	seen map[string]bool // "src/len"
}

func (e *echoLog) saw(src string, n int) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.seen[fmt.Sprintf("%s/%d", src, n)]
}

func (e *echoLog) any(n int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for k := range e.seen {
		if strings.HasSuffix(k, fmt.Sprintf("/%d", n)) {
			out = append(out, k)
		}
	}
	return out
}

func listenEchoes(t *testing.T) *echoLog {
	t.Helper()
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e := &echoLog{seen: map[string]bool{}}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 8 && buf[0] == 8 {
				e.mu.Lock()
				e.seen[fmt.Sprintf("%s/%d", from.(*net.IPAddr).IP, n-8)] = true
				e.mu.Unlock()
			}
		}
	}()
	return e
}

func TestAttachInterfaceRefused(t *testing.T) {
	h, _ := vmEnv(t)
	ctx := context.Background()
	ns := podNetns(t, "10.88.0.6/16")
	for _, c := range []struct {
		name  string
		mod   func(*VMConfig)
		field string
		rule  string
	}{
		{"no such interface", func(c *VMConfig) { c.AttachInterface = "eth9" }, "attach_interface", "no interface"},
		{"two addresses", func(c *VMConfig) { c.AttachInterface = "eth0" }, "attach_interface", "2 IPv4 addresses"},
		{"ssh port", func(c *VMConfig) { c.AttachInterface, c.SSHHostPort = "eth0", 2222 }, "ssh_host_port", "attach_interface"},
		{"egress", func(c *VMConfig) { c.AttachInterface, c.AllowOut = "eth0", []string{"10.0.0.0/8"} }, "allow_out", "attach_interface"},
		{"no network", func(c *VMConfig) { c.AttachInterface, c.NoNetwork = "eth0", true }, "no_network", "attach_interface"},
		{"a TAP", func(c *VMConfig) { c.AttachInterface = "smol3" }, "attach_interface", "SmolVM TAP"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := minimalVM("attach-bad")
			c.mod(&cfg)
			var err error
			inNs(t, ns, func() error { _, err = h.Create(ctx, cfg); return nil })
			var ce *ConfigError
			if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != c.field || !strings.Contains(err.Error(), c.rule) {
				t.Fatalf("Create: %v; want a config error on %s mentioning %q", err, c.field, c.rule)
			}
		})
	}
	vms, _ := h.List(ctx, ListOptions{})
	if len(vms) != 0 {
		t.Fatalf("refused creates left VMs: %v", vms)
	}
}

func TestAttachInterfaceEndToEnd(t *testing.T) {
	h, _ := vmEnv(t)
	ctx := context.Background()
	ns := podNetns(t)
	var podMAC string
	inNs(t, ns, func() error {
		l, err := netlink.LinkByName("eth0")
		podMAC = l.Attrs().HardwareAddr.String()
		return err
	})
	peer, err := netlink.LinkByName("pod0")
	if err != nil {
		t.Fatal(err)
	}
	peerMAC := peer.Attrs().HardwareAddr.String()
	echoes := listenEchoes(t)

	cfg := minimalVM("attach-a")
	cfg.AttachInterface = "eth0"
	cfg.DNSServers = []string{"10.88.0.1"}
	var vm *VM
	inNs(t, ns, func() (err error) {
		if vm, err = h.Create(ctx, cfg); err != nil {
			return err
		}
		return vm.Start(ctx)
	})
	deleted := false
	defer func() {
		if !deleted {
			inNs(t, ns, func() error { return vm.Delete(context.Background()) })
		}
	}()
	n := vm.Info().Network
	if n == nil || n.GuestIP() != "10.88.0.5" || n.PrefixLen() != 16 || n.GatewayIP() != "10.88.0.1" || !strings.EqualFold(n.GuestMAC(), podMAC) {
		t.Fatalf("info network: %v; want 10.88.0.5/16 via 10.88.0.1 with MAC %s", n, podMAC)
	}
	// The guest's eth0 is the pod's: its address, MAC and MTU.
	res, err := vm.Run(ctx, "ip addr show eth0; ip route; cat /etc/resolv.conf")
	if err != nil || !strings.Contains(res.Stdout, "inet 10.88.0.5/16") || !strings.Contains(res.Stdout, podMAC) || !strings.Contains(res.Stdout, "mtu 1400") ||
		!strings.Contains(res.Stdout, "default via 10.88.0.1") || !strings.Contains(res.Stdout, "nameserver 10.88.0.1") {
		t.Fatalf("guest network (want 10.88.0.5/16, %s, mtu 1400): %v\n%s%s", podMAC, err, res.Stdout, res.Stderr)
	}
	// The pod's peer reaches the guest at the pod IP.
	if res, err := vm.Run(ctx, "mkdir -p /www && echo hello from the pod > /www/index.html && httpd -p 8080 -h /www"); err != nil || !res.OK() {
		t.Fatalf("httpd: %+v %v", res, err)
	}
	var body []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://10.88.0.5:8080/")
		if err == nil {
			body, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET http://10.88.0.5:8080/ from the pod's peer: %v", err)
		}
	}
	if string(body) != "hello from the pod\n" {
		t.Fatalf("body %q", body)
	}
	// The guest reaches its gateway (payload 11 marks the honest echo);
	// then, with the neighbour entry fresh, an echo from a forged source
	// address (22) and, with a static neighbour entry (a MAC change
	// flushes the ARP cache, and forged ARP is dropped too), one with a
	// forged source MAC (33) are sent.
	if res, err := vm.Run(ctx, "ping -c 2 -W 5 -s 11 10.88.0.1"); err != nil || !res.OK() {
		t.Fatalf("guest ping 10.88.0.1: %+v %v", res, err)
	}
	spoof := "ping -c 1 -W 5 -s 11 10.88.0.1 >/dev/null; ip addr add 10.88.0.77/16 dev eth0; ping -c 3 -W 1 -s 22 -I 10.88.0.77 10.88.0.1; ip addr del 10.88.0.77/16 dev eth0; " +
		"ip link set dev eth0 address 02:00:00:00:00:99; arp -s 10.88.0.1 " + peerMAC + "; arp -n; ping -c 3 -W 1 -s 33 10.88.0.1; arp -d 10.88.0.1; ip link set dev eth0 address " + podMAC + "; ping -c 1 -W 5 -s 11 10.88.0.1"
	res, err = vm.Run(ctx, spoof)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("spoofing attempts:\n%s%s", res.Stdout, res.Stderr)
	time.Sleep(time.Second)
	if !echoes.saw("10.88.0.5", 11) {
		t.Fatalf("the honest echoes from 10.88.0.5 were not seen on the peer side (the listener is broken): %v", echoes.any(11))
	}
	if got := echoes.any(22); len(got) > 0 {
		t.Errorf("echoes with a forged source address reached the peer: %v", got)
	}
	if got := echoes.any(33); len(got) > 0 {
		t.Errorf("echoes with a forged source MAC reached the peer: %v", got)
	}
	// The guest is still itself after the attempts (the MAC was restored).
	if res, err := vm.Run(ctx, "ping -c 1 -W 5 10.88.0.1"); err != nil || !res.OK() {
		t.Fatalf("guest ping after the attempts: %+v %v", res, err)
	}
	// A second VM cannot take the same interface.
	cfg2 := minimalVM("attach-b")
	cfg2.AttachInterface = "eth0"
	inNs(t, ns, func() error {
		vm2, err := h.Create(ctx, cfg2)
		if err != nil {
			return err
		}
		defer vm2.Delete(context.Background())
		if err := vm2.Start(ctx); err == nil || !errors.Is(err, ErrAlreadyExists) || !strings.Contains(err.Error(), "already attached") {
			return fmt.Errorf("second VM on eth0: %v; want an already-attached error", err)
		}
		return nil
	})
	// The first still works after the refused second.
	if _, err := http.Get("http://10.88.0.5:8080/"); err != nil {
		t.Fatalf("GET after the refused second VM: %v", err)
	}

	inNs(t, ns, func() error { return vm.Delete(ctx) })
	deleted = true
	inNs(t, ns, func() error {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "smol") {
				return fmt.Errorf("TAP %s left in the pod namespace", l.Attrs().Name)
			}
		}
		out, err := exec.Command("tc", "qdisc", "show", "dev", "eth0").CombinedOutput()
		if err != nil || strings.Contains(string(out), "ingress") {
			return fmt.Errorf("qdiscs of eth0 after delete: %v: %s", err, out)
		}
		out, err = exec.Command("nft", "list", "tables").CombinedOutput()
		if err != nil || strings.Contains(string(out), "netdev") {
			return fmt.Errorf("nft tables after delete: %v: %s", err, out)
		}
		return nil
	})
}

// TestAttachInterfaceOnLinkGateway attaches to a pod interface as Calico
// and Cilium make them: a /32 address and a default route via a gateway
// outside it, reached through a host route on eth0 (on the peer side the
// veth holds the gateway address and a route back to the pod's /32).
func TestAttachInterfaceOnLinkGateway(t *testing.T) {
	h, _ := vmEnv(t)
	ctx := context.Background()
	ns, err := netnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("pod0"); err == nil {
			netlink.LinkDel(l)
		}
		ns.Close()
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pod0"}, PeerName: "podeth0"}))
	peer, err := netlink.LinkByName("podeth0")
	must(err)
	must(netlink.LinkSetNsFd(peer, int(ns)))
	nh, err := netlink.NewHandleAt(ns)
	must(err)
	defer nh.Close()
	pl, err := nh.LinkByName("podeth0")
	must(err)
	must(nh.LinkSetName(pl, "eth0"))
	a32, _ := netlink.ParseAddr("10.88.7.5/32")
	must(nh.AddrAdd(pl, a32))
	must(nh.LinkSetUp(pl))
	gw := net.ParseIP("169.254.1.1")
	must(nh.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}))
	must(nh.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw}))
	host, err := netlink.LinkByName("pod0")
	must(err)
	for _, a := range []string{"169.254.1.1/32", "10.88.7.1/32"} {
		na, _ := netlink.ParseAddr(a)
		must(netlink.AddrAdd(host, na))
	}
	must(netlink.LinkSetUp(host))
	must(netlink.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: &net.IPNet{IP: net.ParseIP("10.88.7.5"), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}))

	cfg := minimalVM("attach-32")
	cfg.AttachInterface = "eth0"
	var vm *VM
	inNs(t, ns, func() (err error) {
		if vm, err = h.Create(ctx, cfg); err != nil {
			return err
		}
		return vm.Start(ctx)
	})
	defer inNs(t, ns, func() error { return vm.Delete(context.Background()) })
	if n := vm.Info().Network; n == nil || n.GuestIP() != "10.88.7.5" || n.PrefixLen() != 32 || n.GatewayIP() != "169.254.1.1" {
		t.Fatalf("info network: %v; want 10.88.7.5/32 via 169.254.1.1", n)
	}
	res, err := vm.Run(ctx, "ip addr show eth0; ip route; ping -c 2 -W 5 10.88.7.1")
	if err != nil || !res.OK() || !strings.Contains(res.Stdout, "inet 10.88.7.5/32") || !strings.Contains(res.Stdout, "default via 169.254.1.1") {
		t.Fatalf("guest with a /32 and an on-link gateway: %+v %v", res, err)
	}
	if res, err := vm.Run(ctx, "mkdir -p /www && echo on-link > /www/index.html && httpd -p 8080 -h /www"); err != nil || !res.OK() {
		t.Fatalf("httpd: %+v %v", res, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://10.88.7.5:8080/")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
			resp.Body.Close()
			if string(body) != "on-link\n" {
				t.Fatalf("body %q", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET http://10.88.7.5:8080/ from the peer: %v", err)
		}
	}
}
