package netcfg

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Identity is a guest's network identity, as a restore from a snapshot
// hands it over.
type Identity struct {
	// MAC is the interface's hardware address; empty keeps it.
	MAC string
	// Addr is the interface's IPv4 address and prefix.
	Addr netip.Prefix
	// Gateway is the default route's gateway.
	Gateway netip.Addr
	// DNS are the resolvers; empty means the gateway.
	DNS []netip.Addr
}

// Reconfigure moves the interface to id: its MAC, its address, a default
// route via the new gateway only, and resolv.conf. A guest restored from
// another VM's snapshot runs this to take its own identity.
func (c *Config) Reconfigure(id Identity) error {
	if !id.Addr.IsValid() || !id.Addr.Addr().Is4() {
		return fmt.Errorf("network: address %s: must be an IPv4 prefix", id.Addr)
	}
	if id.MAC != "" {
		if err := c.SetMAC(c.iface(), id.MAC); err != nil {
			return err
		}
	}
	if err := c.DeleteDefaultRoutes(c.iface()); err != nil {
		return err
	}
	if err := c.Up(c.iface(), id.Addr); err != nil {
		return err
	}
	return errors.Join(c.routeAndResolvers(id.Gateway, id.DNS)...)
}

// ParseMAC parses aa:bb:cc:dd:ee:ff.
func ParseMAC(s string) ([6]byte, error) {
	var m [6]byte
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return m, fmt.Errorf("network: MAC %q: want six hex octets", s)
	}
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 16, 8)
		if err != nil || len(p) != 2 {
			return m, fmt.Errorf("network: MAC %q: want six hex octets", s)
		}
		m[i] = byte(v)
	}
	return m, nil
}

// SetMAC sets an interface's hardware address (virtio-net allows it while
// the interface is up).
func (c *Config) SetMAC(name, mac string) error {
	m, err := ParseMAC(mac)
	if err != nil {
		return err
	}
	c.record("mac %s %s", name, strings.ToLower(mac))
	if c.DryRun {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network %s: socket: %w", name, err)
	}
	defer unix.Close(fd)
	// struct ifreq { char name[16]; struct sockaddr hwaddr; }
	var ifr struct {
		name   [unix.IFNAMSIZ]byte
		family uint16
		data   [14]byte
		_      [8]byte
	}
	copy(ifr.name[:], name)
	ifr.family = unix.ARPHRD_ETHER
	copy(ifr.data[:], m[:])
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCSIFHWADDR, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("network %s: set MAC %s: %w", name, mac, errno)
	}
	return nil
}

// DeleteDefaultRoutes removes every IPv4 default route through the
// interface.
func (c *Config) DeleteDefaultRoutes(name string) error {
	c.record("route del default dev %s", name)
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
	for range 16 {
		rt := rtentry{flags: unix.RTF_UP, dev: dev}
		rt.dst.Family = unix.AF_INET
		rt.genmask.Family = unix.AF_INET
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCDELRT, uintptr(unsafe.Pointer(&rt)))
		if errno == unix.ESRCH {
			return nil
		}
		if errno != 0 {
			return fmt.Errorf("network: delete default route: %w", errno)
		}
	}
	return nil
}
