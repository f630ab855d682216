package smolvm

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// ourLinks lists the links named like our TAPs in this namespace.
func ourLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "smol") {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func nftRuleset(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

func TestNetworkEndToEnd(t *testing.T) {
	h, _ := vmEnv(t)
	ctx := context.Background()
	a, err := h.New(ctx, minimalVM("net-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cfgB := minimalVM("net-b")
	cfgB.DNSServers = []string{"192.0.2.53"} // a documentation address: written, never queried
	b, err := h.New(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	na, nb := a.Info().Network, b.Info().Network
	if na.GuestIP() == nb.GuestIP() || na.TapDevice() == nb.TapDevice() {
		t.Fatalf("networks collide: %v / %v", na, nb)
	}
	// The guest's eth0 has its address and default route.
	res, _ := a.Run(ctx, "ip -4 addr show eth0; ip route")
	if !strings.Contains(res.Stdout, na.GuestIP()+"/24") || !strings.Contains(res.Stdout, "default via "+na.GatewayIP()) {
		t.Fatalf("guest network:\n%s%s", res.Stdout, res.Stderr)
	}
	if res, _ := a.Run(ctx, "cat /etc/resolv.conf"); !strings.Contains(res.Stdout, "nameserver "+na.GatewayIP()) {
		t.Fatalf("resolv.conf: %q", res.Stdout)
	}
	if res, _ := b.Run(ctx, "cat /etc/resolv.conf"); !strings.Contains(res.Stdout, "nameserver 192.0.2.53") || strings.Contains(res.Stdout, nb.GatewayIP()) {
		t.Fatalf("resolv.conf with dns_servers: %q", res.Stdout)
	}
	// The guest pings its gateway.
	if res, err := a.Run(ctx, "ping -c 1 -W 5 "+na.GatewayIP()); err != nil || !res.OK() {
		t.Fatalf("ping gateway: %+v %v", res, err)
	}
	// An HTTP server in each guest; A's is reached through an exposed port.
	for _, vm := range []*VM{a, b} {
		cmd := fmt.Sprintf("mkdir -p /www && echo hello from %s > /www/index.html && httpd -p 8080 -h /www", vm.ID())
		if res, err := vm.Run(ctx, cmd); err != nil || !res.OK() {
			t.Fatalf("httpd in %s: %+v %v", vm.ID(), res, err)
		}
	}
	hp, err := a.ExposeLocal(ctx, 8080, 0)
	if err != nil {
		t.Fatal(err)
	}
	body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", hp))
	if body != "hello from net-a\n" {
		t.Fatalf("through the exposed port: %q", body)
	}
	if ps, _ := a.Ports(ctx); len(ps) != 1 || ps[0].HostPort != hp || ps[0].GuestPort != 8080 {
		t.Fatalf("ports: %+v", ps)
	}
	// The same host port cannot be exposed twice.
	if _, err := b.ExposeLocal(ctx, 8080, hp); err == nil {
		t.Fatal("a host port was exposed twice")
	}
	// A cannot reach B, neither its HTTP server nor by ping.
	res, _ = a.Run(ctx, fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s 8080", nb.GuestIP()))
	if strings.Contains(res.Stdout, "hello") || res.ExitCode > 128 {
		t.Fatalf("A reached B: %+v", res)
	}
	if res, _ := a.Run(ctx, "ping -c 1 -W 2 "+nb.GuestIP()); res.OK() {
		t.Fatalf("A pinged B: %+v", res)
	}
	// B reaches its own server (the check above can fail for the right reason only).
	if res, _ := b.Run(ctx, "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 "+nb.GuestIP()+" 8080"); !strings.HasSuffix(res.Stdout, "hello from net-b\n") {
		t.Fatalf("B's own server: %+v", res)
	}
	if err := a.UnexposeLocal(ctx, hp); err != nil {
		t.Fatal(err)
	}
	if _, err := (&http.Client{Timeout: 2 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/", hp)); err == nil {
		t.Fatal("port still open after UnexposeLocal")
	}
	// After delete, no TAP and no rule of ours remains.
	if err := a.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if links := ourLinks(t); len(links) > 0 {
		t.Fatalf("TAPs left: %v", links)
	}
	rs := nftRuleset(t)
	for _, id := range []string{"net-a", "net-b"} {
		if strings.Contains(rs, "vm="+id) {
			t.Fatalf("rules of %s left:\n%s", id, rs)
		}
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestSSHDefaultImage logs in to the Debian image through its SSH forward
// from the namespace's localhost.
func TestSSHDefaultImage(t *testing.T) {
	h, _ := vmEnv(t)
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh client not installed")
	}
	ctx := context.Background()
	vm, err := h.New(ctx, VMConfig{VMID: "sshd-guest", Image: ImageDefault, SSHHostPort: SSHPortAuto, MemSizeMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	port := vm.Info().Network.SSHHostPort()
	if port < 2200 {
		t.Fatalf("ssh port %d", port)
	}
	argv, err := vm.SSHCommand("hostname")
	if err != nil {
		t.Fatal(err)
	}
	// Start returned once sshd answered through the forward: the first
	// try must work, as a user's immediate ssh would.
	if !vm.Info().SSHReady {
		t.Fatalf("info does not say SSH ready: %+v", vm.Info())
	}
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "sshd-guest" {
		t.Fatalf("ssh hostname: %q %v", out, err)
	}
	// The same as a user types it: ssh -p PORT root@localhost.
	argv[len(argv)-2] = "root@localhost"
	out, err = exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "sshd-guest" {
		t.Fatalf("ssh root@localhost: %q %v", out, err)
	}
	// python3 is there too.
	if res, err := vm.Run(ctx, "python3 -c 'print(6*7)'"); err != nil || res.Output() != "42" {
		t.Fatalf("python3: %+v %v", res, err)
	}
}
