// Package netcfg configures the guest's network in its init: loopback, and
// eth0 with the address and default route the host put on the kernel
// command line. It uses ioctls on a datagram socket, not the net package,
// so the agent stays a static binary.
package netcfg

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

// Config configures interfaces. The zero value configures eth0 for real.
type Config struct {
	// Interface is the guest's network interface; empty means eth0.
	Interface string
	// Root is where resolv.conf and hosts are written (Root/etc/...);
	// empty means /.
	Root string
	// DryRun records operations in Ops instead of making system calls
	// (files under Root are still written).
	DryRun bool
	// Ops lists the operations performed, one line each.
	Ops []string
}

func (c *Config) iface() string {
	if c.Interface == "" {
		return "eth0"
	}
	return c.Interface
}

// Apply brings up loopback and, when p has an address, configures the
// interface, its default route via p.Gateway and Root/etc/resolv.conf.
func (c *Config) Apply(p bootparams.Params) error {
	var errs []error
	if err := c.Up("lo", netip.MustParsePrefix("127.0.0.1/8")); err != nil {
		errs = append(errs, err)
	}
	if !p.Addr.IsValid() {
		return errors.Join(errs...)
	}
	if !p.Addr.Addr().Is4() {
		return errors.Join(append(errs, fmt.Errorf("network: only IPv4 is supported, got %s", p.Addr))...)
	}
	if err := c.Up(c.iface(), p.Addr); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if p.MTU != 0 {
		if err := c.SetMTU(c.iface(), p.MTU); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, c.routeAndResolvers(p.Gateway, p.DNS)...)...)
}

// routeAndResolvers sets the default route via gw (when valid) and writes
// resolv.conf with dns, or gw when dns is empty. Boot (Apply) and a
// restore (Reconfigure) share it.
func (c *Config) routeAndResolvers(gw netip.Addr, dns []netip.Addr) []error {
	var errs []error
	if gw.IsValid() {
		if err := c.DefaultRoute(c.iface(), gw); err != nil {
			errs = append(errs, err)
		}
	}
	if len(dns) == 0 && gw.IsValid() {
		dns = []netip.Addr{gw}
	}
	if len(dns) > 0 {
		if err := c.WriteResolvConf(dns); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func (c *Config) record(format string, args ...any) {
	c.Ops = append(c.Ops, fmt.Sprintf(format, args...))
}

// Up sets an interface's IPv4 address and netmask and brings it up.
func (c *Config) Up(name string, addr netip.Prefix) error {
	mask := prefixMask(addr.Bits())
	c.record("addr %s %s", name, addr)
	c.record("up %s", name)
	if c.DryRun {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network %s: socket: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("network %s: %w", name, err)
	}
	if err := ifr.SetInet4Addr(addr.Addr().AsSlice()); err != nil {
		return fmt.Errorf("network %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("network %s: set address %s: %w", name, addr, err)
	}
	if err := ifr.SetInet4Addr(mask[:]); err != nil {
		return fmt.Errorf("network %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("network %s: set netmask: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("network %s: get flags: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("network %s: bring up: %w", name, err)
	}
	return nil
}

// SetMTU sets an interface's MTU.
func (c *Config) SetMTU(name string, mtu int) error {
	c.record("mtu %s %d", name, mtu)
	if c.DryRun {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network %s: socket: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("network %s: %w", name, err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("network %s: set MTU %d: %w", name, mtu, err)
	}
	return nil
}

// rtentry is Linux's struct rtentry (linux/route.h) on 64-bit platforms.
type rtentry struct {
	pad1    uint64
	dst     unix.RawSockaddrInet4
	gateway unix.RawSockaddrInet4
	genmask unix.RawSockaddrInet4
	flags   uint16
	pad2    int16
	pad3    uint64
	pad4    uintptr
	metric  int16
	dev     *byte
	mtu     uint64
	window  uint64
	irtt    uint16
}

// DefaultRoute adds a default route via gw on interface name. An existing
// identical route is not an error. A gateway outside the interface's
// subnet (a pod's /32 address with a link-local gateway, as Calico and
// Cilium give) first gets a host route on the interface, so it is on-link.
func (c *Config) DefaultRoute(name string, gw netip.Addr) error {
	c.record("route default via %s dev %s", gw, name)
	if c.DryRun {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network: socket: %w", err)
	}
	defer unix.Close(fd)
	dev, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	rt := rtentry{flags: unix.RTF_UP | unix.RTF_GATEWAY, dev: dev}
	rt.dst.Family = unix.AF_INET
	rt.genmask.Family = unix.AF_INET
	rt.gateway.Family = unix.AF_INET
	rt.gateway.Addr = gw.As4()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCADDRT, uintptr(unsafe.Pointer(&rt)))
	if errno == unix.ENETUNREACH {
		c.record("route %s dev %s", gw, name)
		host := rtentry{flags: unix.RTF_UP | unix.RTF_HOST, dev: dev}
		host.dst.Family, host.dst.Addr = unix.AF_INET, gw.As4()
		host.genmask.Family, host.genmask.Addr = unix.AF_INET, [4]byte{255, 255, 255, 255}
		host.gateway.Family = unix.AF_INET
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCADDRT, uintptr(unsafe.Pointer(&host))); e != 0 && e != unix.EEXIST {
			return fmt.Errorf("network: route to gateway %s on %s: %w", gw, name, e)
		}
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCADDRT, uintptr(unsafe.Pointer(&rt)))
	}
	if errno != 0 && errno != unix.EEXIST {
		return fmt.Errorf("network: default route via %s: %w", gw, errno)
	}
	return nil
}

// WriteResolvConf writes Root/etc/resolv.conf naming the resolvers.
func (c *Config) WriteResolvConf(dns []netip.Addr) error {
	var b strings.Builder
	for _, a := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	root := c.Root
	if root == "" {
		root = "/"
	}
	p := filepath.Join(root, "etc/resolv.conf")
	c.record("write %s", p)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	_ = os.Remove(p) // may be a dangling symlink
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}

// prefixMask returns the IPv4 netmask of a prefix length.
func prefixMask(bits int) [4]byte {
	m := ^uint32(0) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return [4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
}
