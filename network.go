package smolvm

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/smolvm-go/smolvm/internal/netplan"
)

// Network defaults, from SmolVM's NetworkConfig.
const (
	// DefaultGatewayIP is the host side of the first guest subnet.
	DefaultGatewayIP = "172.16.0.1"
	// DefaultNetmask is the mask of every guest subnet.
	DefaultNetmask = "255.255.255.0"
)

// NetworkSpec holds the values a NetworkConfig is made from. Empty
// GatewayIP and Netmask take the defaults; SSHHostPort 0 means no forwarding.
type NetworkSpec struct {
	GuestIP     string // required, e.g. "172.16.0.2"
	GatewayIP   string // default "172.16.0.1"
	Netmask     string // default "255.255.255.0"
	TapDevice   string // required, e.g. "smol0"
	GuestMAC    string // required, e.g. "AA:FC:00:00:00:01"
	SSHHostPort int    // optional host TCP port forwarded to guest port 22
}

// NetworkConfig is a VM's network: its address, gateway, mask, TAP device,
// MAC and optional SSH port forward. It is immutable: its fields are
// reachable only through methods, so no holder of a NetworkConfig can change
// a VM's network. To "change" one, make a new one with NewNetworkConfig.
// The zero value is not a valid configuration.
type NetworkConfig struct {
	guestIP   netip.Addr
	gatewayIP netip.Addr
	netmask   netip.Addr
	tap       string
	mac       string
	sshPort   int
}

// NewNetworkConfig applies the defaults to s, validates it and returns the
// resulting configuration. A rule broken is a *ConfigError naming the field.
func NewNetworkConfig(s NetworkSpec) (*NetworkConfig, error) {
	if s.GatewayIP == "" {
		s.GatewayIP = DefaultGatewayIP
	}
	if s.Netmask == "" {
		s.Netmask = DefaultNetmask
	}
	guest, err := parseIPv4("guest_ip", s.GuestIP)
	if err != nil {
		return nil, err
	}
	gw, err := parseIPv4("gateway_ip", s.GatewayIP)
	if err != nil {
		return nil, err
	}
	mask, err := parseIPv4("netmask", s.Netmask)
	if err != nil {
		return nil, err
	}
	bits, ok := maskBits(mask)
	if !ok || bits == 0 || bits > 30 {
		return nil, configErr("netmask", s.Netmask, "must be a contiguous IPv4 netmask between /1 and /30")
	}
	gp, _ := guest.Prefix(bits)
	wp, _ := gw.Prefix(bits)
	if gp != wp {
		return nil, configErr("gateway_ip", s.GatewayIP, fmt.Sprintf("must be in the guest's subnet %s", gp))
	}
	if guest == gw {
		return nil, configErr("guest_ip", s.GuestIP, "must differ from gateway_ip")
	}
	for _, f := range []struct {
		name string
		a    netip.Addr
	}{{"guest_ip", guest}, {"gateway_ip", gw}} {
		if f.a == gp.Addr() || f.a == broadcast(gp) {
			return nil, configErr(f.name, f.a.String(), fmt.Sprintf("must not be the network or broadcast address of %s", gp))
		}
	}
	if err := validateTapName(s.TapDevice); err != nil {
		return nil, err
	}
	mac, err := normalizeMAC(s.GuestMAC)
	if err != nil {
		return nil, err
	}
	if s.SSHHostPort < 0 || s.SSHHostPort > 65535 {
		return nil, configErr("ssh_host_port", fmt.Sprint(s.SSHHostPort), "must be between 1 and 65535 (0 or absent: no forwarding)")
	}
	return &NetworkConfig{guestIP: guest, gatewayIP: gw, netmask: mask, tap: s.TapDevice, mac: mac, sshPort: s.SSHHostPort}, nil
}

// GuestIP returns the guest's IPv4 address, e.g. "172.16.0.2".
func (n NetworkConfig) GuestIP() string { return n.guestIP.String() }

// GatewayIP returns the host side of the TAP device, e.g. "172.16.0.1".
func (n NetworkConfig) GatewayIP() string { return n.gatewayIP.String() }

// Netmask returns the guest network's mask, e.g. "255.255.255.0".
func (n NetworkConfig) Netmask() string { return n.netmask.String() }

// PrefixLen returns the netmask as a prefix length, e.g. 24.
func (n NetworkConfig) PrefixLen() int { b, _ := maskBits(n.netmask); return b }

// TapDevice returns the host TAP device's name, e.g. "smol0".
func (n NetworkConfig) TapDevice() string { return n.tap }

// GuestMAC returns the guest NIC's MAC address in upper case, e.g. "AA:FC:00:00:00:01".
func (n NetworkConfig) GuestMAC() string { return n.mac }

// SSHHostPort returns the host TCP port forwarded to the guest's port 22, or
// 0 when there is no forwarding.
func (n NetworkConfig) SSHHostPort() int { return n.sshPort }

// Spec returns the values n was made from, with defaults applied. Changing the
// returned value does not change n; pass it to NewNetworkConfig for a new one.
func (n NetworkConfig) Spec() NetworkSpec {
	return NetworkSpec{
		GuestIP:     n.GuestIP(),
		GatewayIP:   n.GatewayIP(),
		Netmask:     n.Netmask(),
		TapDevice:   n.tap,
		GuestMAC:    n.mac,
		SSHHostPort: n.sshPort,
	}
}

// networkConfigOf is the public view of a VM's network identity.
func networkConfigOf(p netplan.Plan) (*NetworkConfig, error) {
	return NewNetworkConfig(NetworkSpec{
		GuestIP:     p.GuestIP.String(),
		GatewayIP:   p.Gateway.String(),
		Netmask:     p.Netmask(),
		TapDevice:   p.TAP,
		GuestMAC:    p.MAC,
		SSHHostPort: p.SSHPort,
	})
}

// String renders n for humans.
func (n NetworkConfig) String() string {
	s := fmt.Sprintf("%s/%d via %s on %s (%s)", n.GuestIP(), n.PrefixLen(), n.GatewayIP(), n.tap, n.mac)
	if n.sshPort != 0 {
		s += fmt.Sprintf(", ssh localhost:%d", n.sshPort)
	}
	return s
}

type networkJSON struct {
	GuestIP     string `json:"guest_ip"`
	GatewayIP   string `json:"gateway_ip"`
	Netmask     string `json:"netmask"`
	TapDevice   string `json:"tap_device"`
	GuestMAC    string `json:"guest_mac"`
	SSHHostPort *int   `json:"ssh_host_port"`
}

// MarshalJSON encodes n with SmolVM's snake_case names; ssh_host_port is null
// when there is no forwarding.
func (n NetworkConfig) MarshalJSON() ([]byte, error) {
	j := networkJSON{GuestIP: n.GuestIP(), GatewayIP: n.GatewayIP(), Netmask: n.Netmask(), TapDevice: n.tap, GuestMAC: n.mac}
	if n.sshPort != 0 {
		p := n.sshPort
		j.SSHHostPort = &p
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes and validates a configuration written by MarshalJSON
// (or by SmolVM), applying the defaults to absent fields.
func (n *NetworkConfig) UnmarshalJSON(b []byte) error {
	var j networkJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	s := NetworkSpec{GuestIP: j.GuestIP, GatewayIP: j.GatewayIP, Netmask: j.Netmask, TapDevice: j.TapDevice, GuestMAC: j.GuestMAC}
	if j.SSHHostPort != nil {
		if *j.SSHHostPort == 0 {
			return configErr("ssh_host_port", "0", "must be between 1 and 65535 or null")
		}
		s.SSHHostPort = *j.SSHHostPort
	}
	c, err := NewNetworkConfig(s)
	if err != nil {
		return err
	}
	*n = *c
	return nil
}

func parseIPv4(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, configErr(field, "", "is required (an IPv4 address such as 172.16.0.2)")
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, configErr(field, s, "must be an IPv4 address in dotted-quad form")
	}
	return a, nil
}

// maskBits returns the prefix length of a contiguous mask.
func maskBits(m netip.Addr) (int, bool) {
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n := 0
	for v&0x80000000 != 0 {
		n++
		v <<= 1
	}
	return n, v == 0
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= ^uint32(0) >> p.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func validateTapName(s string) error {
	switch {
	case s == "":
		return configErr("tap_device", "", "is required (a Linux interface name such as smol0)")
	case len(s) > 15:
		return configErr("tap_device", s, "must be at most 15 characters (Linux IFNAMSIZ)")
	case s == "." || s == "..":
		return configErr("tap_device", s, "must not be . or ..")
	case strings.ContainsAny(s, "/:"):
		return configErr("tap_device", s, "must not contain '/' or ':'")
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r > 0x7e {
			return configErr("tap_device", s, "must be printable ASCII without whitespace")
		}
	}
	return nil
}

var macRE = regexp.MustCompile(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$`)

func normalizeMAC(s string) (string, error) {
	if s == "" {
		return "", configErr("guest_mac", "", "is required (a MAC address such as AA:FC:00:00:00:01)")
	}
	if !macRE.MatchString(s) {
		return "", configErr("guest_mac", s, "must be six colon-separated hex octets, like AA:FC:00:00:00:01")
	}
	var first byte
	fmt.Sscanf(s[:2], "%02x", &first)
	if first&1 != 0 {
		return "", configErr("guest_mac", s, "must be a unicast address (low bit of the first octet clear)")
	}
	if strings.EqualFold(s, "00:00:00:00:00:00") {
		return "", configErr("guest_mac", s, "must not be all zeros")
	}
	return strings.ToUpper(s), nil
}
