package server

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/guest/netcfg"
)

// restore brings a guest restored from a snapshot up to date
// (proto.MethodRestore): clock, RNG, host name, network. Every input is
// checked first; the host is trusted here (only it talks to the agent),
// but a bad request must not half-apply.
func (s *Server) restore(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.RestoreArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, fmt.Errorf("%w: restore: %v", proto.ErrInvalidArgument, err)
	}
	if len(a.Entropy) > proto.MaxRestoreEntropy {
		return nil, fmt.Errorf("%w: restore: entropy of %d bytes exceeds %d", proto.ErrInvalidArgument, len(a.Entropy), proto.MaxRestoreEntropy)
	}
	var id *netcfg.Identity
	if n := a.Network; n != nil {
		p, err := netip.ParsePrefix(n.Addr)
		if err != nil {
			return nil, fmt.Errorf("%w: restore: addr: %v", proto.ErrInvalidArgument, err)
		}
		gw, err := netip.ParseAddr(n.Gateway)
		if err != nil {
			return nil, fmt.Errorf("%w: restore: gateway: %v", proto.ErrInvalidArgument, err)
		}
		if _, err := netcfg.ParseMAC(n.MAC); err != nil {
			return nil, fmt.Errorf("%w: restore: %v", proto.ErrInvalidArgument, err)
		}
		id = &netcfg.Identity{MAC: n.MAC, Addr: p, Gateway: gw}
		for _, d := range n.DNS {
			ad, err := netip.ParseAddr(d)
			if err != nil {
				return nil, fmt.Errorf("%w: restore: dns: %v", proto.ErrInvalidArgument, err)
			}
			id.DNS = append(id.DNS, ad)
		}
	}
	if a.Hostname != "" && len(a.Hostname) > 64 {
		return nil, fmt.Errorf("%w: restore: hostname too long", proto.ErrInvalidArgument)
	}
	var res proto.RestoreResult
	if a.TimeUnixNano > 0 {
		want := time.Unix(0, a.TimeUnixNano)
		res.ClockStepMillis = want.Sub(time.Now()).Milliseconds()
		ts := unix.NsecToTimespec(a.TimeUnixNano)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return nil, fmt.Errorf("restore: set clock: %w", err)
		}
	}
	if len(a.Entropy) > 0 {
		if err := reseed(a.Entropy); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		res.Reseeded = true
	}
	if a.Hostname != "" {
		if err := unix.Sethostname([]byte(a.Hostname)); err != nil {
			return nil, fmt.Errorf("restore: hostname: %w", err)
		}
	}
	if id != nil {
		c := &netcfg.Config{}
		if err := c.Reconfigure(*id); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	s.opts.Logf("restored: clock moved %d ms, rng reseeded %v", res.ClockStepMillis, res.Reseeded)
	return res, nil
}

// reseed credits b to the kernel's input pool (RNDADDENTROPY) and makes
// the CRNG reseed from it at once (RNDRESEEDCRNG), so clones of one
// snapshot stop sharing random state.
func reseed(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/urandom: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b)+3)
	*(*int32)(unsafe.Pointer(&info[0])) = int32(len(b) * 8)
	*(*int32)(unsafe.Pointer(&info[4])) = int32(len(b))
	copy(info[8:], b)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return fmt.Errorf("add entropy: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("reseed crng: %w", errno)
	}
	return nil
}
