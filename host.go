package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm/internal/netplan"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
	_ "github.com/smolvm-go/smolvm/internal/vmm/backends" // every backend, registered
)

// Environment variables SmolVM reads.
const (
	// DataDirEnv overrides the data directory.
	DataDirEnv = "SMOLVM_DATA_DIR"
	// HostDirEnv overrides the host-wide directory shared by every data
	// directory on the host (lease claims).
	HostDirEnv = "SMOLVM_HOST_DIR"
	// ImageDirEnv moves the image cache out of the data directory (e.g. to
	// share one cache between data directories).
	ImageDirEnv = "SMOLVM_IMAGE_DIR"
)

// DefaultDataDir returns where SmolVM keeps its state: $SMOLVM_DATA_DIR if
// set, /var/lib/smolvm for root, else $XDG_STATE_HOME/smolvm (by default
// ~/.local/state/smolvm).
func DefaultDataDir() string {
	if d := os.Getenv(DataDirEnv); d != "" {
		return d
	}
	return userStateDir()
}

func userStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/smolvm"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "smolvm")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "smolvm")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("smolvm-%d", os.Geteuid()))
}

// DefaultHostDir returns the directory every data directory of this user
// on this host shares, so TAP names, subnets and vsock context ids are
// unique per host: $SMOLVM_HOST_DIR, else host/ in the default state
// directory (/var/lib/smolvm/host for root), whatever the data directory.
func DefaultHostDir() string {
	if d := os.Getenv(HostDirEnv); d != "" {
		return d
	}
	return filepath.Join(userStateDir(), "host")
}

// HostOptions configure Open. The zero value uses the defaults.
type HostOptions struct {
	// DataDir keeps state; empty means DefaultDataDir().
	DataDir string
	// ImageDir is the image cache; empty means $SMOLVM_IMAGE_DIR, else
	// images/ in DataDir.
	ImageDir string
	// HostDir is shared by every data directory on the host; empty means
	// DefaultHostDir().
	HostDir string
	// Binaries overrides a backend's VMM executable, by backend kind.
	Binaries map[BackendKind]string
	// FirecrackerBinary is shorthand for Binaries[BackendFirecracker].
	FirecrackerBinary string
	// BootTimeout bounds a start from launch until the agent answers; 0
	// means DefaultBootTimeout.
	BootTimeout time.Duration
	// Progress receives progress of long work (image builds on first use)
	// as stage names and counts; nil prints to a terminal on stderr.
	Progress func(stage string, done, total int64)
	// ForwarderCommand is the command (argv) that runs the DNS forwarder
	// supervisor, to which "--dir DIR" is added; empty means this program
	// re-executed as the forwarder (a helper process, which needs no smolvm
	// binary; network policy, egress.go).
	ForwarderCommand []string
	// ConsoleLogMaxBytes is the default cap of a VM's console log on disk
	// (VMConfig.ConsoleLogMaxBytes overrides it); 0 means
	// DefaultConsoleLogMaxBytes.
	ConsoleLogMaxBytes int64
	// Warm templates (warm.go).

	// Warm says whether a VM's first start may restore its image's warm
	// template; WarmAuto (the zero value) follows $SMOLVM_WARM, on unless
	// "off".
	Warm WarmMode

	// probe describes the host's acceleration; tests fill it.
	probe vmm.Probe
	// failAt, set by tests, fails the lifecycle step of that name.
	failAt string
}

// Host is an open data directory: its state database, image cache, VM
// locks and backends. It is safe for concurrent use by many goroutines and
// meant to live as long as the program (a server holds one for its
// lifetime). Close it when done; VMs keep running.
type Host struct {
	dir      string
	imageDir string
	st       *store.Store
	claims   netplan.Claims // host-wide lease claims, shared with the store
	opts     HostOptions

	mu       sync.Mutex
	backends map[vmm.Kind]vmm.Backend
}

// Open opens (creating if needed) the data directory o.DataDir and returns
// its Host.
func Open(ctx context.Context, o HostOptions) (*Host, error) {
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir()
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, wrapErr("open", "", ErrInvalidConfig, configErr("data_dir", o.DataDir, err.Error()))
	}
	if o.HostDir == "" {
		o.HostDir = DefaultHostDir()
	}
	if o.BootTimeout <= 0 {
		o.BootTimeout = DefaultBootTimeout
	}
	if o.FirecrackerBinary != "" {
		b := map[BackendKind]string{BackendFirecracker: o.FirecrackerBinary}
		for k, v := range o.Binaries {
			b[k] = v
		}
		o.Binaries = b
	}
	imageDir := o.ImageDir
	if imageDir == "" {
		imageDir = os.Getenv(ImageDirEnv)
	}
	if imageDir == "" {
		imageDir = filepath.Join(dir, "images")
	}
	if err := secureDataDir(dir); err != nil {
		return nil, wrapErr("open", "", ErrInvalidConfig, err)
	}
	claims := netplan.Claims{Dir: filepath.Join(o.HostDir, "leases")}
	st, err := store.OpenWith(ctx, dir, store.Options{Claims: claims})
	if err != nil {
		return nil, wrapErr("open", "", ErrBackend, fmt.Errorf("state in %s: %w", dir, err))
	}
	return &Host{dir: dir, imageDir: imageDir, st: st, claims: claims, opts: o, backends: map[vmm.Kind]vmm.Backend{}}, nil
}

// DataDir returns the host's data directory.
func (h *Host) DataDir() string { return h.dir }

// Close closes the state database. VMs keep running; handles obtained from
// this Host stop working.
func (h *Host) Close() error { return h.st.Close() }

var (
	defaultMu   sync.Mutex
	defaultHost *Host
)

// Default returns the process-wide Host of DefaultDataDir(), opening it on
// first use. The shortcut New uses it; it stays open for the process's life.
func Default(ctx context.Context) (*Host, error) {
	defaultMu.Lock()
	defer defaultMu.Unlock()
	if defaultHost != nil {
		return defaultHost, nil
	}
	h, err := Open(ctx, HostOptions{})
	if err != nil {
		return nil, err
	}
	defaultHost = h
	return h, nil
}

// backend returns the host's backend of kind, made once.
func (h *Host) backend(kind vmm.Kind) (vmm.Backend, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if b := h.backends[kind]; b != nil {
		return b, nil
	}
	b, err := vmm.New(kind, vmm.Options{Binary: h.opts.Binaries[BackendKind(kind)], Probe: h.opts.probe})
	if err != nil {
		return nil, err
	}
	h.backends[kind] = b
	return b, nil
}

// Layout of the data directory:
//
//	smolvm.db            state (see internal/store)
//	images/<name>/       built images (see internal/image), unless ImageDir
//	vms/<id>/            a VM's private directory (0700): disk copy, sockets, VMM stderr
//	logs/<id>.log        a VM's serial console
//	locks/<id>.lock      serialises lifecycle steps on one VM across processes
func (h *Host) vmDir(id string) string    { return filepath.Join(h.dir, "vms", id) }
func (h *Host) logPath(id string) string  { return filepath.Join(h.dir, "logs", id+".log") }
func (h *Host) lockPath(id string) string { return filepath.Join(h.dir, "locks", id+".lock") }
func (h *Host) diskPath(id string) string { return filepath.Join(h.vmDir(id), "disk.ext4") }

// record is what the SDK keeps in a VM row's config column.
type record struct {
	// Config is the VM's configuration with defaults applied.
	Config VMConfig `json:"config"`
	// Boot holds the resolved kernel, initrd and root disk.
	Boot boot `json:"boot"`
	// Restore, when set, makes the next Start load a saved state (see
	// snapshot.go).
	Restore *pendingRestore `json:"restore,omitempty"`
	// SSHReadyPID is the VMM process of the start that found the guest's
	// sshd answering through the SSH forward (network policy, egress.go).
	SSHReadyPID int `json:"ssh_ready_pid,omitempty"`
	// Attach is what an attached VM took over from its interface (attach.go).
	Attach *attachIdentity `json:"attach,omitempty"`
	// Template names the warm template the VM started from (warm.go).
	Template string `json:"template,omitempty"`
}

// plan returns the network identity of a VM from its lease and SSH forward.
func (h *Host) plan(ctx context.Context, id string) (netplan.Plan, error) {
	l, err := h.st.LeaseOf(ctx, id)
	if err != nil {
		return netplan.Plan{}, err
	}
	ports, err := h.st.Ports(ctx, id)
	if err != nil {
		return netplan.Plan{}, err
	}
	ssh := 0
	for _, p := range ports {
		if p.Kind == store.KindSSH {
			ssh = p.HostPort
		}
	}
	return netplan.For(l.Index, ssh)
}

// info assembles a VM's VMInfo from its row, lease and SSH forward.
func (h *Host) info(ctx context.Context, row store.VM) (VMInfo, error) {
	var rec record
	if err := json.Unmarshal(row.Config, &rec); err != nil {
		return VMInfo{}, fmt.Errorf("vm %s: corrupt record: %w", row.ID, err)
	}
	inf := VMInfo{
		VMID:      row.ID,
		Status:    VMState(row.Status),
		Config:    rec.Config,
		PID:       row.PID,
		Backend:   BackendKind(row.Backend),
		Accel:     row.Accel,
		Sockets:   SocketPaths{Control: row.Control, Agent: row.Agent},
		Error:     row.Error,
		CreatedAt: row.Created,
		UpdatedAt: row.Updated,
	}
	inf.Config.SSHHostPort = 0
	inf.Mounts = append([]Mount{}, rec.Config.Mounts...)
	inf.Saved = rec.Restore != nil && rec.Restore.Saved
	inf.Template = rec.Template
	inf.Limits = h.limitsInfo(row.ID, rec.Config, vmm.Alive(row.PID, row.PIDStart))
	p, err := h.plan(ctx, row.ID)
	if errors.Is(err, store.ErrNotFound) {
		return inf, nil // an interrupted create
	}
	if err != nil {
		return VMInfo{}, err
	}
	inf.Config.SSHHostPort = p.SSHPort // the port table is the one source of truth
	if rec.Config.NoNetwork {
		return inf, nil
	}
	if rec.Attach != nil {
		inf.Network, err = rec.Attach.networkConfig(p.TAP)
		return inf, err
	}
	eg := rec.Config.Egress()
	inf.Egress = &eg
	inf.SSHReady = p.SSHPort != 0 && rec.SSHReadyPID != 0 && rec.SSHReadyPID == row.PID &&
		(inf.Status == StateRunning || inf.Status == StatePaused)
	inf.Network, err = networkConfigOf(p)
	return inf, err
}

// reconcile checks that the VMM of a VM recorded as running or paused is
// alive (same PID and start time); if it is not, it records the VM as error,
// or as stopped when a stop was under way.
func (h *Host) reconcile(ctx context.Context, row store.VM) (store.VM, error) {
	if (row.Status != string(StateRunning) && row.Status != string(StatePaused)) || vmm.Alive(row.PID, row.PIDStart) {
		return row, nil
	}
	pid, start := row.PID, row.PIDStart
	v, err := h.st.UpdateVM(ctx, row.ID, func(v *store.VM) error {
		if v.PID != pid || v.PIDStart != start || (v.Status != string(StateRunning) && v.Status != string(StatePaused)) {
			return nil // someone else changed it meanwhile
		}
		switch v.Op {
		case store.OpStopping: // a stop was under way: this is its end
			v.Status, v.Op = string(StateStopped), store.OpNone
		case store.OpDeleting: // Cleanup finishes the delete
			v.Status = string(StateStopped)
		default:
			v.Status = string(StateError)
			v.Error = fmt.Sprintf("VMM process %d exited unexpectedly", pid)
		}
		v.PID, v.PIDStart = 0, 0
		return nil
	})
	return v, err
}

// ListOptions filters List.
type ListOptions struct {
	// Status keeps only VMs in this state; empty keeps all.
	Status VMState
}

// List returns the recorded VMs, oldest first, their state checked live.
func (h *Host) List(ctx context.Context, lo ListOptions) ([]VMInfo, error) {
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return nil, wrapErr("list", "", ErrBackend, err)
	}
	out := []VMInfo{}
	for _, r := range rows {
		if r, err = h.reconcile(ctx, r); err != nil {
			return nil, wrapErr("list", r.ID, ErrBackend, err)
		}
		inf, err := h.info(ctx, r)
		if err != nil {
			return nil, wrapErr("list", r.ID, ErrBackend, err)
		}
		if lo.Status == "" || inf.Status == lo.Status {
			out = append(out, inf)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// Get returns a handle on the recorded VM id, e.g. one created by another
// process. A missing VM is ErrNotFound.
func (h *Host) Get(ctx context.Context, id string) (*VM, error) {
	if err := ValidateVMID(id); err != nil {
		return nil, wrapErr("open", id, ErrInvalidConfig, err)
	}
	vm := &VM{h: h, id: id}
	if err := vm.Refresh(ctx); err != nil {
		return nil, err
	}
	return vm, nil
}

// FromID is Get.
func (h *Host) FromID(ctx context.Context, id string) (*VM, error) { return h.Get(ctx, id) }

// errNoVM is the error for a VM id that is not recorded.
func errNoVM(op, id string) error {
	return wrapErr(op, id, ErrNotFound, errors.New("no such VM (see 'smolvm list --all')"))
}
