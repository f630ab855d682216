package vmm

import (
	"context"
	"os"
)

// SaveOptions say where Snapshotter.Save writes a running VM's state.
type SaveOptions struct {
	// State receives the VMM's device state (and the guest's RAM when it
	// is not in a memory file the backend can copy).
	State *os.File
	// MemFile is the path of a new file that receives a sparse copy of the
	// guest's RAM when the RAM lives in shared memory.
	MemFile string
	// Between runs while the guest is paused, after the state is written
	// and before Save returns (e.g. to copy the disk at the same instant).
	Between func(ctx context.Context) error
}

// SaveResult says what Save wrote.
type SaveResult struct {
	// MemFile reports whether RAM was written to SaveOptions.MemFile;
	// otherwise it is inside the state stream.
	MemFile bool
	// Format names the state's format, which Load must be told again
	// (e.g. "qemu-migration+ignore-shared").
	Format string
}

// Snapshotter is implemented by backends that can save a running VM's
// memory and device state and load it into a VMM launched with
// Spec.Incoming.
type Snapshotter interface {
	// Save pauses the guest's vCPUs and writes its state as opts says. The
	// guest is left paused: the caller resumes it (Backend.Resume) or ends
	// the VMM.
	Save(ctx context.Context, inst Instance, opts SaveOptions) (SaveResult, error)
	// Load reads a state written by Save into the VMM of inst, which was
	// launched with Spec.Incoming. The guest is left paused.
	Load(ctx context.Context, inst Instance, opts LoadOptions) error
}

// LoadOptions say what Snapshotter.Load reads.
type LoadOptions struct {
	// State is the state Save wrote.
	State *os.File
	// Format is SaveResult.Format of that save.
	Format string
	// MemFile is the RAM file Save wrote (when SaveResult.MemFile).
	MemFile string
	// TAP is the host TAP device the restored VM's NIC uses now (backends
	// that bind the NIC at load time); empty for none.
	TAP string
}
