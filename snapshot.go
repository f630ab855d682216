package smolvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/snapfile"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Snapshots, clones and saved (suspended) VMs.
//
// A snapshot is a directory snapshots/<name>/ in the data directory:
//
//	state      the VMM's device state (QEMU: a migration stream)
//	mem        the guest's RAM (sparse), mapped copy-on-write by restored VMs
//	disk.ext4  the root disk as it was at the same instant
//	meta.json  the SnapshotInfo, also recorded in the store
//
// A VM saved with Suspend (stop --save) keeps the same files but the disk
// in vms/<id>/saved/. A VM to be restored (a clone, a rolled back VM, a
// saved VM) carries a pendingRestore in its record; its next Start loads
// the state instead of booting.

// SnapshotFile is one file of a snapshot.
type SnapshotFile struct {
	// Name is the file's name in the snapshot's directory.
	Name string `json:"name"`
	// Size is its length in bytes.
	Size int64 `json:"size"`
	// Allocated is the space it takes on disk.
	Allocated int64 `json:"allocated"`
	// SHA256 is a digest of its non-zero blocks, checked before a restore.
	SHA256 string `json:"sha256"`
	// Stamp identifies the file as written (inode, size, times).
	Stamp string `json:"stamp"`
}

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	// Name is the snapshot's name.
	Name string `json:"name"`
	// VMID is the VM it was taken of.
	VMID string `json:"vm_id"`
	// CreatedAt is when it was taken.
	CreatedAt time.Time `json:"created_at"`
	// Backend is the VMM kind that took it; a restore needs the same.
	Backend BackendKind `json:"backend"`
	// VMMVersion is the VMM's version line; a restore needs the same.
	VMMVersion string `json:"vmm_version"`
	// Accel is the acceleration the VM ran with; a restore needs the same.
	Accel string `json:"accel"`
	// Image is the image the VM was made from, if any.
	Image string `json:"image,omitempty"`
	// Kernel and Initrd are the boot files of the VM.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	// Config is the VM's configuration; clones take it (with their own id
	// and network identity).
	Config VMConfig `json:"config"`
	// MemSizeMiB is the guest memory; a restore needs the same.
	MemSizeMiB int `json:"mem_size_mib"`
	// Format is the state's format (e.g. "qemu-migration+ignore-shared").
	Format string `json:"format"`
	// SizeBytes is the space the snapshot takes on disk.
	SizeBytes int64 `json:"size_bytes"`
	// PauseMillis is how long the VM was paused while it was taken.
	PauseMillis int64 `json:"pause_ms"`
	// Files are its files with their digests.
	Files []SnapshotFile `json:"files"`
	// Path is its directory.
	Path string `json:"path"`
}

// pendingRestore in a VM's record makes its next Start load a saved state.
type pendingRestore struct {
	// Snapshot names the snapshot restored (empty for a saved VM).
	Snapshot string `json:"snapshot,omitempty"`
	// Saved reports a VM suspended with Suspend (stop --save).
	Saved bool `json:"saved,omitempty"`
	// Dir holds the state and memory files.
	Dir string `json:"dir"`
	// Format is the state's format.
	Format string `json:"format"`
	// Files are the files to check before loading.
	Files []SnapshotFile `json:"files"`
	// Backend, VMMVersion and Accel must match the host's.
	Backend    BackendKind `json:"backend"`
	VMMVersion string      `json:"vmm_version"`
	Accel      string      `json:"accel"`
}

// Names of a snapshot's files.
const (
	snapState = "state"
	snapMem   = "mem"
	snapDisk  = "disk.ext4"
	snapMeta  = "meta.json"
)

func (h *Host) snapDir() string              { return filepath.Join(h.dir, "snapshots") }
func (h *Host) snapPath(name string) string  { return filepath.Join(h.snapDir(), name) }
func (h *Host) savedPath(id string) string   { return filepath.Join(h.vmDir(id), "saved") }
func (p *pendingRestore) file(n string) bool { return hasFile(p.Files, n) }

func hasFile(fs []SnapshotFile, name string) bool {
	for _, f := range fs {
		if f.Name == name {
			return true
		}
	}
	return false
}

// validateSnapshotName checks a snapshot name: the rules of a VM id.
func validateSnapshotName(name string) error {
	if !vmIDRE.MatchString(name) {
		return configErr("name", name, "a snapshot name must be 1-64 characters of a-z, 0-9, '_' and '-', starting and ending with a letter or digit")
	}
	return nil
}

func errNoSnapshot(op, name string) error {
	return wrapErr(op, name, ErrNotFound, fmt.Errorf("no snapshot named %q", name))
}

// Snapshot takes a snapshot named name ("" generates one) of the running
// VM: its memory, device state and disk, at one instant. The VM is paused
// while its state and disk are copied and then runs on; SnapshotInfo says
// for how long. A snapshot of a VM that does not run is ErrState.
func (vm *VM) Snapshot(ctx context.Context, name string) (SnapshotInfo, error) {
	const op = "snapshot"
	if name == "" {
		name = "snap-" + randHex(4)
	}
	if err := validateSnapshotName(name); err != nil {
		return SnapshotInfo{}, wrapErr(op, vm.id, ErrInvalidConfig, err)
	}
	unlock, err := vm.h.lockVM(ctx, vm.id)
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer unlock()
	info, err := vm.snapshotLocked(ctx, name)
	if err != nil {
		return SnapshotInfo{}, wrapErr(op, vm.id, ErrBackend, err)
	}
	return info, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (vm *VM) snapshotLocked(ctx context.Context, name string) (_ SnapshotInfo, retErr error) {
	h := vm.h
	row, rec, err := vm.load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return SnapshotInfo{}, fmt.Errorf("no VM %s: %w", vm.id, ErrNotFound)
	}
	if err != nil {
		return SnapshotInfo{}, err
	}
	if rec.Config.AttachInterface != "" { // its identity is its interface's, which a clone cannot share
		return SnapshotInfo{}, fmt.Errorf("a VM attached to interface %s cannot be snapshotted: %w", rec.Config.AttachInterface, ErrUnavailable)
	}
	inst := instanceOf(row)
	if !vmm.Alive(inst.PID, inst.PIDStart) || (row.Status != string(StateRunning) && row.Status != string(StatePaused)) {
		return SnapshotInfo{}, fmt.Errorf("only a running VM can be snapshotted (status %s; start it first): %w", vmStatus(row), ErrState)
	}
	if _, err := h.st.GetSnapshot(ctx, name); err == nil {
		return SnapshotInfo{}, fmt.Errorf("a snapshot named %q exists: %w", name, ErrAlreadyExists)
	}
	be, err := h.backendOf(row)
	if err != nil {
		return SnapshotInfo{}, err
	}
	sn, ok := be.(vmm.Snapshotter)
	if !ok {
		return SnapshotInfo{}, fmt.Errorf("the %s backend cannot take snapshots: %w", be.Kind(), ErrUnavailable)
	}
	version, err := be.Version(ctx)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("vmm version: %w", err)
	}
	if err := os.MkdirAll(h.snapDir(), 0o700); err != nil {
		return SnapshotInfo{}, err
	}
	// Made under a temporary name and renamed when complete; cleanup
	// removes temporary directories whose VM lock is free.
	tmp := filepath.Join(h.snapDir(), ".tmp-"+vm.id+"."+name)
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return SnapshotInfo{}, err
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
		}
	}()
	// The disk is copied while the guest is paused (in the kernel, with
	// copy_file_range or a reflink); digests are computed once it runs.
	res, pause, err := vm.save(ctx, row, sn, be, tmp, func(ctx context.Context) error {
		return image.CloneDisk(ctx, rec.Boot.Disk, filepath.Join(tmp, snapDisk), 0)
	}, true)
	if err != nil {
		return SnapshotInfo{}, err
	}
	files, err := describeFiles(ctx, tmp, res, true)
	if err != nil {
		return SnapshotInfo{}, err
	}
	info := SnapshotInfo{
		Name: name, VMID: vm.id, CreatedAt: time.Now().UTC(),
		Backend: BackendKind(be.Kind()), VMMVersion: version, Accel: row.Accel,
		Image: rec.Config.Image, Kernel: rec.Boot.Kernel, Initrd: rec.Boot.Initrd,
		Config: rec.Config, MemSizeMiB: rec.Config.MemSizeMiB, Format: res.Format,
		PauseMillis: pause.Milliseconds(), Files: files, Path: h.snapPath(name),
	}
	info.Config.SSHHostPort = 0
	for _, f := range files {
		info.SizeBytes += f.Allocated
	}
	meta, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, snapMeta), meta, 0o600); err != nil {
		return SnapshotInfo{}, err
	}
	if err := os.Rename(tmp, info.Path); err != nil {
		return SnapshotInfo{}, err
	}
	if err := h.st.AddSnapshot(context.WithoutCancel(ctx), store.Snapshot{ID: name, VMID: vm.id, Path: info.Path, Meta: meta}); err != nil {
		os.RemoveAll(info.Path)
		if errors.Is(err, store.ErrExists) {
			return SnapshotInfo{}, fmt.Errorf("a snapshot named %q exists: %w", name, ErrAlreadyExists)
		}
		return SnapshotInfo{}, err
	}
	return info, nil
}

// vmStatus is a row's status for messages.
func vmStatus(row store.VM) string {
	if row.Status == string(StateRunning) || row.Status == string(StatePaused) {
		return "not running"
	}
	return row.Status
}

// save writes the state of the VM of row into dir (state, mem) with between
// run while the guest is paused, and resumes the guest when resume is set
// (and it was running). It returns the pause's length. The VM's row says
// a save is under way (store.OpSnapshotting), so that cleanup can resume a
// guest left paused by an interrupted one; with resume the mark is cleared
// at the end, without it the caller clears it (clearSaving).
func (vm *VM) save(ctx context.Context, row store.VM, sn vmm.Snapshotter, be vmm.Backend, dir string, between func(context.Context) error, resume bool) (vmm.SaveResult, time.Duration, error) {
	h := vm.h
	inst := instanceOf(row)
	if _, err := h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error { v.Op = store.OpSnapshotting; return nil }); err != nil {
		return vmm.SaveResult{}, 0, err
	}
	uctx := context.WithoutCancel(ctx)
	if resume {
		defer vm.clearSaving(uctx)
	}
	state, err := os.OpenFile(filepath.Join(dir, snapState), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return vmm.SaveResult{}, 0, err
	}
	defer state.Close()
	wasRunning := row.Status == string(StateRunning)
	start := time.Now()
	res, err := sn.Save(ctx, inst, vmm.SaveOptions{State: state, MemFile: filepath.Join(dir, snapMem), Between: between})
	if resume && wasRunning {
		// Resumed whatever happened: a failed snapshot must not leave the
		// VM paused.
		rctx, cancel := context.WithTimeout(uctx, 10*time.Second)
		rerr := be.Resume(rctx, inst)
		cancel()
		if err == nil && rerr != nil {
			err = fmt.Errorf("resume after the snapshot: %w", rerr)
		}
	}
	pause := time.Since(start)
	if err != nil {
		return res, pause, err
	}
	if err := state.Sync(); err != nil {
		return res, pause, err
	}
	return res, pause, nil
}

// clearSaving clears the mark save left on the VM's row.
func (vm *VM) clearSaving(ctx context.Context) {
	vm.h.st.UpdateVM(ctx, vm.id, func(v *store.VM) error {
		if v.Op == store.OpSnapshotting {
			v.Op = store.OpNone
		}
		return nil
	})
}

// describeFiles digests the files Save wrote in dir, and the disk copy.
func describeFiles(ctx context.Context, dir string, res vmm.SaveResult, disk bool) ([]SnapshotFile, error) {
	names := []string{snapState}
	if res.MemFile {
		names = append(names, snapMem)
	}
	if disk {
		names = append(names, snapDisk)
	}
	var out []SnapshotFile
	for _, n := range names {
		f, err := snapfile.Describe(ctx, filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		out = append(out, SnapshotFile(f))
	}
	return out, nil
}

// Snapshots lists the host's snapshots, oldest first.
func (h *Host) Snapshots(ctx context.Context) ([]SnapshotInfo, error) {
	rows, err := h.st.Snapshots(ctx, "")
	if err != nil {
		return nil, wrapErr("snapshot list", "", ErrBackend, err)
	}
	out := []SnapshotInfo{}
	for _, r := range rows {
		if isTemplate(r.ID) {
			continue // warm templates are listed by Templates
		}
		info, err := snapshotInfoOf(r)
		if err != nil {
			return nil, wrapErr("snapshot list", r.ID, ErrBackend, err)
		}
		out = append(out, info)
	}
	return out, nil
}

// GetSnapshot returns the snapshot named name; a missing one is ErrNotFound.
func (h *Host) GetSnapshot(ctx context.Context, name string) (SnapshotInfo, error) {
	if err := validateSnapshotName(name); err != nil {
		return SnapshotInfo{}, wrapErr("snapshot", name, ErrInvalidConfig, err)
	}
	r, err := h.st.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return SnapshotInfo{}, errNoSnapshot("snapshot", name)
	}
	if err != nil {
		return SnapshotInfo{}, wrapErr("snapshot", name, ErrBackend, err)
	}
	info, err := snapshotInfoOf(r)
	if err != nil {
		return SnapshotInfo{}, wrapErr("snapshot", name, ErrBackend, err)
	}
	return info, nil
}

func snapshotInfoOf(r store.Snapshot) (SnapshotInfo, error) {
	var info SnapshotInfo
	if err := json.Unmarshal(r.Meta, &info); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: corrupt record: %w", r.ID, err)
	}
	return info, nil
}

// RemoveSnapshot deletes the snapshot named name and its files. VMs that
// were restored from it and run keep running (their memory maps hold the
// file's pages); a VM made from it that has not started yet still needs
// it, so removing it then is ErrState.
func (h *Host) RemoveSnapshot(ctx context.Context, name string) error {
	const op = "snapshot rm"
	if _, err := h.GetSnapshot(ctx, name); err != nil {
		return err
	}
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return wrapErr(op, name, ErrBackend, err)
	}
	var users []string
	for _, row := range rows {
		var rec record
		if json.Unmarshal(row.Config, &rec) == nil && rec.Restore != nil && rec.Restore.Snapshot == name {
			users = append(users, row.ID)
		}
	}
	if len(users) > 0 {
		sort.Strings(users)
		return wrapErr(op, name, ErrState, fmt.Errorf("VMs made from it have not started yet and need it: %s (start or delete them first)", strings.Join(users, ", ")))
	}
	if err := h.st.DeleteSnapshot(ctx, name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errNoSnapshot(op, name)
		}
		return wrapErr(op, name, ErrBackend, err)
	}
	if err := os.RemoveAll(h.snapPath(name)); err != nil {
		return wrapErr(op, name, ErrBackend, err)
	}
	return nil
}

// checkRestorable reports why a VM with config cfg cannot be restored from
// info on this host.
func (h *Host) checkRestorable(ctx context.Context, info SnapshotInfo, cfg VMConfig) error {
	if cfg.MemSizeMiB != info.MemSizeMiB {
		return configErr("mem_size_mib", fmt.Sprint(cfg.MemSizeMiB), fmt.Sprintf("must be the snapshot's %d MiB (snapshot %s)", info.MemSizeMiB, info.Name))
	}
	if cfg.VCPUCount != info.Config.VCPUCount {
		return configErr("vcpu_count", fmt.Sprint(cfg.VCPUCount), fmt.Sprintf("must be the snapshot's %d (snapshot %s)", info.Config.VCPUCount, info.Name))
	}
	if cfg.NoNetwork != info.Config.NoNetwork {
		return configErr("no_network", fmt.Sprint(cfg.NoNetwork), fmt.Sprintf("must be the snapshot's %v (snapshot %s)", info.Config.NoNetwork, info.Name))
	}
	return h.checkVMM(ctx, info.Backend, info.VMMVersion, info.Accel, "snapshot "+info.Name)
}

// checkVMM reports whether this host's VMM can load a state written by
// the given backend, version and acceleration.
func (h *Host) checkVMM(ctx context.Context, kind BackendKind, version, accel, what string) error {
	be, err := h.backend(vmm.Kind(kind))
	if err != nil {
		return fmt.Errorf("%s was taken with the %s backend: %w: %w", what, kind, err, ErrUnavailable)
	}
	if _, ok := be.(vmm.Snapshotter); !ok {
		return fmt.Errorf("the %s backend cannot restore snapshots: %w", kind, ErrUnavailable)
	}
	have, err := be.Version(ctx)
	if err != nil {
		return fmt.Errorf("%s backend: %w: %w", kind, err, ErrUnavailable)
	}
	if have != version {
		return fmt.Errorf("%s was taken with %q and this host has %q: a restore needs the same VMM version: %w", what, version, have, ErrUnavailable)
	}
	if got, _ := h.opts.probe.Resolve(vmm.AccelAuto); accel != "" && string(got) != accel {
		return fmt.Errorf("%s ran with %s acceleration and this host runs %s: %w", what, accel, got, ErrUnavailable)
	}
	return nil
}

// verifyFiles checks a state's files in dir (sizes always, digests when a
// file changed since it was written).
func verifyFiles(ctx context.Context, dir string, files []SnapshotFile, skip string) error {
	for _, f := range files {
		if f.Name == skip {
			continue
		}
		if err := snapfile.Verify(ctx, filepath.Join(dir, f.Name), snapfile.File(f), false); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}
	return nil
}

// updateRecord changes a VM's record in its row.
func (h *Host) updateRecord(ctx context.Context, id string, fn func(*record) error) error {
	_, err := h.st.UpdateVM(ctx, id, func(v *store.VM) error {
		var rec record
		if err := json.Unmarshal(v.Config, &rec); err != nil {
			return fmt.Errorf("corrupt record: %w", err)
		}
		if err := fn(&rec); err != nil {
			return err
		}
		b, err := json.Marshal(rec)
		v.Config = b
		return err
	})
	return err
}

// restoreArgs are what the guest agent is told after a restore: the
// host's time, fresh entropy, the VM's id as host name and its own network
// identity.
func (s *startOp) restoreArgs() proto.RestoreArgs {
	entropy := make([]byte, 64)
	rand.Read(entropy)
	a := proto.RestoreArgs{TimeUnixNano: time.Now().UnixNano(), Entropy: entropy, Hostname: s.vm.id}
	if !s.rec.Config.NoNetwork {
		p := s.plan
		n := &proto.RestoreNetwork{MAC: strings.ToLower(p.MAC), Addr: p.GuestPrefix().String(), Gateway: p.Gateway.String()}
		var custom []netip.Addr
		for _, d := range s.rec.Config.DNSServers {
			if a, err := netip.ParseAddr(d); err == nil {
				custom = append(custom, a)
			}
		}
		for _, d := range p.Resolvers(custom) {
			n.DNS = append(n.DNS, d.String())
		}
		a.Network = n
	}
	return a
}
