package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestCLINetworkPolicy drives network set/show, the egress flags of create
// and port expose's [HOST_IP:] form through the binary on a VM that is
// created but never booted.
func TestCLINetworkPolicy(t *testing.T) {
	vmtest.Require(t)
	dir := t.TempDir()
	cfg := smolvm.VMConfig{VMID: "pol", AllowOut: []string{"API.example.test."}}
	off := false
	cfg.Internet = &off
	for _, p := range []*string{&cfg.KernelPath, &cfg.InitrdPath, &cfg.RootfsPath} {
		*p = filepath.Join(dir, "boot-file")
		os.WriteFile(*p, []byte("not booted"), 0o644)
	}
	h, err := smolvm.Open(context.Background(), smolvm.HostOptions{DataDir: dir, HostDir: filepath.Join(dir, ".host")})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := h.Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	vm.Release()
	h.Close()
	t.Setenv("SMOLVM_HOST_DIR", filepath.Join(dir, ".host"))

	show := func() smolvm.EgressPolicy {
		t.Helper()
		r := cli(t, dir, "network", "show", "pol", "--json")
		var e smolvm.EgressPolicy
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &e) != nil {
			t.Fatalf("network show: %+v", r)
		}
		return e
	}
	if e := show(); e.Internet || len(e.AllowOut) != 1 || e.AllowOut[0] != "api.example.test" || e.DenyOut == nil {
		t.Fatalf("created policy: %+v", e)
	}
	if r := cli(t, dir, "network", "set", "pol", "--internet", "on", "--deny-out", "10.1.2.3", "--egress-rate", "10mbit"); r.code != 0 {
		t.Fatalf("network set: %+v", r)
	}
	if e := show(); !e.Internet || len(e.AllowOut) != 1 || len(e.DenyOut) != 1 || e.DenyOut[0] != "10.1.2.3" || e.EgressRate != "10mbit" {
		t.Fatalf("after set: %+v", e)
	}
	r := cli(t, dir, "info", "pol", "--json")
	var inf map[string]any
	json.Unmarshal([]byte(r.stdout), &inf)
	eg, _ := inf["egress"].(map[string]any)
	if eg == nil || eg["internet"] != true || eg["allow_out"] == nil || eg["deny_out"] == nil {
		t.Fatalf("info --json egress: %s", r.stdout)
	}
	before := show()
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"network", "set", "pol", "--allow-out", "10.0.0.1/33"}, "allow_out[0]"},
		{[]string{"network", "set", "pol", "--deny-out", "a..b"}, "deny_out[0]"},
		{[]string{"network", "set", "pol", "--internet", "maybe"}, "--internet"},
		{[]string{"network", "set", "pol", "--egress-rate", "10parsecs"}, "egress_rate"},
		{[]string{"network", "set", "pol", "--allow-out", "pypi.org", "--deny-out", "pypi.org"}, "deny_out"},
		{[]string{"network", "set", "pol"}, "nothing to change"},
		{[]string{"create", "--allow-out", "exa mple.com"}, "allow_out"},
		{[]string{"create", "--network", "off", "--allow-out", "pypi.org"}, "networking"},
		{[]string{"create", "--dns", "192.0.2.53", "--allow-out", "pypi.org"}, "dns_servers"},
		{[]string{"create", "--dns-upstream", "resolver.example"}, "dns_upstream"},
		{[]string{"create", "--egress-rate", "5"}, "egress_rate"},
		{[]string{"port", "expose", "pol", "192.0.2.1:80"}, "HOST_IP"},
		{[]string{"port", "expose", "pol", "192.0.2.99:9100:80"}, "host_ip"},
		{[]string{"port", "expose", "pol", "::80"}, "HOST_IP"},
	} {
		r := cli(t, dir, tc.argv...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.argv, r.code, r.stderr, tc.want)
		}
	}
	if after := show(); strings.Join(after.AllowOut, ",") != strings.Join(before.AllowOut, ",") || strings.Join(after.DenyOut, ",") != strings.Join(before.DenyOut, ",") || after.Internet != before.Internet {
		t.Fatalf("bad input changed the policy: %+v -> %+v", before, after)
	}
	if r := cli(t, dir, "port", "expose", "pol", "0.0.0.0:9100:80"); r.code != 0 || !strings.Contains(r.stdout, "0.0.0.0:9100") {
		t.Fatalf("port expose 0.0.0.0: %+v", r)
	}
	if r := cli(t, dir, "port", "expose", "pol", "9101:81"); r.code != 0 || !strings.Contains(r.stdout, "127.0.0.1:9101") {
		t.Fatalf("port expose: %+v", r)
	}
	r = cli(t, dir, "port", "list", "pol", "--json")
	var ps []smolvm.PortInfo
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ps) != nil || len(ps) != 2 {
		t.Fatalf("port list --json: %+v", r)
	}
	if ps[0].HostIP != "0.0.0.0" || ps[0].HostPort != 9100 || ps[1].HostIP != "127.0.0.1" || !strings.Contains(r.stdout, `"host_ip"`) {
		t.Fatalf("port list: %+v", ps)
	}
	if r := cli(t, dir, "delete", "pol"); r.code != 0 {
		t.Fatalf("delete: %+v", r)
	}
}

func TestParsePublish(t *testing.T) {
	for _, tc := range []struct {
		in          string
		ip          string
		host, guest int
		bad         bool
	}{
		{in: "8080", guest: 8080},
		{in: "9000:8080", host: 9000, guest: 8080},
		{in: "0.0.0.0:9000:8080", ip: "0.0.0.0", host: 9000, guest: 8080},
		{in: "192.0.2.1::80", ip: "192.0.2.1", guest: 80},
		{in: "192.0.2.1:80", bad: true},
		{in: "::80", bad: true},
		{in: "a:b", bad: true},
		{in: "0", bad: true},
		{in: "70000", bad: true},
		{in: "1:2:3:4", bad: true},
		{in: "-1", bad: true},
	} {
		ip, h, g, err := parsePublish(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q accepted", tc.in)
			}
			continue
		}
		if err != nil || ip != tc.ip || h != tc.host || g != tc.guest {
			t.Errorf("%q = %q %d %d %v", tc.in, ip, h, g, err)
		}
	}
}

// TestCLIEgressEndToEnd boots one minimal VM through the binary with a
// domain allow list, checks from the guest (after the creating command has
// exited, so the DNS forwarder must have outlived it) that only the allowed
// name resolves and answers, changes the policy with network set, and
// deletes the VM: no forwarder process is left.
func TestCLIEgressEndToEnd(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	vmtest.NewWorld(t)
	dir := t.TempDir()
	r := cli(t, dir, "create", "--name", "eg", "--image", "minimal", "--memory", "256", "--vcpus", "1",
		"--internet", "off", "--allow-out", "api.example.test", "--dns-upstream", vmtest.WANWorld, "--start", "--json")
	if r.code != 0 {
		t.Fatalf("create --start: %+v", r)
	}
	defer cli(t, dir, "delete", "--force", "eg")
	guest := func(cmd string) string {
		t.Helper()
		r := cli(t, dir, "exec", "eg", "--", "sh", "-lc", cmd)
		if r.code > 128 {
			t.Fatalf("%s crashed: %+v", cmd, r)
		}
		return strings.TrimSpace(r.stdout)
	}
	if got := guest("wget -q -T 3 -O - http://api.example.test/"); got != "hello from "+vmtest.Pub1 {
		t.Fatalf("allowed name: %q", got)
	}
	if got := guest("nslookup other.example.test >/dev/null 2>&1 && echo resolved"); got != "" {
		t.Fatalf("a name outside the allow list: %q", got)
	}
	if got := guest("wget -q -T 3 -O - http://" + vmtest.Pub2 + "/ || echo blocked"); got != "blocked" {
		t.Fatalf("internet off, by address: %q", got)
	}
	if r := cli(t, dir, "network", "set", "eg", "--internet", "on"); r.code != 0 {
		t.Fatalf("network set: %+v", r)
	}
	if got := guest("wget -q -T 3 -O - http://" + vmtest.Pub2 + "/"); got != "hello from "+vmtest.Pub2 {
		t.Fatalf("after network set --internet on: %q", got)
	}
	if got := guest("wget -q -T 3 -O - http://" + vmtest.MetadataIP + "/ || echo blocked"); got != "blocked" {
		t.Fatalf("metadata: %q", got)
	}
	if r := cli(t, dir, "delete", "eg"); r.code != 0 {
		t.Fatalf("delete: %+v", r)
	}
	if pids := vmtest.ProcessesOf(dir); len(pids) > 0 {
		t.Fatalf("processes left after delete: %v", pids)
	}
}
