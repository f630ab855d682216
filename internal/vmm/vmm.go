// Package vmm defines the Backend interface that starts and controls a VM's
// monitor process (QEMU or Firecracker), and the pieces every backend
// shares: acceleration detection and process liveness.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"
)

// Error kinds of backends; check them with errors.Is.
var (
	// ErrNotRunning means the VMM process is gone.
	ErrNotRunning = errors.New("vmm not running")
	// ErrUnavailable means the backend cannot run on this host (binary or device missing).
	ErrUnavailable = errors.New("backend unavailable")
)

// Accel is how guest code executes.
type Accel string

// Accelerations.
const (
	// AccelAuto picks KVM where it can run a standard guest, TCG otherwise.
	AccelAuto Accel = "auto"
	// AccelKVM runs guest code on the CPU through /dev/kvm.
	AccelKVM Accel = "kvm"
	// AccelTCG emulates the CPU in software (QEMU only).
	AccelTCG Accel = "tcg"
)

// Disk is a block device given to the guest, in order (the first is /dev/vda).
type Disk struct {
	// Path is the disk image file.
	Path string
	// ReadOnly attaches the disk read-only.
	ReadOnly bool
}

// NIC is the guest's network interface, backed by a host TAP device.
type NIC struct {
	// TAP is the host TAP device's name; it must exist.
	TAP string
	// MAC is the guest's MAC address.
	MAC string
}

// Spec describes a VM to launch.
type Spec struct {
	// ID is the VM id, used in process titles and logs.
	ID string
	// Dir is the VM's private runtime directory (mode 0700) for sockets.
	Dir string
	// Kernel is the kernel image: a bzImage for QEMU, an ELF vmlinux for Firecracker.
	Kernel string
	// Initrd is the initramfs.
	Initrd string
	// Cmdline is the kernel command line, without the console and
	// acceleration words the backend adds itself.
	Cmdline string
	// VCPUs is the number of virtual CPUs.
	VCPUs int
	// MemoryMiB is the guest memory.
	MemoryMiB int
	// Disks are the block devices, root first.
	Disks []Disk
	// NIC is the network interface; nil means none.
	NIC *NIC
	// VsockCID is the guest's vsock context id, used where the backend has vsock.
	VsockCID uint32
	// ConsoleLog is the file that receives the guest's serial console.
	ConsoleLog string
	// Accel is the requested acceleration; AccelAuto decides per host.
	Accel Accel
	// Machine is the QEMU machine type ("microvm" or "q35"); empty means microvm.
	Machine string
	// Shares are host directories shared with the guest (virtio-fs); only
	// backends whose Requirements say HostFolders take them.
	Shares []Share

	// Snapshots (see snapshot.go).

	// Incoming makes the VMM wait for a saved state (Snapshotter.Load)
	// instead of booting the kernel.
	Incoming bool

	// Confinement and limits (issue 13, security).

	// RunAs, when not nil, is the unprivileged identity the VMM runs as.
	// The backend then hands the VMM every file, socket and device it
	// needs as an open descriptor, so the VMM needs no access by path.
	RunAs *Identity
	// Start, when not nil, starts the VMM's process in place of
	// cmd.Start: inside the VM's cgroup from its first instruction.
	// Backends start their process through StartProcess.
	Start func(cmd *exec.Cmd) error
	// BeforeRun, when not nil, finishes the host's work that must be done
	// before the guest runs. The backend calls it once the VMM process
	// exists and before any guest code runs, so that work overlaps the
	// VMM's own start-up; an error ends the launch.
	BeforeRun func() error
	// DiskBPS and DiskIOPS throttle every disk of the VM (bytes and
	// operations per second, reads and writes together); 0 means no limit.
	DiskBPS, DiskIOPS int64

	// Bounded console (issue 13).

	// ConsoleFile, if set, is where the VMM writes the serial console
	// instead of opening ConsoleLog itself: the write end of the pipe of a
	// logger that caps the log (ConsoleLog is then only read). The backend
	// passes it to the VMM process as an open descriptor, so it works for
	// an unprivileged VMM; the caller closes it after Launch.
	ConsoleFile *os.File
}

// StartProcess starts the VMM's process cmd: through s.Start when set,
// else cmd.Start.
func (s Spec) StartProcess(cmd *exec.Cmd) error {
	if s.Start != nil {
		return s.Start(cmd)
	}
	return cmd.Start()
}

// Share is a host directory shared with the guest over virtio-fs.
type Share struct {
	// Tag is the name the guest mounts it by.
	Tag string
	// Source is the absolute host directory.
	Source string
	// ReadOnly makes the host side refuse writes.
	ReadOnly bool
}

// Identity is a user and group a VMM process runs as.
type Identity struct {
	// UID and GID are the user and primary group ids.
	UID, GID uint32
	// Groups are supplementary groups (e.g. kvm, for /dev/kvm).
	Groups []uint32
}

// Instance is a launched VM: what the caller must record to control it later,
// possibly from another process.
type Instance struct {
	// PID is the VMM process id.
	PID int
	// PIDStart is the process's start time in clock ticks since boot, so a
	// reused PID is not mistaken for the VMM.
	PIDStart uint64
	// Control is the VMM's control socket (QMP or Firecracker's API).
	Control string
	// Agent is the host end of the guest agent's channel.
	Agent string
	// Accel is the acceleration actually used.
	Accel Accel
	// VsockCID is the guest's vsock context id when the agent can also be
	// reached over AF_VSOCK (QEMU with vhost-vsock); 0 otherwise.
	VsockCID uint32
}

// State is what a VMM reports about its guest.
type State string

// VMM states.
const (
	// StateRunning means vCPUs run.
	StateRunning State = "running"
	// StatePaused means vCPUs are stopped.
	StatePaused State = "paused"
	// StateShutdown means the guest powered off but the VMM process remains.
	StateShutdown State = "shutdown"
	// StateGone means the VMM process does not exist.
	StateGone State = "gone"
)

// Kind names a backend in the registry and in a VM's record.
type Kind string

// KernelFormat is the kind of kernel image a backend boots.
type KernelFormat string

// Kernel formats.
const (
	// KernelBzImage is a compressed bzImage (QEMU boots it directly).
	KernelBzImage KernelFormat = "bzImage"
	// KernelELF is an uncompressed ELF vmlinux (Firecracker needs one).
	KernelELF KernelFormat = "vmlinux"
)

// Requirements say what a backend needs to boot a VM.
type Requirements struct {
	// Kernel is the kernel format it boots.
	Kernel KernelFormat
	// NeedsKVM is set when it cannot run guests under software emulation.
	NeedsKVM bool
	// HostFolders is set when it can share host directories (Spec.Shares).
	HostFolders bool
}

// Dialer opens one candidate channel to a VM's guest agent.
type Dialer struct {
	// Name says what the channel is, for errors ("vsock", "virtio-serial").
	Name string
	// Dial connects; the agent protocol's handshake is the caller's.
	Dial func(ctx context.Context) (io.ReadWriteCloser, error)
	// Buffered says that the channel connects before the guest's agent
	// serves and keeps what the host writes until the agent reads it
	// (virtio-serial), so the host may connect while the guest boots.
	Buffered bool
}

// Backend launches and controls VMs of one VMM kind. Every method takes the
// Instance returned by Launch, so a backend keeps no per-VM state and a
// second process can control a VM the first one launched.
type Backend interface {
	// Kind returns the backend's registry name ("qemu", "firecracker").
	Kind() Kind
	// Usable reports whether the backend can run VMs on this host, with the
	// reason why not (or what it found).
	Usable(ctx context.Context) (ok bool, reason string)
	// Version returns the VMM's version line.
	Version(ctx context.Context) (string, error)
	// Requirements say which kernel format it boots and whether it needs KVM.
	Requirements() Requirements
	// Launch starts the VMM for spec. The VMM process outlives ctx and the
	// calling process; Launch returns once the process runs.
	Launch(ctx context.Context, spec Spec) (Instance, error)
	// WaitReady waits until the VMM's control socket answers and the guest
	// runs.
	WaitReady(ctx context.Context, inst Instance) error
	// Stop asks the VMM to end (the guest is expected to have powered off
	// already) and waits for the process to exit.
	Stop(ctx context.Context, inst Instance) error
	// Kill ends the VMM process at once.
	Kill(inst Instance) error
	// Pause stops the guest's vCPUs.
	Pause(ctx context.Context, inst Instance) error
	// Resume restarts the guest's vCPUs.
	Resume(ctx context.Context, inst Instance) error
	// Status reports the VMM's state; StateGone when its process is gone.
	Status(ctx context.Context, inst Instance) (State, error)
	// AgentDialers returns the channels to the guest agent of inst, best
	// first; callers try them in order.
	AgentDialers(inst Instance) []Dialer
	// RuntimeFiles names the files the backend makes in a VM's runtime
	// directory (sockets, error logs): stale ones are removed when the VM
	// does not run.
	RuntimeFiles() []string
	// IsVMM reports whether exe (a process's executable path) is this
	// backend's VMM, so cleanup can recognise orphaned processes.
	IsVMM(exe string) bool
}

// Options configure a backend for one host.
type Options struct {
	// Binary is the VMM executable; empty means the backend's default lookup.
	Binary string
	// Probe describes the host's acceleration; the zero value reads the real host.
	Probe Probe
}

// Factory makes a backend for a host.
type Factory func(Options) Backend

var (
	registryMu sync.RWMutex
	registry   = map[Kind]Factory{}
	order      []Kind // registration order: the preference of automatic choice
)

// Register adds a backend kind. It panics if kind is empty or registered
// twice: registration is a programming decision made at init time.
func Register(kind Kind, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if kind == "" || f == nil {
		panic("vmm: Register with an empty kind or nil factory")
	}
	if _, dup := registry[kind]; dup {
		panic("vmm: backend " + string(kind) + " registered twice")
	}
	registry[kind] = f
	order = append(order, kind)
}

// Kinds returns the registered backend kinds in registration order, which
// is the order of preference when a VM's backend is chosen automatically.
func Kinds() []Kind {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return slices.Clone(order)
}

// New makes a backend of a registered kind; an unknown kind wraps
// ErrUnavailable.
func New(kind Kind, o Options) (Backend, error) {
	registryMu.RLock()
	f := registry[kind]
	registryMu.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("backend %q is not built into this program (have %v): %w", kind, Kinds(), ErrUnavailable)
	}
	return f(o), nil
}

// WaitExit waits until the process of inst is gone or ctx ends.
func WaitExit(ctx context.Context, inst Instance) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if !Alive(inst.PID, inst.PIDStart) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
