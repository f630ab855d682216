package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/netplan"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
)

// EgressPolicy is what a VM may reach outside the host. A new connection
// is judged in this order, first match wins: DenyOut drops; AllowOut
// accepts; with Internet false everything else drops; the safe defaults
// (metadata 169.254.0.0/16, loopback, private, shared, multicast and
// reserved ranges) drop; the rest is accepted. Rules are IPv4 addresses (a
// /32), CIDRs, exact domains ("pypi.org") or wildcards ("*.github.com");
// domains are enforced by SmolVM's DNS forwarder on the VM's gateway, which
// answers only allowed names and lets the guest reach the addresses of
// the answers for their TTL.
type EgressPolicy struct {
	// Internet reports whether public addresses are reachable by default.
	Internet bool `json:"internet"`
	// AllowOut lists destinations reachable even with Internet off or
	// inside a safe default range.
	AllowOut []string `json:"allow_out"`
	// DenyOut lists destinations never reachable; it wins over AllowOut.
	DenyOut []string `json:"deny_out"`
	// EgressRate caps the guest's outbound traffic, e.g. "10mbit"; empty
	// means no limit.
	EgressRate string `json:"egress_rate,omitempty"`
}

// Egress returns the egress policy c describes (with its defaults:
// internet on, no rules, no limit).
func (c VMConfig) Egress() EgressPolicy {
	p := EgressPolicy{Internet: c.Internet == nil || *c.Internet, AllowOut: slices.Clone(c.AllowOut), DenyOut: slices.Clone(c.DenyOut), EgressRate: c.EgressRate}
	if p.AllowOut == nil {
		p.AllowOut = []string{}
	}
	if p.DenyOut == nil {
		p.DenyOut = []string{}
	}
	return p
}

// withEgress returns c with p as its egress policy.
func (c VMConfig) withEgress(p EgressPolicy) VMConfig {
	internet := p.Internet
	c.Internet = &internet
	c.AllowOut, c.DenyOut, c.EgressRate = slices.Clone(p.AllowOut), slices.Clone(p.DenyOut), p.EgressRate
	return c
}

// netPolicy parses c's egress fields into the network package's policy;
// errors are *ConfigError named by the JSON field.
func (c VMConfig) netPolicy() (network.Policy, error) {
	e := c.Egress()
	p, err := network.ParsePolicy(e.Internet, e.AllowOut, e.DenyOut, e.EgressRate)
	var fe *network.FieldError
	if errors.As(err, &fe) {
		field := fe.Field
		for _, m := range [][2]string{{"AllowOut", "allow_out"}, {"DenyOut", "deny_out"}, {"EgressRate", "egress_rate"}} {
			field = strings.Replace(field, m[0], m[1], 1)
		}
		return network.Policy{}, configErr(field, fe.Value, fe.Reason)
	}
	return p, err
}

// normalizeEgress rewrites c's rules as the network package prints them
// ("Example.COM." becomes "example.com"); c must be valid.
func (c *VMConfig) normalizeEgress() {
	p, err := c.netPolicy()
	if err != nil {
		return
	}
	norm := func(in []string, rules []network.Rule) []string {
		if len(in) == 0 {
			return nil
		}
		out := make([]string, len(rules))
		for i, r := range rules {
			out[i] = r.String()
		}
		return out
	}
	c.AllowOut, c.DenyOut = norm(c.AllowOut, p.AllowOut), norm(c.DenyOut, p.DenyOut)
	for i, u := range c.DNSUpstream {
		if ap, err := parseUpstream(u); err == nil {
			c.DNSUpstream[i] = ap.String()
		}
	}
}

// validateEgress checks the egress and DNS forwarder fields of c.
func (c VMConfig) validateEgress() error {
	p, err := c.netPolicy()
	if err != nil {
		return err
	}
	hasEgress := c.Internet != nil || len(c.AllowOut) > 0 || len(c.DenyOut) > 0 || c.EgressRate != ""
	switch {
	case c.NoNetwork && hasEgress:
		return configErr("internet", "", "allow_out, deny_out, internet and egress_rate need networking; they cannot be set on a VM without network")
	case c.NoNetwork && len(c.DNSUpstream) > 0:
		return configErr("dns_upstream", strings.Join(c.DNSUpstream, ","), "needs networking; it cannot be set on a VM without network")
	}
	for _, a := range p.AllowOut {
		for _, d := range p.DenyOut {
			if a == d {
				return configErr("allow_out", a.String(), "is also in deny_out; a destination cannot be both allowed and denied")
			}
		}
	}
	if len(c.DNSServers) > 0 && p.HasDomains() {
		return configErr("dns_servers", strings.Join(c.DNSServers, ","), "cannot be used with domain rules in allow_out or deny_out: those are enforced by SmolVM's DNS forwarder on the gateway, which dns_servers replaces")
	}
	if len(c.DNSServers) > 0 && len(c.DNSUpstream) > 0 {
		return configErr("dns_upstream", strings.Join(c.DNSUpstream, ","), "is what SmolVM's DNS forwarder asks, and dns_servers makes the guest bypass the forwarder: give one or the other")
	}
	if len(c.DNSUpstream) > 3 {
		return configErr("dns_upstream", strings.Join(c.DNSUpstream, ","), "at most 3 resolvers")
	}
	for _, u := range c.DNSUpstream {
		if _, err := parseUpstream(u); err != nil {
			return err
		}
	}
	return nil
}

// parseUpstream reads a DNS upstream: an IPv4 address, optionally with a
// port (default 53).
func parseUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Is4() && ap.Port() != 0 {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
		return netip.AddrPort{}, configErr("dns_upstream", s, "must be an IPv4 address such as 192.0.2.53, optionally with a port (192.0.2.53:5353)")
	}
	return netip.AddrPortFrom(a, 53), nil
}

// usesForwarder reports whether the guest's resolver is SmolVM's DNS
// forwarder on its gateway (no dns_servers of its own).
func (c VMConfig) usesForwarder() bool {
	return !c.NoNetwork && c.AttachInterface == "" && len(c.DNSServers) == 0
}

// needsForwarder reports whether the VM cannot work as configured without
// the forwarder: its policy has domain rules or it names an upstream.
func (c VMConfig) needsForwarder() bool {
	p, err := c.netPolicy()
	return c.usesForwarder() && (err == nil && p.HasDomains() || len(c.DNSUpstream) > 0)
}

// applyEgress puts the VM's policy into its egress chain and registers it
// with the DNS forwarder (starting the forwarder if none runs). The VM's
// network must be set up.
func (h *Host) applyEgress(ctx context.Context, id string, p netplan.Plan, cfg VMConfig) error {
	pol, err := cfg.netPolicy()
	if err != nil {
		return err
	}
	if err := network.SetPolicy(ctx, netLease(id, p), pol); err != nil {
		return fmt.Errorf("egress policy: %w", err)
	}
	return h.registerDNS(ctx, id, p, cfg, pol)
}

// SetEgress replaces the VM's egress policy. It is validated first (a bad
// rule is ErrInvalidConfig and nothing changes), applied at once when the
// VM runs (in one nftables transaction; the DNS forwarder follows its new
// rules with the next query; connections the new policy refuses stop at
// their next packet), and recorded, so it holds after a restart.
func (vm *VM) SetEgress(ctx context.Context, p EgressPolicy) error {
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	row, rec, err := vm.load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return errNoVM("set egress", vm.id)
	}
	if err != nil {
		return wrapErr("set egress", vm.id, ErrBackend, err)
	}
	if rec.Config.NoNetwork {
		return wrapErr("set egress", vm.id, ErrState, errors.New("the VM has no network"))
	}
	if rec.Config.AttachInterface != "" {
		return errAttached("set egress", vm.id, rec.Config.AttachInterface)
	}
	old := rec.Config
	cfg := old.withEgress(p)
	if err := cfg.validateEgress(); err != nil {
		return wrapErr("set egress", vm.id, ErrInvalidConfig, err)
	}
	cfg.normalizeEgress()
	running := vm.running(ctx)
	var plan netplan.Plan
	if running {
		if plan, err = vm.h.plan(ctx, vm.id); err != nil {
			return wrapErr("set egress", vm.id, ErrBackend, err)
		}
		if err := vm.h.applyEgress(ctx, vm.id, plan, cfg); err != nil {
			vm.h.applyEgress(context.WithoutCancel(ctx), vm.id, plan, old) // back to what was
			return wrapErr("set egress", vm.id, ErrNetwork, err)
		}
	}
	rec.Config = cfg
	b, _ := json.Marshal(rec)
	if _, err := vm.h.st.UpdateVM(context.WithoutCancel(ctx), vm.id, func(v *store.VM) error {
		if v.PID != row.PID {
			return errors.New("the VM was restarted meanwhile")
		}
		v.Config = b
		return nil
	}); err != nil {
		if running {
			vm.h.applyEgress(context.WithoutCancel(ctx), vm.id, plan, old)
		}
		return wrapErr("set egress", vm.id, ErrBackend, err)
	}
	return vm.Refresh(ctx)
}

// ExposeOn forwards hostPort (0: pick a free one from 2200 up) on the host
// address hostIP to guestPort in the guest and returns the host port.
// hostIP "" or "127.0.0.1" answers on loopback only (the default);
// "0.0.0.0" on every address of the host; any other IPv4 address of the
// host on that address only. A host port already in use is an error
// matching ErrNetwork and ErrAlreadyExists.
func (vm *VM) ExposeOn(ctx context.Context, hostIP string, guestPort, hostPort int) (int, error) {
	if guestPort < 1 || guestPort > 65535 {
		return 0, wrapErr("expose", vm.id, ErrInvalidConfig, configErr("guest_port", fmt.Sprint(guestPort), "must be between 1 and 65535"))
	}
	if hostPort < 0 || hostPort > 65535 {
		return 0, wrapErr("expose", vm.id, ErrInvalidConfig, configErr("host_port", fmt.Sprint(hostPort), "must be between 1 and 65535 (0: pick one)"))
	}
	ip, err := checkHostIP(hostIP)
	if err != nil {
		return 0, wrapErr("expose", vm.id, ErrInvalidConfig, err)
	}
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	_, rec, err := vm.load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return 0, errNoVM("expose", vm.id)
	}
	if err != nil {
		return 0, wrapErr("expose", vm.id, ErrBackend, err)
	}
	if rec.Config.NoNetwork {
		return 0, wrapErr("expose", vm.id, ErrState, errors.New("the VM has no network"))
	}
	if rec.Config.AttachInterface != "" {
		return 0, errAttached("expose", vm.id, rec.Config.AttachInterface)
	}
	plan, err := vm.h.plan(ctx, vm.id)
	if err != nil {
		return 0, wrapErr("expose", vm.id, ErrBackend, err)
	}
	p, err := vm.h.st.AllocatePortOn(ctx, vm.id, guestPort, store.KindExpose, ip, hostPort)
	if err != nil {
		return 0, wrapErr("expose", vm.id, ErrNetwork, err)
	}
	if vm.running(ctx) {
		if err := network.AddForward(ctx, netForward(vm.id, plan, p)); err != nil {
			vm.h.st.ReleasePort(context.WithoutCancel(ctx), p.HostPort)
			return 0, wrapErr("expose", vm.id, ErrNetwork, err)
		}
	}
	return p.HostPort, nil
}

// checkHostIP validates the address a forward is published on and returns
// it as the store keeps it ("" for 127.0.0.1).
func checkHostIP(s string) (string, error) {
	if s == "" || s == "127.0.0.1" {
		return "", nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return "", configErr("host_ip", s, "must be an IPv4 address: 127.0.0.1 (the default), 0.0.0.0 (every address) or an address of this host")
	}
	if a.IsUnspecified() {
		return a.String(), nil
	}
	if err := (network.Forward{HostIP: a, HostPort: 1, GuestPort: 1, GuestIP: netip.MustParseAddr("172.16.0.2"), VMID: "x"}).Validate(); err != nil {
		var fe *network.FieldError
		if errors.As(err, &fe) {
			return "", configErr("host_ip", s, fe.Reason)
		}
		return "", err
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok && n.IP.Equal(net.IP(a.AsSlice())) {
			return a.String(), nil
		}
	}
	return "", configErr("host_ip", s, "is not an address of this host (see `ip -4 addr`); use 127.0.0.1, 0.0.0.0 or one of the host's addresses")
}

// hostIPOf renders the address a forward answers on.
func hostIPOf(p store.PortForward) string {
	if p.HostIP == "" {
		return "127.0.0.1"
	}
	return p.HostIP
}

// waitSSH returns once the VM's SSH forward reaches a listening sshd (its
// banner arrives through 127.0.0.1:PORT), and records that; a guest
// without sshd (the minimal image) has nothing to wait for.
func (s *startOp) waitSSH(ctx context.Context) error {
	if s.rec.Config.NoNetwork || s.plan.SSHPort == 0 {
		return nil
	}
	has, err := guestHasSSHD(s.bootCtx, s.client) // sshd.go
	if err != nil {
		return fmt.Errorf("look for sshd: %w", err)
	}
	if !has {
		return nil
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(s.plan.SSHPort))
	delay := 20 * time.Millisecond
	for {
		if sshBanner(s.bootCtx, addr) {
			break
		}
		select {
		case <-s.bootCtx.Done():
			return s.bootErr(fmt.Errorf("sshd did not answer through %s: %w", addr, s.bootCtx.Err()))
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
	_, err = s.h().st.UpdateVM(ctx, s.vm.id, func(v *store.VM) error {
		var rec record
		if err := json.Unmarshal(v.Config, &rec); err != nil {
			return err
		}
		rec.SSHReadyPID = s.inst.PID
		v.Config, _ = json.Marshal(rec)
		return nil
	})
	return err
}

// sshBanner reports whether an SSH server's banner arrives from addr.
func sshBanner(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "SSH-"
}

// clone returns a deep copy of e (nil for nil).
func (e *EgressPolicy) clone() *EgressPolicy {
	if e == nil {
		return nil
	}
	c := *e
	c.AllowOut, c.DenyOut = slices.Clone(e.AllowOut), slices.Clone(e.DenyOut)
	return &c
}
