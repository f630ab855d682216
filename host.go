package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// DataDirEnv names the environment variable that overrides the data directory.
const DataDirEnv = "SMOLVM_DATA_DIR"

// DefaultDataDir returns where SmolVM keeps its state: $SMOLVM_DATA_DIR if
// set, /var/lib/smolvm for root, else $XDG_STATE_HOME/smolvm (by default
// ~/.local/state/smolvm).
func DefaultDataDir() string {
	if d := os.Getenv(DataDirEnv); d != "" {
		return d
	}
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

// Option changes how an SDK call works: where state lives, what VM to make.
type Option func(*options)

type options struct {
	dataDir     string
	config      *VMConfig
	noNetwork   bool
	bootTimeout time.Duration
	progress    func(stage string, done, total int64)
}

// WithDataDir keeps state in dir instead of DefaultDataDir().
func WithDataDir(dir string) Option { return func(o *options) { o.dataDir = dir } }

func buildOptions(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if o.dataDir == "" {
		o.dataDir = DefaultDataDir()
	}
	if o.bootTimeout <= 0 {
		o.bootTimeout = DefaultBootTimeout
	}
	if abs, err := filepath.Abs(o.dataDir); err == nil {
		o.dataDir = abs
	}
	return o
}

// host is an open data directory: its state database and its paths.
type host struct {
	dir         string
	st          *store.Store
	bootTimeout time.Duration
}

func openHost(ctx context.Context, o options) (*host, error) {
	st, err := store.Open(ctx, o.dataDir)
	if err != nil {
		return nil, fmt.Errorf("open state in %s: %w", o.dataDir, err)
	}
	return &host{dir: o.dataDir, st: st, bootTimeout: o.bootTimeout}, nil
}

func (h *host) close() error { return h.st.Close() }

// record is what the SDK keeps in a VM row's config column.
type record struct {
	Config VMConfig `json:"config"`
	// Network is false when the VM was created without networking.
	Network bool `json:"network"`
	// Boot holds the resolved kernel, initrd and root disk.
	Boot boot `json:"boot"`
	// Accel is the requested acceleration: auto, kvm or tcg.
	Accel string `json:"accel,omitempty"`
	// Complete is set when Create finished: a record without it is the
	// remains of an interrupted create, which Start refuses and Cleanup removes.
	Complete bool `json:"complete"`
}

// storeErr maps the store's error kinds to the SDK's.
func storeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return kindErr{ErrNotFound, err}
	case errors.Is(err, store.ErrExists):
		return kindErr{ErrAlreadyExists, err}
	case errors.Is(err, store.ErrExhausted):
		return kindErr{ErrNetwork, err}
	}
	return err
}

// kindErr tags err with an SDK error kind without changing its message.
type kindErr struct{ kind, err error }

func (e kindErr) Error() string   { return e.err.Error() }
func (e kindErr) Unwrap() []error { return []error{e.kind, e.err} }

// info assembles a VM's VMInfo from its row, lease and SSH forward.
func (h *host) info(ctx context.Context, row store.VM) (VMInfo, error) {
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
	if !rec.Network {
		return inf, nil
	}
	l, err := h.st.LeaseOf(ctx, row.ID)
	if errors.Is(err, store.ErrNotFound) {
		return inf, nil
	}
	if err != nil {
		return VMInfo{}, err
	}
	ports, err := h.st.Ports(ctx, row.ID)
	if err != nil {
		return VMInfo{}, err
	}
	ssh := 0
	for _, p := range ports {
		if p.Kind == store.KindSSH {
			ssh = p.HostPort
		}
	}
	inf.Config.SSHHostPort = ssh // the port table is the one source of truth
	inf.Network, err = networkFromLease(l, ssh)
	return inf, err
}

func networkFromLease(l store.Lease, sshPort int) (*NetworkConfig, error) {
	return NewNetworkConfig(NetworkSpec{
		GuestIP:     l.IP.String(),
		GatewayIP:   l.Gateway.String(),
		Netmask:     DefaultNetmask,
		TapDevice:   l.TAP,
		GuestMAC:    l.MAC,
		SSHHostPort: sshPort,
	})
}

// reconcile checks that the VMM of a VM recorded as running or paused is
// alive (same PID and start time); if it is not, it records the VM as error.
func (h *host) reconcile(ctx context.Context, row store.VM) (store.VM, error) {
	if (row.Status != string(StateRunning) && row.Status != string(StatePaused)) || vmm.Alive(row.PID, row.PIDStart) {
		return row, nil
	}
	pid, start := row.PID, row.PIDStart
	v, err := h.st.UpdateVM(ctx, row.ID, func(v *store.VM) error {
		if v.PID != pid || v.PIDStart != start || (v.Status != string(StateRunning) && v.Status != string(StatePaused)) {
			return nil // someone else changed it meanwhile
		}
		switch v.Error {
		case markStopping: // a stop was under way: this is its end
			v.Status, v.Error = string(StateStopped), ""
		case markDeleting: // Cleanup finishes the delete
			v.Status = string(StateStopped)
		default:
			v.Status = string(StateError)
			v.Error = fmt.Sprintf("VMM process %d exited unexpectedly", pid)
		}
		v.PID, v.PIDStart = 0, 0
		return nil
	})
	return v, storeErr(err)
}

// ListOptions filters List.
type ListOptions struct {
	// Status keeps only VMs in this state; empty keeps all.
	Status VMState
}

// List returns the recorded VMs, oldest first.
func List(ctx context.Context, lo ListOptions, opts ...Option) ([]VMInfo, error) {
	h, err := openHost(ctx, buildOptions(opts))
	if err != nil {
		return nil, err
	}
	defer h.close()
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := []VMInfo{}
	for _, r := range rows {
		if r, err = h.reconcile(ctx, r); err != nil {
			return nil, err
		}
		inf, err := h.info(ctx, r)
		if err != nil {
			return nil, err
		}
		if lo.Status == "" || inf.Status == lo.Status {
			out = append(out, inf)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}
