package firecracker

import (
	"context"
	"errors"
	"fmt"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// FormatFull is the state format Save writes: Firecracker's microVM state
// file with the guest memory in a separate file (a Full snapshot).
const FormatFull = "firecracker-full"

// errJailedSnapshot refuses snapshots of jailed VMs: their files would
// have to be placed in and out of the chroot.
var errJailedSnapshot = errors.New("snapshots of VMs run through the jailer are not supported yet")

// Save implements vmm.Snapshotter: pause, PUT /snapshot/create (Full) to
// opts.State's path and opts.MemFile, then opts.Between. The guest is left
// paused.
func (b *Backend) Save(ctx context.Context, inst vmm.Instance, opts vmm.SaveOptions) (vmm.SaveResult, error) {
	if b.Jailer != nil {
		return vmm.SaveResult{}, errJailedSnapshot
	}
	if opts.MemFile == "" || opts.State == nil {
		return vmm.SaveResult{}, fmt.Errorf("firecracker snapshots need a state file and a memory file")
	}
	if err := b.Pause(ctx, inst); err != nil {
		return vmm.SaveResult{}, err
	}
	so := SnapshotOptions{SnapshotPath: opts.State.Name(), MemFilePath: opts.MemFile, Type: SnapshotFull}
	if err := b.CreateSnapshot(ctx, inst, so); err != nil {
		return vmm.SaveResult{}, err
	}
	if opts.Between != nil {
		if err := opts.Between(ctx); err != nil {
			return vmm.SaveResult{}, err
		}
	}
	return vmm.SaveResult{MemFile: true, Format: FormatFull}, nil
}

// Load implements vmm.Snapshotter: PUT /snapshot/load into a process that
// Launch started for a spec with Incoming, the memory file mapped by the
// File backend (private, copy-on-write), eth0 moved to opts.TAP and the
// vsock socket to this VM's. The guest is left paused.
func (b *Backend) Load(ctx context.Context, inst vmm.Instance, opts vmm.LoadOptions) error {
	if b.Jailer != nil {
		return errJailedSnapshot
	}
	if opts.Format != FormatFull {
		return fmt.Errorf("state format %q is not one this Firecracker backend writes", opts.Format)
	}
	return b.LoadSnapshot(ctx, inst, LoadOptions{
		SnapshotPath: opts.State.Name(), MemFilePath: opts.MemFile,
		TAP: opts.TAP, AgentSocket: inst.Agent,
	})
}

var _ vmm.Snapshotter = (*Backend)(nil)
