package netcfg

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReconfigureDryRun(t *testing.T) {
	root := t.TempDir()
	c := &Config{Root: root, DryRun: true}
	err := c.Reconfigure(Identity{MAC: "AA:FC:00:00:00:07", Addr: netip.MustParsePrefix("172.16.6.2/24"), Gateway: netip.MustParseAddr("172.16.6.1")})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"mac eth0 aa:fc:00:00:00:07", "route del default dev eth0", "addr eth0 172.16.6.2/24", "up eth0", "route default via 172.16.6.1 dev eth0"}
	if strings.Join(c.Ops[:5], "|") != strings.Join(want, "|") {
		t.Fatalf("ops = %q, want %q first", c.Ops, want)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/resolv.conf")); string(b) != "nameserver 172.16.6.1\n" {
		t.Fatalf("resolv.conf = %q", b)
	}
	for _, bad := range []Identity{
		{Addr: netip.MustParsePrefix("fd00::2/64")},
		{MAC: "zz:00:00:00:00:00", Addr: netip.MustParsePrefix("172.16.6.2/24")},
		{MAC: "aa:fc:00:00:00", Addr: netip.MustParsePrefix("172.16.6.2/24")},
	} {
		c := &Config{Root: root, DryRun: true}
		if err := c.Reconfigure(bad); err == nil || len(c.Ops) != 0 {
			t.Errorf("%+v: err %v, ops %q", bad, err, c.Ops)
		}
	}
}
