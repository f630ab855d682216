package netcfg

import (
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

func params(t *testing.T) bootparams.Params {
	p, err := bootparams.Parse("smolvm.ip=172.16.0.2/24 smolvm.gw=172.16.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplyDryRun(t *testing.T) {
	c := &Config{Root: t.TempDir(), DryRun: true}
	if err := c.Apply(params(t)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"addr lo 127.0.0.1/8", "up lo",
		"addr eth0 172.16.0.2/24", "up eth0",
		"route default via 172.16.0.1 dev eth0",
		"write " + filepath.Join(c.Root, "etc/resolv.conf"),
	}
	if !slices.Equal(c.Ops, want) {
		t.Fatalf("ops %q\nwant %q", c.Ops, want)
	}
	b, err := os.ReadFile(filepath.Join(c.Root, "etc/resolv.conf"))
	if err != nil || string(b) != "nameserver 172.16.0.1\n" {
		t.Fatalf("resolv.conf %q %v", b, err)
	}
	// No address: only loopback.
	c = &Config{Root: t.TempDir(), DryRun: true}
	if err := c.Apply(bootparams.Params{}); err != nil || len(c.Ops) != 2 {
		t.Fatalf("no network: %v %q", err, c.Ops)
	}
}

func TestPrefixMask(t *testing.T) {
	for bits, want := range map[int][4]byte{0: {}, 8: {255}, 24: {255, 255, 255}, 30: {255, 255, 255, 252}, 32: {255, 255, 255, 255}} {
		if got := prefixMask(bits); got != want {
			t.Errorf("prefixMask(%d) = %v, want %v", bits, got, want)
		}
	}
	if unsafe.Sizeof(rtentry{}) != 120 {
		t.Errorf("rtentry is %d bytes, Linux's is 120", unsafe.Sizeof(rtentry{}))
	}
}

// TestApplyInNetns configures a TAP device named eth0 for real, in a
// private network namespace that exists only for this test's thread.
func TestApplyInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private network namespace")
	}
	root := t.TempDir()
	type result struct {
		route string
		addr  [4]byte
		flags uint16
		err   error
	}
	done := make(chan result, 1)
	go func() {
		// The thread keeps the namespace and dies with the goroutine
		// (no UnlockOSThread), so the namespace goes with it.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		if r.err = unix.Unshare(unix.CLONE_NEWNET); r.err != nil {
			return
		}
		tun, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			r.err = err
			return
		}
		defer unix.Close(tun)
		ifr, _ := unix.NewIfreq("eth0")
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if r.err = unix.IoctlIfreq(tun, unix.TUNSETIFF, ifr); r.err != nil {
			return
		}
		c := &Config{Root: root}
		if r.err = c.Apply(params(t)); r.err != nil {
			return
		}
		b, err := os.ReadFile("/proc/thread-self/net/route")
		if err != nil {
			r.err = err
			return
		}
		r.route = string(b)
		fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		defer unix.Close(fd)
		q, _ := unix.NewIfreq("eth0")
		if r.err = unix.IoctlIfreq(fd, unix.SIOCGIFADDR, q); r.err != nil {
			return
		}
		a, _ := q.Inet4Addr()
		copy(r.addr[:], a)
		if r.err = unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, q); r.err != nil {
			return
		}
		r.flags = q.Uint16()
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if netip.AddrFrom4(r.addr) != netip.MustParseAddr("172.16.0.2") {
		t.Errorf("eth0 address %v", r.addr)
	}
	if r.flags&unix.IFF_UP == 0 {
		t.Error("eth0 not up")
	}
	// /proc/net/route: Iface Destination Gateway ...; 0100A8AC... little endian.
	found := false
	for _, l := range strings.Split(r.route, "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[0] == "eth0" && f[1] == "00000000" && f[2] == "010010AC" {
			found = true
		}
	}
	if !found {
		t.Errorf("no default route via 172.16.0.1 on eth0:\n%s", r.route)
	}
}
