package smolvm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/smolvm-go/smolvm/internal/netplan"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// netLease is the network package's view of a VM's identity.
func netLease(id string, p netplan.Plan) network.Lease {
	return network.Lease{VMID: id, TAP: p.TAP, MAC: p.MAC, GuestIP: p.GuestIP, Gateway: p.Gateway, PrefixLen: netplan.PrefixLen}
}

func netForward(id string, p netplan.Plan, f store.PortForward) network.Forward {
	fw := network.Forward{HostPort: uint16(f.HostPort), GuestPort: uint16(f.GuestPort), GuestIP: p.GuestIP, VMID: id}
	fw.HostIP, _ = netip.ParseAddr(f.HostIP) // "" (127.0.0.1) unless published elsewhere
	return fw
}

// setupNetwork makes a VM's TAP device, NAT and isolation rules, its
// egress policy (all its rules in one nftables batch) and its port
// forwards exist. It is idempotent.
func (h *Host) setupNetwork(ctx context.Context, id string, p netplan.Plan, cfg VMConfig) error {
	if err := network.Check(); err != nil {
		return err
	}
	pol, err := cfg.netPolicy()
	if err != nil {
		return err
	}
	if err := network.Setup(ctx, netLease(id, p), pol); err != nil {
		return fmt.Errorf("set up %s: %w", p.TAP, err)
	}
	ports, err := h.st.Ports(ctx, id)
	if err != nil {
		return err
	}
	for _, f := range ports {
		if err := network.AddForward(ctx, netForward(id, p, f)); err != nil {
			return fmt.Errorf("forward host port %d: %w", f.HostPort, err)
		}
	}
	return nil
}

// teardownNetwork removes a VM's TAP device and every rule of it. Missing
// pieces count as removed, so it is safe to call at any point.
func (h *Host) teardownNetwork(ctx context.Context, id string, p netplan.Plan) error {
	if attached, err := h.detachNetwork(ctx, id, p); attached {
		return err
	}
	return errors.Join(h.forgetDNS(id), network.Teardown(ctx, netLease(id, p)))
}

// PortInfo is a host TCP port forwarded to a guest port.
type PortInfo struct {
	// HostPort is the port on the host.
	HostPort int `json:"host_port"`
	// GuestPort is the port in the guest.
	GuestPort int `json:"guest_port"`
	// Kind is "ssh" for the SSH forward, "expose" for ExposeLocal.
	Kind string `json:"kind"`
	// HostIP is the host address the forward answers on: 127.0.0.1
	// unless published elsewhere, 0.0.0.0 for every address.
	HostIP string `json:"host_ip"`
}

// ExposeLocal forwards hostPort (0: pick a free one from 2200 up) on the
// host's 127.0.0.1 to guestPort in the guest and returns the host port. A
// host port already in use is an error matching ErrNetwork and
// ErrAlreadyExists. ExposeOn publishes on another host address.
func (vm *VM) ExposeLocal(ctx context.Context, guestPort, hostPort int) (int, error) {
	return vm.ExposeOn(ctx, "", guestPort, hostPort)
}

// UnexposeLocal removes the forward of hostPort.
func (vm *VM) UnexposeLocal(ctx context.Context, hostPort int) error {
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	ports, err := vm.h.st.Ports(ctx, vm.id)
	if err != nil {
		return wrapErr("unexpose", vm.id, ErrBackend, err)
	}
	for _, p := range ports {
		if p.HostPort != hostPort {
			continue
		}
		if plan, err := vm.h.plan(ctx, vm.id); err == nil {
			if err := network.RemoveForward(ctx, netForward(vm.id, plan, p)); err != nil {
				return wrapErr("unexpose", vm.id, ErrNetwork, err)
			}
		}
		return wrapErr("unexpose", vm.id, ErrBackend, vm.h.st.ReleasePort(ctx, hostPort))
	}
	return wrapErr("unexpose", vm.id, ErrNotFound, fmt.Errorf("host port %d is not forwarded to this VM", hostPort))
}

// Ports lists the VM's port forwards.
func (vm *VM) Ports(ctx context.Context) ([]PortInfo, error) {
	ps, err := vm.h.st.Ports(ctx, vm.id)
	if err != nil {
		return nil, wrapErr("ports", vm.id, ErrBackend, err)
	}
	out := make([]PortInfo, 0, len(ps))
	for _, p := range ps {
		out = append(out, PortInfo{HostPort: p.HostPort, GuestPort: p.GuestPort, Kind: p.Kind, HostIP: hostIPOf(p)})
	}
	return out, nil
}

// running reports whether the VM's VMM process is alive.
func (vm *VM) running(ctx context.Context) bool {
	row, err := vm.h.st.GetVM(ctx, vm.id)
	return err == nil && vmm.Alive(row.PID, row.PIDStart)
}
