package firecracker

import (
	"context"
	"fmt"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// snapshotTimeout bounds a snapshot request whose context has no deadline:
// writing or mapping guest memory takes longer than a configuration call.
const snapshotTimeout = 5 * time.Minute

// SnapshotType is the kind of snapshot Firecracker writes.
type SnapshotType string

// Snapshot types.
const (
	// SnapshotFull writes all guest memory.
	SnapshotFull SnapshotType = "Full"
	// SnapshotDiff writes the memory dirtied since the last snapshot; it
	// needs Backend.TrackDirtyPages.
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotOptions says where CreateSnapshot writes. Paths are as the
// firecracker process sees them (inside the chroot with the jailer).
type SnapshotOptions struct {
	// SnapshotPath receives the microVM state.
	SnapshotPath string
	// MemFilePath receives the guest memory.
	MemFilePath string
	// Type is SnapshotFull or SnapshotDiff; empty means Full.
	Type SnapshotType
}

// LoadOptions says what LoadSnapshot restores. Paths are as the
// firecracker process sees them.
type LoadOptions struct {
	// SnapshotPath is the microVM state written by CreateSnapshot.
	SnapshotPath string
	// MemFilePath is the guest memory written by CreateSnapshot; it is
	// loaded through a "File" memory backend.
	MemFilePath string
	// ResumeVM resumes the guest once loaded; otherwise it stays paused.
	ResumeVM bool
	// TrackDirtyPages enables dirty page tracking, for later Diff snapshots.
	TrackDirtyPages bool
	// TAP, when not empty, replaces the host TAP device of eth0.
	TAP string
	// AgentSocket, when not empty, replaces the vsock Unix socket path
	// (needs a Firecracker recent enough to know vsock_override).
	AgentSocket string
}

// CreateSnapshot writes a snapshot of the VM (PUT /snapshot/create). The
// VM must be paused first.
func (b *Backend) CreateSnapshot(ctx context.Context, inst vmm.Instance, opts SnapshotOptions) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.ErrNotRunning
	}
	ctx, cancel := withDefaultTimeout(ctx, snapshotTimeout)
	defer cancel()
	body := snapshotCreate{SnapshotPath: opts.SnapshotPath, MemFilePath: opts.MemFilePath, SnapshotType: string(opts.Type)}
	if err := newClient(inst.Control).put(ctx, "/snapshot/create", body); err != nil {
		return fmt.Errorf("create snapshot: %w", notRunning(inst, err))
	}
	return nil
}

// LoadSnapshot restores a snapshot into a fresh firecracker process, as
// returned by Start (PUT /snapshot/load). Firecracker refuses it once the
// machine was configured.
func (b *Backend) LoadSnapshot(ctx context.Context, inst vmm.Instance, opts LoadOptions) error {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.ErrNotRunning
	}
	ctx, cancel := withDefaultTimeout(ctx, snapshotTimeout)
	defer cancel()
	body := snapshotLoad{
		SnapshotPath:    opts.SnapshotPath,
		MemBackend:      &memoryBackend{BackendType: "File", BackendPath: opts.MemFilePath},
		TrackDirtyPages: opts.TrackDirtyPages,
		ResumeVM:        opts.ResumeVM,
	}
	if opts.TAP != "" {
		body.NetworkOverrides = []networkOverride{{IfaceID: "eth0", HostDevName: opts.TAP}}
	}
	if opts.AgentSocket != "" {
		body.VsockOverride = &vsockOverride{UDSPath: opts.AgentSocket}
	}
	if err := newClient(inst.Control).put(ctx, "/snapshot/load", body); err != nil {
		return fmt.Errorf("load snapshot: %w", notRunning(inst, err))
	}
	return nil
}

// withDefaultTimeout gives ctx a deadline d away unless it has one.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}
