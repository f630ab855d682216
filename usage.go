package smolvm

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Usage is what a running VM uses of the host, read from its cgroup
// (smolvm/<id>): the VMM and every thread it runs, guest and emulation
// together. The numbers come from the host kernel, not from the guest.
type Usage struct {
	// Cgroup is the VM's cgroup, relative to the hierarchy's root.
	Cgroup string `json:"cgroup"`
	// MemoryBytes is the memory charged to the cgroup now (guest RAM the
	// guest touched, the VMM's own heap, page cache of its files).
	MemoryBytes int64 `json:"memory_bytes"`
	// MemoryPeakBytes is the most it has used (0 where the host does not
	// account it: cgroup v2 before Linux 5.19).
	MemoryPeakBytes int64 `json:"memory_peak_bytes,omitempty"`
	// MemoryLimitBytes is the cgroup's memory limit (0: none).
	MemoryLimitBytes int64 `json:"memory_limit_bytes,omitempty"`
	// Tasks is the number of the VMM's processes and threads.
	Tasks int64 `json:"tasks"`
	// CPU is the CPU time the VM has used since it started.
	CPU time.Duration `json:"cpu_ns"`
}

// Usage reads the running VM's resource use from its cgroup. It is
// ErrState when the VM does not run, and ErrUnavailable when this process
// manages no cgroups (not root, or a host without a cgroup hierarchy).
func (vm *VM) Usage(ctx context.Context) (Usage, error) {
	const op = "usage"
	if st := vm.Info().Status; st != StateRunning {
		return Usage{}, wrapErr(op, vm.id, ErrState, fmt.Errorf("the VM is not running (status %s)", st))
	}
	if !useCgroups() {
		return Usage{}, wrapErr(op, vm.id, ErrUnavailable, errors.New("no per-VM cgroups here (they need root and a cgroup hierarchy)"))
	}
	g, err := cgroupHost().Open(vm.h.cgroupName(vm.id))
	if err != nil {
		return Usage{}, wrapErr(op, vm.id, ErrUnavailable, err)
	}
	s, err := g.Stats()
	if err != nil {
		return Usage{}, wrapErr(op, vm.id, ErrUnavailable, err)
	}
	u := Usage{Cgroup: g.RelPath(), MemoryBytes: s.MemoryBytes, MemoryPeakBytes: s.MemoryPeakBytes, Tasks: s.Pids, CPU: s.CPU}
	if l, err := g.Limits(); err == nil {
		u.MemoryLimitBytes = l.MemoryBytes
	}
	return u, nil
}
