package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ourLinkRE matches the names of TAPs that Cleanup may remove.
var ourLinkRE = regexp.MustCompile(`^` + TAPPrefix + `[0-9]+$`)

// aliasPrefix starts the interface alias (ip link's "alias") of our TAPs,
// followed by the VM id: it tells Cleanup whose a TAP is.
const aliasPrefix = TableName + " vm="

// ensureLink makes l.TAP exist, up, with the gateway/32 and a route to the
// guest/32. It accepts an existing TAP, or a veth (tests stand one in for a
// VM). created reports whether the TAP was made here.
func ensureLink(l Lease) (created bool, err error) {
	link, err := netlink.LinkByName(l.TAP)
	if _, ok := err.(netlink.LinkNotFoundError); ok {
		if err := createTAP(l.TAP, unix.IFF_TAP); err != nil {
			return false, err
		}
		created = true
		link, err = netlink.LinkByName(l.TAP)
	}
	if err != nil {
		return created, linkErr("find "+l.TAP, err)
	}
	switch t := link.(type) {
	case *netlink.Tuntap:
		if t.Mode != netlink.TUNTAP_MODE_TAP {
			return created, fmt.Errorf("network: %s exists and is a TUN device, not a TAP", l.TAP)
		}
	case *netlink.Veth:
	default:
		return created, fmt.Errorf("network: %s exists and is a %s device, not a TAP", l.TAP, link.Type())
	}
	if err := netlink.LinkSetAlias(link, aliasPrefix+l.VMID); err != nil {
		return created, linkErr("set alias of "+l.TAP, err)
	}
	// No IPv6 on guest links: no link-local address for a guest to reach the
	// host through, and the kernel drops IPv6 arriving on the TAP.
	if err := writeSysctl(filepath.Join("/proc/sys/net/ipv6/conf", l.TAP, "disable_ipv6"), "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return created, err
	}
	if err := writeSysctl(filepath.Join("/proc/sys/net/ipv4/conf", l.TAP, "route_localnet"), "1"); err != nil {
		return created, err
	}
	// Strict reverse-path filtering: a packet from the guest whose source
	// is not routed back through its TAP is dropped (the nftables
	// anti-spoofing rules come first; this is the second layer).
	if err := writeSysctl(filepath.Join("/proc/sys/net/ipv4/conf", l.TAP, "rp_filter"), "1"); err != nil {
		return created, err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return created, linkErr("bring up "+l.TAP, err)
	}
	gw := &netlink.Addr{IPNet: hostNet(l.Gateway), Scope: unix.RT_SCOPE_UNIVERSE}
	if err := netlink.AddrReplace(link, gw); err != nil {
		return created, linkErr(fmt.Sprintf("add %s/32 to %s", l.Gateway, l.TAP), err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       hostNet(l.GuestIP),
		Src:       net.IP(l.Gateway.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteReplace(route); err != nil {
		return created, linkErr(fmt.Sprintf("route %s/32 via %s", l.GuestIP, l.TAP), err)
	}
	return created, nil
}

// createTAP makes a persistent TUN/TAP device (mode unix.IFF_TAP or
// unix.IFF_TUN) called name. It is made with the TUNSETIFF and
// TUNSETPERSIST ioctls (the kernel creates tun devices no other way) and
// given no owner or group, so only a process with CAP_NET_ADMIN, such as
// QEMU run by root, can attach to it. The flags set here do not bind QEMU:
// it sets IFF_NO_PI and, after probing, IFF_VNET_HDR when it attaches; only
// IFF_MULTI_QUEUE must match, and QEMU's default is one queue.
func createTAP(name string, mode uint16) error {
	op := "create TAP " + name
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			return fmt.Errorf("network: %s: %w (%v)", op, ErrNoTun, err)
		}
		return linkErr(op, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("network: %s: %w", op, err)
	}
	ifr.SetUint16(mode | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return linkErr(op+": TUNSETIFF", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return linkErr(op+": TUNSETPERSIST", err)
	}
	return nil
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

// deleteLink removes the link called name; a missing link is success.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if _, ok := err.(netlink.LinkNotFoundError); ok {
		return nil
	}
	if err != nil {
		return linkErr("find "+name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return linkErr("delete "+name, err)
	}
	return nil
}

// ourLinks returns our TAPs' names mapped to the VM id in their alias ("" if
// none).
func ourLinks() (map[string]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, linkErr("list links", err)
	}
	out := map[string]string{}
	for _, l := range links {
		a := l.Attrs()
		if !ourLinkRE.MatchString(a.Name) {
			continue
		}
		out[a.Name] = strings.TrimPrefix(a.Alias, aliasPrefix)
		if !strings.HasPrefix(a.Alias, aliasPrefix) {
			out[a.Name] = ""
		}
	}
	return out, nil
}

func linkErr(op string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("network: %s: %w (%v)", op, ErrNoPermission, err)
	case errors.Is(err, os.ErrNotExist) && strings.Contains(op, "create TAP"):
		return fmt.Errorf("network: %s: %w (%v)", op, ErrNoTun, err)
	}
	return fmt.Errorf("network: %s: %w", op, err)
}

// writeSysctl sets a /proc/sys file to v unless it already holds v.
func writeSysctl(path, v string) error {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == v {
		return nil
	}
	if err != nil && errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network: sysctl %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("network: sysctl %s=%s: %w (%v)", path, v, ErrNoPermission, err)
		}
		return fmt.Errorf("network: sysctl %s=%s: %w", path, v, err)
	}
	return nil
}

// Check reports whether this process can set up VM networks: an error
// wrapping ErrNoTun when /dev/net/tun is missing or unusable, and one
// wrapping ErrNoPermission when the process lacks CAP_NET_ADMIN (both,
// joined, when both are missing).
func Check() error {
	var errs []error
	fi, err := os.Stat("/dev/net/tun")
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("%w: %v (load the tun module, or pass --device /dev/net/tun to the container)", ErrNoTun, err))
	case fi.Mode()&os.ModeCharDevice == 0:
		errs = append(errs, fmt.Errorf("%w: /dev/net/tun is not a character device", ErrNoTun))
	}
	hasCap, err := hasNetAdmin()
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("network: read capabilities: %w", err))
	case !hasCap:
		errs = append(errs, fmt.Errorf("%w: this process lacks CAP_NET_ADMIN (run as root, or grant the capability)", ErrNoPermission))
	}
	if len(errs) == 0 {
		f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
		switch {
		case errors.Is(err, os.ErrPermission):
			errs = append(errs, fmt.Errorf("%w: open /dev/net/tun: %v", ErrNoPermission, err))
		case err != nil:
			errs = append(errs, fmt.Errorf("%w: open /dev/net/tun: %v", ErrNoTun, err))
		default:
			f.Close()
		}
	}
	return errors.Join(errs...)
}

// hasNetAdmin reports whether CAP_NET_ADMIN is in the effective set.
func hasNetAdmin() (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, err
	}
	return data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) != 0, nil
}

// CheckNftables reports whether this process can use nf_tables over netlink.
func CheckNftables() error {
	c, err := newConn()
	if err != nil {
		return err
	}
	if _, err := c.ListTables(); err != nil {
		return fmt.Errorf("cannot list tables: %w", err)
	}
	return nil
}

// loopbackUp brings the namespace's loopback interface up if it is down.
func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return linkErr("find lo", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return linkErr("set lo up", err)
	}
	return nil
}
