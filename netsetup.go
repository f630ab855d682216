package smolvm

import (
	"context"
	"errors"
	"fmt"

	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

func netLease(l store.Lease) network.Lease {
	return network.Lease{VMID: l.VMID, TAP: l.TAP, MAC: l.MAC, GuestIP: l.IP, Gateway: l.Gateway, PrefixLen: store.LeasePrefixLen}
}

func netForward(l store.Lease, p store.PortForward) network.Forward {
	return network.Forward{HostPort: uint16(p.HostPort), GuestPort: uint16(p.GuestPort), GuestIP: l.IP, VMID: l.VMID}
}

// netErr tags a network package error with ErrNetwork, keeping its message.
func netErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, network.ErrPortInUse) {
		return kindErr{ErrNetwork, kindErr{ErrAlreadyExists, err}}
	}
	return kindErr{ErrNetwork, err}
}

// setupNetwork makes a VM's TAP device, NAT and isolation rules and its
// port forwards exist. It is idempotent.
func (h *host) setupNetwork(ctx context.Context, l store.Lease) error {
	if err := network.Check(); err != nil {
		return netErr(err)
	}
	if err := network.Setup(ctx, netLease(l)); err != nil {
		return netErr(fmt.Errorf("set up %s: %w", l.TAP, err))
	}
	ports, err := h.st.Ports(ctx, l.VMID)
	if err != nil {
		return err
	}
	for _, p := range ports {
		if err := network.AddForward(ctx, netForward(l, p)); err != nil {
			return netErr(fmt.Errorf("forward host port %d: %w", p.HostPort, err))
		}
	}
	return nil
}

// teardownNetwork removes a VM's TAP device and every rule of it. Missing
// pieces count as removed, so it is safe to call at any point.
func (h *host) teardownNetwork(ctx context.Context, id string) error {
	l, err := h.st.LeaseOf(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return netErr(network.Teardown(ctx, netLease(l)))
}

// PortInfo is a host TCP port forwarded to a guest port.
type PortInfo struct {
	// HostPort is the port on the host (localhost and the host's addresses).
	HostPort int `json:"host_port"`
	// GuestPort is the port in the guest.
	GuestPort int `json:"guest_port"`
	// Kind is "ssh" for the SSH forward, "expose" for ExposeLocal.
	Kind string `json:"kind"`
}

// ExposeLocal forwards hostPort (0: pick a free one from 2200 up) on the
// host to guestPort in the guest and returns the host port. A host port
// already in use is an error matching ErrNetwork and ErrAlreadyExists.
func (vm *VM) ExposeLocal(ctx context.Context, guestPort, hostPort int) (int, error) {
	if guestPort < 1 || guestPort > 65535 {
		return 0, wrapErr("expose", vm.id, ErrInvalidConfig, configErr("guest_port", fmt.Sprint(guestPort), "must be between 1 and 65535"))
	}
	if hostPort < 0 || hostPort > 65535 {
		return 0, wrapErr("expose", vm.id, ErrInvalidConfig, configErr("host_port", fmt.Sprint(hostPort), "must be between 1 and 65535 (0: pick one)"))
	}
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	l, err := vm.h.st.LeaseOf(ctx, vm.id)
	if errors.Is(err, store.ErrNotFound) {
		return 0, wrapErr("expose", vm.id, ErrNetwork, errors.New("the VM has no network"))
	}
	if err != nil {
		return 0, wrapErr("expose", vm.id, ErrBackend, err)
	}
	p, err := vm.h.st.AllocatePort(ctx, vm.id, guestPort, store.KindExpose, hostPort)
	if err != nil {
		return 0, wrapErr("expose", vm.id, ErrNetwork, kindErr{ErrNetwork, storeErr(err)})
	}
	if vm.running(ctx) {
		if err := network.AddForward(ctx, netForward(l, p)); err != nil {
			vm.h.st.ReleasePort(context.WithoutCancel(ctx), p.HostPort)
			return 0, wrapErr("expose", vm.id, ErrNetwork, netErr(err))
		}
	}
	return p.HostPort, nil
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
		if l, err := vm.h.st.LeaseOf(ctx, vm.id); err == nil {
			if err := network.RemoveForward(ctx, netForward(l, p)); err != nil {
				return wrapErr("unexpose", vm.id, ErrNetwork, netErr(err))
			}
		}
		return wrapErr("unexpose", vm.id, ErrBackend, storeErr(vm.h.st.ReleasePort(ctx, hostPort)))
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
		out = append(out, PortInfo{HostPort: p.HostPort, GuestPort: p.GuestPort, Kind: p.Kind})
	}
	return out, nil
}

// running reports whether the VM's VMM process is alive.
func (vm *VM) running(ctx context.Context) bool {
	row, err := vm.h.st.GetVM(ctx, vm.id)
	return err == nil && vmm.Alive(row.PID, row.PIDStart)
}
