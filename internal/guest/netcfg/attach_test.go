package netcfg

import (
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

// An attached VM (a pod's interface) may have a /32 with a gateway outside
// it and an MTU below 1500.
func TestApplyPodNetwork(t *testing.T) {
	p, err := bootparams.Parse("smolvm.ip=10.88.7.5/32 smolvm.gw=169.254.1.1 smolvm.mtu=1450 smolvm.dns=10.96.0.10")
	if err != nil {
		t.Fatal(err)
	}
	c := &Config{Root: t.TempDir(), DryRun: true}
	if err := c.Apply(p); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(c.Ops, "mtu eth0 1450") {
		t.Errorf("dry run ops %q: no MTU", c.Ops)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private network namespace")
	}
	type result struct {
		route string
		mtu   uint32
		err   error
	}
	done := make(chan result, 1)
	go func() {
		// The thread keeps the namespace and dies with the goroutine.
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
		c := &Config{Root: t.TempDir()}
		if r.err = c.Apply(p); r.err != nil {
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
		if r.err = unix.IoctlIfreq(fd, unix.SIOCGIFMTU, q); r.err != nil {
			return
		}
		r.mtu = q.Uint32()
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.mtu != 1450 {
		t.Errorf("eth0 MTU %d, want 1450", r.mtu)
	}
	// /proc/net/route, little endian: 169.254.1.1 is 0101FEA9.
	var host, def bool
	for _, l := range strings.Split(r.route, "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[0] == "eth0" {
			host = host || f[1] == "0101FEA9" && f[2] == "00000000"
			def = def || f[1] == "00000000" && f[2] == "0101FEA9"
		}
	}
	if !host || !def {
		t.Errorf("want a host route to 169.254.1.1 and the default route via it on eth0:\n%s", r.route)
	}
}
