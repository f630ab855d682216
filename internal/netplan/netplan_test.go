package netplan

import (
	"net/netip"
	"os"
	"testing"
)

func TestFor(t *testing.T) {
	for _, tc := range []struct {
		i           int
		ip, gw, tap string
		mac         string
		subnet      string
	}{
		{0, "172.16.0.2", "172.16.0.1", "smol0", "AA:FC:00:00:00:01", "172.16.0.0/24"},
		{1, "172.16.0.3", "172.16.0.1", "smol1", "AA:FC:00:00:00:02", "172.16.0.0/24"},
		{252, "172.16.0.254", "172.16.0.1", "smol252", "AA:FC:00:00:00:FD", "172.16.0.0/24"},
		{253, "172.16.1.2", "172.16.1.1", "smol253", "AA:FC:00:00:00:FE", "172.16.1.0/24"},
		{255, "172.16.1.4", "172.16.1.1", "smol255", "AA:FC:00:00:01:00", "172.16.1.0/24"},
		{MaxIndexes - 1, "172.16.255.254", "172.16.255.1", "smol64767", "AA:FC:00:00:FD:00", "172.16.255.0/24"},
	} {
		p, err := For(tc.i, 2200)
		if err != nil {
			t.Fatal(err)
		}
		if p.GuestIP.String() != tc.ip || p.Gateway.String() != tc.gw || p.TAP != tc.tap || p.MAC != tc.mac || p.Subnet.String() != tc.subnet {
			t.Errorf("For(%d) = %+v, want %s %s %s %s %s", tc.i, p, tc.ip, tc.gw, tc.tap, tc.mac, tc.subnet)
		}
		if p.CID != uint32(tc.i)+3 || p.SSHPort != 2200 || p.GuestPrefix().String() != tc.ip+"/24" {
			t.Errorf("For(%d): CID %d, SSH %d, prefix %s", tc.i, p.CID, p.SSHPort, p.GuestPrefix())
		}
		if len(p.TAP) > 15 {
			t.Errorf("For(%d).TAP %q longer than IFNAMSIZ", tc.i, p.TAP)
		}
	}
	for _, bad := range []int{-1, MaxIndexes} {
		if _, err := For(bad, 0); err == nil {
			t.Errorf("For(%d) accepted", bad)
		}
	}
	// No guest is ever a network, broadcast or gateway address, and no
	// address repeats.
	seen := map[netip.Addr]bool{}
	for i := 0; i < MaxIndexes; i++ {
		p := MustFor(i, 0)
		b := p.GuestIP.As4()
		if b[3] == 0 || b[3] == 1 || b[3] == 255 || !p.Subnet.Contains(p.GuestIP) || !p.Subnet.Contains(p.Gateway) {
			t.Fatalf("index %d: %+v", i, p)
		}
		if seen[p.GuestIP] {
			t.Fatalf("index %d repeats %s", i, p.GuestIP)
		}
		seen[p.GuestIP] = true
	}
}

func TestResolvers(t *testing.T) {
	p := MustFor(300, 0)
	if r := p.Resolvers(nil); len(r) != 1 || r[0] != p.Gateway {
		t.Errorf("default resolvers = %v, want the gateway %s", r, p.Gateway)
	}
	custom := []netip.Addr{netip.MustParseAddr("9.9.9.9")}
	r := p.Resolvers(custom)
	if len(r) != 1 || r[0] != custom[0] {
		t.Errorf("custom resolvers = %v", r)
	}
	r[0] = netip.MustParseAddr("1.1.1.1")
	if custom[0].String() != "9.9.9.9" {
		t.Error("Resolvers returned the caller's slice")
	}
}

func TestClaims(t *testing.T) {
	c := Claims{Dir: t.TempDir()}
	a := Owner{DataDir: "/a", VMID: "x"}
	b := Owner{DataDir: t.TempDir(), VMID: "y"}
	// b's data dir has a database: its claims are live.
	if err := writeFile(b.DataDir + "/smolvm.db"); err != nil {
		t.Fatal(err)
	}
	if err := c.Claim(0, b, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Claim(0, b, nil); err != nil {
		t.Fatalf("reclaim by the owner: %v", err)
	}
	if err := c.Claim(0, a, nil); err == nil {
		t.Fatal("a took b's live claim")
	}
	held, _ := c.Held("/a")
	if !held[0] || len(held) != 1 {
		t.Fatalf("Held = %v", held)
	}
	if err := c.Release(0, a); err != nil {
		t.Fatal(err)
	}
	if held, _ := c.Held("/a"); !held[0] {
		t.Fatal("a released b's claim")
	}
	// a's own stale claim (its VM no longer holds it) is taken over.
	if err := c.Claim(1, Owner{DataDir: "/a", VMID: "old"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Claim(1, a, func(Owner) bool { return false }); err == nil {
		t.Fatal("took a claim the database still backs")
	}
	if err := c.Claim(1, a, func(o Owner) bool { return o.VMID == "old" }); err != nil {
		t.Fatalf("stale own claim: %v", err)
	}
	if err := (Claims{}).Claim(5, a, nil); err != nil {
		t.Fatal("the zero Claims must allow everything")
	}
}

func writeFile(p string) error { return os.WriteFile(p, nil, 0o600) }
