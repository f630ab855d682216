package dnsfwd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/smolvm-go/smolvm/internal/network/netnstest"
)

// childEnv marks the test binary re-executed in its own network namespace;
// serveEnv makes it run Serve on the named directory instead of the tests.
const (
	childEnv = "SMOLVM_DNSFWD_TEST_NETNS"
	serveEnv = "SMOLVM_DNSFWD_TEST_SERVE"
)

var privileged bool

func TestMain(m *testing.M) {
	if dir := os.Getenv(serveEnv); dir != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := Serve(ctx, ServeConfig{Dir: dir, IdleExit: 500 * time.Millisecond,
			Forwarder: Config{Upstreams: []string{"192.0.2.2:53"}, TTLFloor: time.Second}})
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(childEnv) == "" && os.Geteuid() == 0 {
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
			os.Exit(0)
		case errors.As(err, &exit):
			os.Exit(exit.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "dnsfwd tests: cannot create a network namespace (%v): privileged tests skip\n", err)
	}
	if os.Getenv(childEnv) != "" {
		links, err := netlink.LinkList()
		if err == nil && len(links) == 1 && links[0].Attrs().Name == "lo" {
			privileged = netlink.LinkSetUp(links[0]) == nil
		}
		if !privileged {
			fmt.Fprintln(os.Stderr, "dnsfwd tests: namespace is not fresh: privileged tests skip")
		}
	}
	os.Exit(m.Run())
}

func needNetNS(t *testing.T) {
	t.Helper()
	if !privileged {
		t.Skip("needs root and a private network namespace (run the tests as root)")
	}
}

// peer is a namespace behind a veth: hostIf here, eth0 there.
type peer struct {
	ns netns.NsHandle
}

// newPeer makes a namespace joined by a veth hostIf <-> eth0 (addr, mac
// if not empty, default route via gw if not empty), removed when t ends.
func newPeer(t *testing.T, hostIf, addr, mac, gw string) *peer {
	t.Helper()
	ns, err := netnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(hostIf); err == nil {
			_ = netlink.LinkDel(l)
		}
		ns.Close()
	})
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: hostIf + "p"}); err != nil {
		t.Fatal(err)
	}
	pl, err := netlink.LinkByName(hostIf + "p")
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
	lo, _ := h.LinkByName("lo")
	pl, err = h.LinkByName(hostIf + "p")
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	if mac != "" {
		hw, _ := net.ParseMAC(mac)
		if err := h.LinkSetHardwareAddr(pl, hw); err != nil {
			t.Fatal(err)
		}
	}
	for _, err := range []error{h.LinkSetUp(lo), h.LinkSetName(pl, "eth0"), h.AddrAdd(pl, a), h.LinkSetUp(pl)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if gw != "" {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
			t.Fatal(err)
		}
	}
	hl, err := netlink.LinkByName(hostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	return &peer{ns: ns}
}

func tempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dnsfwd-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "state")
}
