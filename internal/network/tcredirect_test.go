package network

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// podIface makes a veth "eth0" (peer "peer0") with addrs and, when gw is
// set, a default route via gw: a pod's interface as a CNI plugin leaves it.
func podIface(t *testing.T, gw string, addrs ...string) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("eth0"); err == nil {
			netlink.LinkDel(l)
		}
	})
	l, err := netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		na, _ := netlink.ParseAddr(a)
		if err := netlink.AddrAdd(l, na); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"eth0", "peer0"} {
		p, _ := netlink.LinkByName(n)
		if err := netlink.LinkSetUp(p); err != nil {
			t.Fatal(err)
		}
	}
	if gw != "" {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func tcShow(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("tc", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("tc %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestInspectInterface(t *testing.T) {
	needNetNS(t)
	if _, err := InspectInterface("eth9"); err == nil || !strings.Contains(err.Error(), "no interface") {
		t.Errorf("missing interface: %v", err)
	}
	if _, err := InspectInterface("lo"); err == nil || !strings.Contains(err.Error(), "not an Ethernet") {
		t.Errorf("loopback: %v", err)
	}
	podIface(t, "", "10.88.0.5/16", "10.88.0.6/16")
	if _, err := InspectInterface("eth0"); err == nil || !strings.Contains(err.Error(), "2 IPv4 addresses") {
		t.Errorf("two addresses: %v", err)
	}
	l, _ := netlink.LinkByName("eth0")
	a, _ := netlink.ParseAddr("10.88.0.6/16")
	netlink.AddrDel(l, a)
	if _, err := InspectInterface("eth0"); err == nil || !strings.Contains(err.Error(), "no IPv4 default route") {
		t.Errorf("no default route: %v", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("10.88.0.1")}); err != nil {
		t.Fatal(err)
	}
	info, err := InspectInterface("eth0")
	if err != nil || info.Addr.String() != "10.88.0.5/16" || info.Gateway.String() != "10.88.0.1" || info.MAC.String() != l.Attrs().HardwareAddr.String() {
		t.Fatalf("InspectInterface: %+v, %v", info, err)
	}
	if name, err := DefaultInterface(); err != nil || name != "eth0" {
		t.Errorf("DefaultInterface: %q, %v", name, err)
	}
	// A pod's /32 with an on-link gateway outside it (Calico, Cilium).
	netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("10.88.0.1")})
	a, _ = netlink.ParseAddr("10.88.0.5/16")
	netlink.AddrDel(l, a)
	a, _ = netlink.ParseAddr("10.88.0.5/32")
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	gw := net.ParseIP("169.254.1.1")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}); err != nil {
		t.Fatal(err)
	}
	if info, err := InspectInterface("eth0"); err != nil || info.Addr.String() != "10.88.0.5/32" || info.Gateway.String() != "169.254.1.1" {
		t.Fatalf("InspectInterface of a /32: %+v, %v", info, err)
	}
}

func TestAttachDetach(t *testing.T) {
	needNetNS(t)
	t.Cleanup(func() { cleanAll(t) })
	ctx := context.Background()
	l := podIface(t, "10.88.0.1", "10.88.0.5/16")
	info, err := InspectInterface("eth0")
	if err != nil {
		t.Fatal(err)
	}
	a := Attachment{VMID: "vm-a", TAP: "smol7", Iface: "eth0", MAC: info.MAC, GuestIP: info.Addr.Addr()}
	if err := Attach(ctx, a); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if out := tcShow(t, "filter", "show", "dev", "eth0", "ingress"); !strings.Contains(out, "mirred (Egress Redirect to device smol7)") {
		t.Errorf("eth0's ingress does not redirect to the TAP:\n%s", out)
	}
	out := tcShow(t, "filter", "show", "dev", "smol7", "ingress")
	if strings.Count(out, "Egress Redirect to device eth0") != 2 || !strings.Contains(out, "0a580005/ffffffff at 12") {
		t.Errorf("the TAP's ingress filters (IPv4 from 10.88.0.5 and ARP, both to eth0):\n%s", out)
	}
	if out, _ := exec.Command("nft", "list", "table", "netdev", TableName).CombinedOutput(); !strings.Contains(string(out), "policy drop") || !strings.Contains(string(out), `"smol7"`) {
		t.Errorf("netdev drop chain:\n%s", out)
	}
	// Attach again (a restart) replaces the same.
	if err := Attach(ctx, a); err != nil {
		t.Fatalf("Attach again: %v", err)
	}
	// Another VM cannot take the interface, and its try changes nothing.
	b := a
	b.VMID, b.TAP = "vm-b", "smol8"
	if err := Attach(ctx, b); !errors.Is(err, ErrInUse) {
		t.Errorf("second Attach: %v; want ErrInUse", err)
	}
	if _, err := netlink.LinkByName("smol8"); err == nil {
		t.Error("the refused attach left its TAP")
	}
	if out := tcShow(t, "filter", "show", "dev", "eth0", "ingress"); !strings.Contains(out, "smol7") {
		t.Errorf("the refused attach changed eth0's redirect:\n%s", out)
	}
	if err := Detach(ctx, b); err != nil {
		t.Errorf("Detach of the refused one: %v", err)
	}
	if out := tcShow(t, "filter", "show", "dev", "eth0", "ingress"); !strings.Contains(out, "smol7") {
		t.Errorf("detaching the refused one removed the first's redirect:\n%s", out)
	}

	if err := Detach(ctx, a); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if err := Detach(ctx, a); err != nil {
		t.Fatalf("Detach again: %v", err)
	}
	if _, err := netlink.LinkByName("smol7"); err == nil {
		t.Error("TAP left after Detach")
	}
	if out := tcShow(t, "qdisc", "show", "dev", "eth0"); strings.Contains(out, "ingress") {
		t.Errorf("ingress qdisc left on eth0:\n%s", out)
	}
	if taps, _ := AttachedTAPs(); len(taps) != 0 {
		t.Errorf("netdev chains left: %v", taps)
	}
	addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
	if len(addrs) != 1 {
		t.Errorf("eth0's address was touched: %v", addrs)
	}

	// A crashed VM's TAP removed by Cleanup takes its chain and eth0's
	// stale redirect with it.
	if err := Attach(ctx, a); err != nil {
		t.Fatal(err)
	}
	// A dry run names them and removes nothing.
	dry, err := Cleanup(ctx, func(string) bool { return false }, true)
	if err != nil {
		t.Fatalf("dry-run Cleanup: %v", err)
	}
	for _, want := range []string{"link " + a.TAP, "netdev chain " + a.TAP, "ingress redirect of eth0"} {
		if !slices.ContainsFunc(dry, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("dry-run Cleanup listed %q, without %q", dry, want)
		}
	}
	if out := tcShow(t, "qdisc", "show", "dev", "eth0"); !strings.Contains(out, "ingress") {
		t.Errorf("dry-run Cleanup removed eth0's ingress qdisc:\n%s", out)
	}
	if taps, _ := AttachedTAPs(); len(taps) != 1 {
		t.Errorf("dry-run Cleanup touched the netdev chains: %v", taps)
	}
	removed, err := Cleanup(ctx, func(string) bool { return false }, false)
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if out := tcShow(t, "qdisc", "show", "dev", "eth0"); strings.Contains(out, "ingress") {
		t.Errorf("Cleanup left eth0's ingress qdisc (removed %q):\n%s", removed, out)
	}
	if taps, _ := AttachedTAPs(); len(taps) != 0 {
		t.Errorf("Cleanup left netdev chains %v (removed %q)", taps, removed)
	}
}
