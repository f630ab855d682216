package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/netplan"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Attached networking (VMConfig.AttachInterface): the VM's NIC takes over
// an existing interface of the calling process's network namespace, such
// as a Kubernetes pod's eth0. The VM's TAP is made in that namespace and
// joined to the interface with tc redirects (package network, Attach); the
// guest's eth0 gets the interface's MAC, its IPv4 address and prefix and
// the namespace's default gateway, so the interface's IP is the guest's.
// No NAT, port forward, SSH forward, egress policy or DNS forwarder
// applies: the guest is on the interface's network as the namespace was.
// The interface keeps its address on the host side: with its ingress
// redirected to the guest, the namespace's own stack no longer receives
// through it, and keeping it means a stopped VM starts again with the same
// identity (read again at every start). A guest may send only IPv4 and ARP
// frames with its own MAC and address; everything else from its TAP is
// dropped.

// attachIdentity is what a VM took over from its interface, recorded at
// creation and refreshed at every start.
type attachIdentity struct {
	// Interface is the interface's name.
	Interface string `json:"interface"`
	// MAC is its MAC address, upper case; the guest's eth0 uses it.
	MAC string `json:"mac"`
	// Addr is its IPv4 address with prefix, e.g. 10.88.0.5/16.
	Addr netip.Prefix `json:"addr"`
	// Gateway is the default gateway through it.
	Gateway netip.Addr `json:"gateway"`
	// MTU is its MTU, which the guest's eth0 takes.
	MTU int `json:"mtu,omitempty"`
}

// validateAttach checks attach_interface and the fields it excludes.
func (c VMConfig) validateAttach() error {
	if c.AttachInterface == "" {
		return nil
	}
	name := c.AttachInterface
	if len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\x00") {
		return configErr("attach_interface", name, "must be a Linux interface name (at most 15 characters, no '/', ':' or whitespace)")
	}
	if strings.HasPrefix(name, netplan.TAPPrefix) {
		return configErr("attach_interface", name, "must not be a SmolVM TAP ("+netplan.TAPPrefix+"*)")
	}
	excl := func(field, value string) error {
		return configErr(field, value, fmt.Sprintf("cannot be used with attach_interface %q: an attached VM is on the interface's network directly, without SmolVM's NAT, forwards, egress policy or DNS forwarder", name))
	}
	switch {
	case c.NoNetwork:
		return excl("no_network", "true")
	case c.SSHHostPort != 0:
		return excl("ssh_host_port", fmt.Sprint(c.SSHHostPort))
	case c.Internet != nil:
		return excl("internet", fmt.Sprint(*c.Internet))
	case len(c.AllowOut) > 0:
		return excl("allow_out", strings.Join(c.AllowOut, ","))
	case len(c.DenyOut) > 0:
		return excl("deny_out", strings.Join(c.DenyOut, ","))
	case c.EgressRate != "":
		return excl("egress_rate", c.EgressRate)
	case len(c.DNSUpstream) > 0:
		return excl("dns_upstream", strings.Join(c.DNSUpstream, ","))
	case c.FromSnapshot != "":
		return excl("from_snapshot", c.FromSnapshot)
	}
	return nil
}

// inspectAttach reads the identity a VM takes over from the interface
// called name in the current network namespace.
func inspectAttach(name string) (*attachIdentity, error) {
	info, err := network.InspectInterface(name)
	if err != nil {
		return nil, configErr("attach_interface", name, err.Error())
	}
	return &attachIdentity{Interface: name, MAC: strings.ToUpper(info.MAC.String()), Addr: info.Addr, Gateway: info.Gateway, MTU: info.MTU}, nil
}

// attachment is the network package's view of an attached VM.
func (a *attachIdentity) attachment(id string, p netplan.Plan) network.Attachment {
	mac, _ := net.ParseMAC(a.MAC)
	return network.Attachment{VMID: id, TAP: p.TAP, Iface: a.Interface, MAC: mac, GuestIP: a.Addr.Addr()}
}

// networkConfig is the public view of an attached VM's network. It is
// made directly, not through NewNetworkConfig: a pod's address may be a
// /32 with a gateway outside it, which a SmolVM subnet never is.
func (a *attachIdentity) networkConfig(tap string) (*NetworkConfig, error) {
	mac, err := normalizeMAC(a.MAC)
	if err != nil {
		return nil, err
	}
	mask, _ := netip.AddrFromSlice(net.CIDRMask(a.Addr.Bits(), 32))
	return &NetworkConfig{guestIP: a.Addr.Addr(), gatewayIP: a.Gateway, netmask: mask, tap: tap, mac: mac}, nil
}

// bootNetwork fills the guest's NIC and boot parameters of an attached VM:
// the interface's MAC, address, gateway and MTU; resolvers from
// dns_servers (without them the guest's init names the gateway, as for
// any VM; no forwarder of ours answers there).
func (a *attachIdentity) bootNetwork(spec *vmm.Spec, bp *bootparams.Params, p netplan.Plan, cfg VMConfig) {
	spec.NIC = &vmm.NIC{TAP: p.TAP, MAC: a.MAC}
	bp.Addr, bp.Gateway = a.Addr, a.Gateway
	if a.MTU >= 68 && a.MTU != 1500 {
		bp.MTU = a.MTU
	}
	for _, d := range cfg.DNSServers {
		bp.DNS = append(bp.DNS, netip.MustParseAddr(d)) // validated by Create
	}
}

// attachNetwork reads the interface again (recording what changed) and
// joins the VM's TAP to it.
func (s *startOp) attachNetwork(ctx context.Context) error {
	if err := network.Check(); err != nil {
		return err
	}
	a, err := inspectAttach(s.rec.Config.AttachInterface)
	if err != nil {
		return err
	}
	if s.rec.Attach == nil || *a != *s.rec.Attach {
		s.rec.Attach = a
		b, _ := json.Marshal(s.rec)
		if _, err := s.h().st.UpdateVM(ctx, s.vm.id, func(v *store.VM) error { v.Config = b; return nil }); err != nil {
			return err
		}
	}
	if err := network.Attach(ctx, a.attachment(s.vm.id, s.plan)); err != nil {
		if errors.Is(err, network.ErrInUse) {
			return fmt.Errorf("attach_interface %s: %w: %w", a.Interface, err, ErrAlreadyExists)
		}
		return fmt.Errorf("attach to %s: %w", a.Interface, err)
	}
	return nil
}

// detachNetwork removes an attached VM's TAP and tc redirects; handled
// reports whether the VM is an attached one.
func (h *Host) detachNetwork(ctx context.Context, id string, p netplan.Plan) (handled bool, err error) {
	row, err := h.st.GetVM(ctx, id)
	if err != nil {
		return false, nil
	}
	var rec record
	if json.Unmarshal(row.Config, &rec) != nil || rec.Attach == nil {
		return false, nil
	}
	return true, network.Detach(ctx, rec.Attach.attachment(id, p))
}

// errAttached refuses what an attached VM cannot have.
func errAttached(op, id, iface string) error {
	return wrapErr(op, id, ErrState, fmt.Errorf("the VM is attached to interface %s: SmolVM's forwards and egress policy do not apply to it", iface))
}
