package smolvm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/network/dnsfwd"
	"github.com/smolvm-go/smolvm/internal/network/netnstest"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// egressVM returns a started minimal VM whose forwarder asks the fake
// world's DNS server.
func egressVM(t *testing.T, h *Host, id string, mod func(*VMConfig)) *VM {
	t.Helper()
	cfg := minimalVM(id)
	cfg.DNSUpstream = []string{vmtest.WANWorld}
	if mod != nil {
		mod(&cfg)
	}
	vm, err := h.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm
}

// fetch runs busybox wget in the guest and returns what it printed, or ""
// when it failed. A crash (exit > 128) fails the test.
func fetch(t *testing.T, vm *VM, url string) string {
	t.Helper()
	res, err := vm.Run(context.Background(), "wget -q -T 3 -O - "+url)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode > 128 {
		t.Fatalf("wget %s crashed: %+v", url, res)
	}
	if !res.OK() {
		return ""
	}
	return strings.TrimSpace(res.Stdout)
}

// resolves runs nslookup in the guest and returns the address it printed
// for name, or "".
func resolves(t *testing.T, vm *VM, name string) string {
	t.Helper()
	res, err := vm.Run(context.Background(), "nslookup "+name)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode > 128 {
		t.Fatalf("nslookup crashed: %+v", res)
	}
	_, after, ok := strings.Cut(res.Stdout, "Name:")
	if !ok {
		return ""
	}
	_, addr, _ := strings.Cut(after, "Address: ")
	return strings.TrimSpace(strings.SplitN(addr, "\n", 2)[0])
}

func eventually(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestEgressPolicyEndToEnd boots one minimal VM against a fake outside
// world and walks it through the default policy, a domain allow list that
// follows DNS, changes while it runs, published ports, bad input and
// delete.
func TestEgressPolicyEndToEnd(t *testing.T) {
	h, dir := vmEnv(t)
	w := vmtest.NewWorld(t)
	ctx := context.Background()
	vm := egressVM(t, h, "eg-a", nil)

	t.Run("default", func(t *testing.T) {
		if e := vm.Info().Egress; e == nil || !e.Internet || len(e.AllowOut) != 0 {
			t.Fatalf("default egress %+v", e)
		}
		if got := resolves(t, vm, "api.example.test"); got != vmtest.Pub1 {
			t.Fatalf("nslookup api.example.test = %q, want %s", got, vmtest.Pub1)
		}
		if got := fetch(t, vm, "http://api.example.test/"); got != "hello from "+vmtest.Pub1 {
			t.Fatalf("wget by name = %q", got)
		}
		if got := fetch(t, vm, "http://"+vmtest.Pub2+"/"); got != "hello from "+vmtest.Pub2 {
			t.Fatalf("wget by address = %q", got)
		}
		res, _ := vm.Run(ctx, fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s 80", vmtest.Pub2))
		if !strings.Contains(res.Stdout, "hello from "+vmtest.Pub2) {
			t.Fatalf("nc: %+v", res)
		}
		for _, a := range []string{vmtest.MetadataIP, vmtest.PrivateIP, vmtest.WANHost} {
			if got := fetch(t, vm, "http://"+a+"/"); got != "" {
				t.Errorf("reached %s by default: %q", a, got)
			}
		}
		// A name resolving to the metadata address does not open it.
		if got := fetch(t, vm, "http://meta.example.test/"); got != "" {
			t.Errorf("reached the metadata address by name: %q", got)
		}
	})

	t.Run("spoofing", func(t *testing.T) {
		// The guest pings from its own address (33 data bytes) and from an
		// address it added to eth0 (77 data bytes; another VM's would be
		// 172.16.0.3): only the first may leave the host.
		res, _ := vm.Run(ctx, fmt.Sprintf("ping -c 1 -W 3 -s 33 %s; ip addr add 172.16.0.77/24 dev eth0; ping -c 2 -W 2 -s 77 -I 172.16.0.77 %s; ip addr del 172.16.0.77/24 dev eth0", vmtest.Pub1, vmtest.Pub1))
		eventually(t, "the guest's own echo request arrives", 10*time.Second, func() bool { return w.SawEcho(33) })
		if w.SawEcho(77) {
			t.Fatalf("an echo request with a forged source left the host: %+v", res)
		}
	})

	t.Run("allow-domain-follows-dns", func(t *testing.T) {
		start := time.Now()
		err := vm.SetEgress(ctx, EgressPolicy{Internet: false, AllowOut: []string{"api.example.test"}})
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("SetEgress on a running VM took %v", took)
		if e := vm.Info().Egress; e.Internet || len(e.AllowOut) != 1 || e.AllowOut[0] != "api.example.test" {
			t.Fatalf("egress after set: %+v", e)
		}
		if got := resolves(t, vm, "other.example.test"); got != "" {
			t.Fatalf("a name outside the allow list resolved: %q", got)
		}
		if got := fetch(t, vm, "http://"+vmtest.Pub2+"/"); got != "" {
			t.Fatalf("internet off, yet %s answered: %q", vmtest.Pub2, got)
		}
		if got := fetch(t, vm, "http://api.example.test/"); got != "hello from "+vmtest.Pub1 {
			t.Fatalf("allowed name: %q", got)
		}
		// The record moves: access moves with it.
		w.SetRecord("api.example.test", vmtest.Pub2)
		eventually(t, "the allowed name answers from its new address", 30*time.Second, func() bool {
			return fetch(t, vm, "http://api.example.test/") == "hello from "+vmtest.Pub2
		})
		eventually(t, "the old address closes (TTL + floor)", 90*time.Second, func() bool {
			return fetch(t, vm, "http://"+vmtest.Pub1+"/") == ""
		})
		w.SetRecord("api.example.test", vmtest.Pub1)
	})

	t.Run("set-changes-running-vm", func(t *testing.T) {
		// An AllowOut prefix opens a private service; DenyOut wins.
		if err := vm.SetEgress(ctx, EgressPolicy{Internet: true, AllowOut: []string{vmtest.PrivateIP}, DenyOut: []string{vmtest.Pub2}}); err != nil {
			t.Fatal(err)
		}
		if got := fetch(t, vm, "http://"+vmtest.PrivateIP+"/"); got != "hello from "+vmtest.PrivateIP {
			t.Fatalf("allowed private service: %q", got)
		}
		if got := fetch(t, vm, "http://"+vmtest.Pub2+"/"); got != "" {
			t.Fatalf("denied address answered: %q", got)
		}
		if got := fetch(t, vm, "http://"+vmtest.Pub1+"/"); got != "hello from "+vmtest.Pub1 {
			t.Fatalf("internet on: %q", got)
		}
		if got := fetch(t, vm, "http://"+vmtest.MetadataIP+"/"); got != "" {
			t.Fatalf("metadata answered: %q", got)
		}
	})

	t.Run("bad-input", func(t *testing.T) {
		before := vm.Info().Egress
		rs := nftRuleset(t)
		for _, p := range []EgressPolicy{
			{AllowOut: []string{"10.0.0.1/33"}},
			{AllowOut: []string{"10.0.0.1/8"}},
			{DenyOut: []string{"exa mple.com"}},
			{DenyOut: []string{"*.*.example.com"}},
			{AllowOut: []string{"::1"}},
			{AllowOut: []string{"pypi.org"}, DenyOut: []string{"pypi.org"}},
			{EgressRate: "10 parsecs"},
			{EgressRate: "10"},
		} {
			err := vm.SetEgress(ctx, p)
			var ce *ConfigError
			if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) {
				t.Errorf("SetEgress(%+v) = %v, want a *ConfigError", p, err)
				continue
			}
			t.Logf("%+v: %v", p, err)
		}
		if after := vm.Info().Egress; fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("policy changed by bad input: %+v -> %+v", before, after)
		}
		if rs2 := nftRuleset(t); rs2 != rs {
			t.Errorf("ruleset changed by bad input")
		}
		for _, cfg := range []VMConfig{
			{VMID: "bad1", Image: ImageMinimal, AllowOut: []string{"300.1.1.1"}},
			{VMID: "bad2", Image: ImageMinimal, NoNetwork: true, AllowOut: []string{"pypi.org"}},
			{VMID: "bad3", Image: ImageMinimal, DNSServers: []string{"192.0.2.53"}, AllowOut: []string{"pypi.org"}},
			{VMID: "bad4", Image: ImageMinimal, DNSUpstream: []string{"resolver.example"}},
			{VMID: "bad5", Image: ImageMinimal, EgressRate: "fast"},
		} {
			if _, err := h.Create(ctx, cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Create(%s) = %v, want ErrInvalidConfig", cfg.VMID, err)
			}
		}
		if vms, _ := h.List(ctx, ListOptions{}); len(vms) != 1 {
			t.Errorf("bad creates left VMs: %d", len(vms))
		}
	})

	t.Run("forwards-on-loopback", func(t *testing.T) {
		if res, err := vm.Run(ctx, "mkdir -p /www && echo guest > /www/index.html && httpd -p 8080 -h /www"); err != nil || !res.OK() {
			t.Fatalf("httpd: %+v %v", res, err)
		}
		hp, err := vm.ExposeLocal(ctx, 8080, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", hp)); got != "guest\n" {
			t.Fatalf("127.0.0.1:%d: %q", hp, got)
		}
		cl := &http.Client{Timeout: 3 * time.Second}
		if _, err := cl.Get(fmt.Sprintf("http://%s:%d/", vmtest.WANHost, hp)); err == nil {
			t.Fatalf("a loopback forward answered on %s", vmtest.WANHost)
		}
		hp2, err := vm.ExposeOn(ctx, vmtest.WANHost, 8080, 0)
		if err != nil {
			t.Fatal(err)
		}
		// From the outside world, as a remote client would.
		var body string
		if err := netnstest.Do(w.NS, func() error {
			resp, err := cl.Get(fmt.Sprintf("http://%s:%d/", vmtest.WANHost, hp2))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b := make([]byte, 64)
			n, _ := resp.Body.Read(b)
			body = string(b[:n])
			if _, err := cl.Get(fmt.Sprintf("http://%s:%d/", vmtest.WANHost, hp)); err == nil {
				return errors.New("the loopback forward answered from outside")
			}
			return nil
		}); err != nil || body != "guest\n" {
			t.Fatalf("published forward from outside: %q %v", body, err)
		}
		ps, _ := vm.Ports(ctx)
		hosts := map[int]string{}
		for _, p := range ps {
			hosts[p.HostPort] = p.HostIP
		}
		if hosts[hp] != "127.0.0.1" || hosts[hp2] != vmtest.WANHost {
			t.Fatalf("ports: %+v", ps)
		}
		if _, err := vm.ExposeOn(ctx, "192.0.2.99", 8080, 0); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("expose on an address the host lacks: %v", err)
		}
	})

	t.Run("delete-removes-everything", func(t *testing.T) {
		fwdDir := h.forwarderDir()
		if ids, _ := dnsfwd.ListVMs(fwdDir); len(ids) != 1 || ids[0] != "eg-a" {
			t.Fatalf("forwarder serves %v", ids)
		}
		pid, alive, _ := dnsfwd.Running(fwdDir)
		if !alive || pid == 0 {
			t.Fatal("no forwarder runs")
		}
		if err := vm.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if ids, _ := dnsfwd.ListVMs(fwdDir); len(ids) != 0 {
			t.Fatalf("forwarder state left: %v", ids)
		}
		rs := nftRuleset(t)
		for _, s := range []string{"egress-eg-a", "allow-eg-a", "deny-eg-a", "vm=eg-a"} {
			if strings.Contains(rs, s) {
				t.Fatalf("%s left:\n%s", s, rs)
			}
		}
		eventually(t, "the idle forwarder exits", 30*time.Second, func() bool {
			_, alive, _ := dnsfwd.Running(fwdDir)
			return !alive
		})
		rep, err := h.Cleanup(ctx, CleanupOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("cleanup: %v", rep.Removed)
		if _, err := os.Stat(filepath.Join(dir, "dnsfwd")); err == nil {
			if left, _ := filepath.Glob(filepath.Join(dir, "dnsfwd", "net-*")); len(left) > 0 {
				t.Fatalf("cleanup left forwarder state: %v", left)
			}
		}
	})
}
