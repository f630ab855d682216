package agent

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// The host dials the agent from a privileged vsock port (the agent serves
// no other peers).
func TestBindPrivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("binding a privileged port needs root")
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	seen := map[uint32]bool{}
	for range 3 {
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Skipf("no AF_VSOCK here: %v", err)
		}
		fds = append(fds, fd)
		if err := bindPrivileged(fd); err != nil {
			t.Fatal(err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			t.Fatal(err)
		}
		p := sa.(*unix.SockaddrVM).Port
		if p < privilegedPortLow || p > privilegedPortHigh || seen[p] {
			t.Fatalf("bound port %d (seen %v)", p, seen)
		}
		seen[p] = true
	}
}
