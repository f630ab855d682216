package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/snapfile"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// stepNamed returns the step called name of a table; it panics when there
// is none (a programming error found at init).
func stepNamed[T any](steps []step[T], name string) step[T] {
	for _, s := range steps {
		if s.name == name {
			return s
		}
	}
	panic("smolvm: no step " + name)
}

// restoreSteps start a VM whose record holds a pendingRestore: the VMM
// loads the saved state instead of booting, the guest resumes where it
// was, and the agent brings the guest's clock, RNG and network identity up
// to date before Start returns.
var restoreSteps = []step[*startOp]{
	stepNamed(startSteps, "check"),
	{name: "verify", kind: ErrState, do: func(ctx context.Context, s *startOp) error { return s.verifyRestore(ctx) }},
	stepNamed(startSteps, "runtime-dir"),
	stepNamed(startSteps, "console"),
	stepNamed(startSteps, "network"),
	stepNamed(startSteps, "cgroup"),
	stepNamed(startSteps, "egress"),
	{name: "launch", do: func(ctx context.Context, s *startOp) error { return s.launchVMM(ctx, true) },
		undo: stepNamed(startSteps, "launch").undo},
	stepNamed(startSteps, "record"),
	{name: "load-state", do: func(ctx context.Context, s *startOp) error {
		f, err := os.Open(filepath.Join(s.rec.Restore.Dir, snapState))
		if err != nil {
			return err
		}
		defer f.Close()
		lo := vmm.LoadOptions{State: f, Format: s.rec.Restore.Format}
		if !s.rec.Config.NoNetwork {
			lo.TAP = s.plan.TAP
		}
		if s.rec.Restore.file(snapMem) {
			lo.MemFile = filepath.Join(s.rec.Restore.Dir, snapMem)
		}
		return s.bootErr(s.backend.(vmm.Snapshotter).Load(s.bootCtx, s.inst, lo))
	}},
	{name: "resume", do: func(ctx context.Context, s *startOp) error { return s.backend.Resume(s.bootCtx, s.inst) }},
	{name: "wait-agent", do: func(ctx context.Context, s *startOp) error {
		c, err := s.vm.connectAgent(s.bootCtx, s.inst, s.backend)
		if err != nil {
			return s.bootErr(err)
		}
		s.client = c
		return nil
	}, undo: func(ctx context.Context, s *startOp, _ error) { s.vm.dropClient() }},
	dnsStep,
	{name: "guest-restore", kind: ErrCommandUnavailable, do: func(ctx context.Context, s *startOp) error {
		_, err := s.client.Restore(s.bootCtx, s.restoreArgs())
		if errors.Is(err, proto.ErrUnsupported) {
			return fmt.Errorf("the guest agent in this state predates restores (build the image again and take a new snapshot): %w", err)
		}
		if err != nil {
			return err
		}
		if len(s.rec.Config.EnvVars) > 0 {
			if err := s.client.SetEnv(s.bootCtx, s.rec.Config.EnvVars, false); err != nil {
				return fmt.Errorf("set env vars: %w", err)
			}
		}
		return nil
	}},
	stepNamed(startSteps, "wait-ssh"),
	{name: "finish", do: func(ctx context.Context, s *startOp) error {
		p := s.rec.Restore
		if err := s.h().updateRecord(ctx, s.vm.id, func(r *record) error { r.Restore = nil; return nil }); err != nil {
			return err
		}
		if p.Saved {
			// The running VMM maps the memory file; unlinking it keeps
			// the pages and frees the disk space when the VM ends.
			os.RemoveAll(p.Dir)
		}
		return nil
	}},
}

// startTable returns the steps Start runs for the VM: a restore when its
// record holds one, else a boot.
func (vm *VM) startTable(ctx context.Context) []step[*startOp] {
	if _, rec, err := vm.load(ctx); err == nil && rec.Restore != nil {
		if rec.Template != "" && rec.Restore.Snapshot == rec.Template {
			return warmSteps // warm.go
		}
		return restoreSteps
	}
	return startSteps
}

func (s *startOp) verifyRestore(ctx context.Context) error {
	p := s.rec.Restore
	what := "the saved state"
	if p.Snapshot != "" {
		what = "snapshot " + p.Snapshot
	}
	if _, ok := s.backend.(vmm.Snapshotter); !ok || BackendKind(s.backend.Kind()) != p.Backend {
		return fmt.Errorf("%s was taken with the %s backend, this VM would run on %s: %w", what, p.Backend, s.backend.Kind(), ErrUnavailable)
	}
	if err := s.h().checkVMM(ctx, p.Backend, p.VMMVersion, p.Accel, what); err != nil {
		return err
	}
	if err := verifyFiles(ctx, p.Dir, p.Files, snapDisk); err != nil {
		if errors.Is(err, snapfile.ErrCorrupt) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s cannot be restored: %w", what, err)
		}
		return err
	}
	return nil
}

// createFromSnapshot creates a VM that resumes where snapshot
// cfg.FromSnapshot was taken: the snapshot's configuration with cfg's id,
// SSH port, resolvers and extra environment variables (and memory and
// vCPUs, which must match), its own disk copy and its own network identity.
func (h *Host) createFromSnapshot(ctx context.Context, cfg VMConfig, o callOptions) (*VM, error) {
	name := cfg.FromSnapshot
	if err := validateSnapshotName(name); err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrInvalidConfig, configErr("from_snapshot", name, "must name a snapshot"))
	}
	info, err := h.GetSnapshot(ctx, name)
	if err != nil {
		return nil, wrapErr("create", cfg.VMID, ErrNotFound, err)
	}
	base := info.Config
	base.VMID, base.SSHHostPort, base.FromSnapshot = cfg.VMID, cfg.SSHHostPort, name
	base.DiskMode, base.DiskSizeMiB, base.Backend = DiskIsolated, 0, info.Backend
	base.KernelPath, base.InitrdPath, base.RootfsPath = "", "", ""
	if cfg.MemSizeMiB != 0 {
		base.MemSizeMiB = cfg.MemSizeMiB
	}
	if cfg.VCPUCount != 0 {
		base.VCPUCount = cfg.VCPUCount
	}
	if len(cfg.DNSServers) > 0 {
		base.DNSServers = cfg.DNSServers
	}
	if len(cfg.EnvVars) > 0 {
		env := map[string]string{}
		for k, v := range base.EnvVars {
			env[k] = v
		}
		for k, v := range cfg.EnvVars {
			env[k] = v
		}
		base.EnvVars = env
	}
	base = base.WithDefaults()
	if err := base.Validate(); err != nil {
		return nil, wrapErr("create", base.VMID, ErrInvalidConfig, err)
	}
	if err := h.checkRestorable(ctx, info, base); err != nil {
		return nil, wrapErr("create", base.VMID, ErrUnavailable, err)
	}
	c := &createOp{h: h, cfg: base, o: o,
		boot: boot{Kernel: info.Kernel, Initrd: info.Initrd, Disk: filepath.Join(info.Path, snapDisk)},
		restore: &pendingRestore{Snapshot: name, Dir: info.Path, Format: info.Format, Files: info.Files,
			Backend: info.Backend, VMMVersion: info.VMMVersion, Accel: info.Accel},
	}
	if err := runSteps(ctx, h, cloneSteps, c, ErrBackend); err != nil {
		return nil, wrapErr("create", base.VMID, ErrBackend, err)
	}
	c.unlock()
	vm := &VM{h: h, id: base.VMID}
	if err := vm.Refresh(ctx); err != nil {
		return nil, err
	}
	return vm, nil
}

// cloneSteps are createSteps with the boot files taken from a snapshot
// (checked, not built).
var cloneSteps = func() []step[*createOp] {
	var out []step[*createOp]
	for _, s := range createSteps {
		if s.name == "boot-files" {
			s = step[*createOp]{name: "snapshot", kind: ErrState, do: func(ctx context.Context, c *createOp) error {
				if err := verifyFiles(ctx, c.restore.Dir, c.restore.Files, ""); err != nil {
					return fmt.Errorf("snapshot %s cannot be restored: %w", c.restore.Snapshot, err)
				}
				for _, f := range []struct{ field, path string }{{"kernel_path", c.boot.Kernel}, {"initrd_path", c.boot.Initrd}} {
					if _, err := os.Stat(f.path); err != nil {
						return fmt.Errorf("snapshot %s needs %s %s: %w: %w", c.restore.Snapshot, f.field, f.path, err, ErrImage)
					}
				}
				return nil
			}}
		}
		out = append(out, s)
	}
	return out
}()

// Restore rolls the VM back to the snapshot named name: the VM (running or
// not) is stopped, its disk replaced by the snapshot's, and it resumes
// where the snapshot was taken, keeping its own id and network identity.
// Memory size, vCPUs and networking must match the snapshot's.
func (vm *VM) Restore(ctx context.Context, name string) error {
	const op = "snapshot restore"
	info, err := vm.h.GetSnapshot(ctx, name)
	if err != nil {
		return err
	}
	if err := vm.prepareRestore(ctx, info); err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	return vm.Start(ctx)
}

func (vm *VM) prepareRestore(ctx context.Context, info SnapshotInfo) error {
	h := vm.h
	unlock, err := h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	_, rec, err := vm.load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no VM %s: %w", vm.id, ErrNotFound)
	}
	if err != nil {
		return err
	}
	if err := h.checkRestorable(ctx, info, rec.Config); err != nil {
		return err
	}
	if rec.Config.DiskMode != DiskIsolated {
		return fmt.Errorf("a VM with a shared disk cannot be rolled back (its disk is the image's): %w", ErrState)
	}
	if err := verifyFiles(ctx, info.Path, info.Files, ""); err != nil {
		return fmt.Errorf("snapshot %s cannot be restored: %w: %w", info.Name, err, ErrState)
	}
	if err := vm.stopLocked(ctx, true); err != nil {
		return err
	}
	tmp := rec.Boot.Disk + ".restore"
	os.Remove(tmp)
	if err := image.CloneDisk(ctx, filepath.Join(info.Path, snapDisk), tmp, 0); err != nil {
		return err
	}
	if err := os.Rename(tmp, rec.Boot.Disk); err != nil {
		os.Remove(tmp)
		return err
	}
	os.RemoveAll(h.savedPath(vm.id))
	return h.updateRecord(ctx, vm.id, func(r *record) error {
		r.Boot.Kernel, r.Boot.Initrd = info.Kernel, info.Initrd
		r.Restore = &pendingRestore{Snapshot: info.Name, Dir: info.Path, Format: info.Format, Files: info.Files,
			Backend: info.Backend, VMMVersion: info.VMMVersion, Accel: info.Accel}
		return nil
	})
}

// Suspend saves the running VM's memory and device state to its directory
// and ends its VMM, freeing its RAM (`smolvm stop --save`); the VM is then
// stopped with Info().Saved set, and Start resumes it where it was.
func (vm *VM) Suspend(ctx context.Context) error {
	const op = "stop --save"
	h := vm.h
	unlock, err := h.lockVM(ctx, vm.id)
	if err != nil {
		return err
	}
	defer unlock()
	row, _, err := vm.load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return errNoVM(op, vm.id)
	}
	if err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	inst := instanceOf(row)
	if !vmm.Alive(inst.PID, inst.PIDStart) || (row.Status != string(StateRunning) && row.Status != string(StatePaused)) {
		return wrapErr(op, vm.id, ErrState, fmt.Errorf("only a running VM can be saved (status %s)", vmStatus(row)))
	}
	be, err := h.backendOf(row)
	if err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	sn, ok := be.(vmm.Snapshotter)
	if !ok {
		return wrapErr(op, vm.id, ErrUnavailable, fmt.Errorf("the %s backend cannot save VMs", be.Kind()))
	}
	version, err := be.Version(ctx)
	if err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	vm.dropClient()
	tmp := h.savedPath(vm.id) + ".tmp"
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	res, _, err := vm.save(ctx, row, sn, be, tmp, nil, false)
	var files []SnapshotFile
	if err == nil {
		files, err = describeFiles(ctx, tmp, res, false)
	}
	// Until the VMM ends (stopLocked) or the guest is resumed, the row
	// keeps save's mark: cleanup resumes a guest an interrupted save left
	// paused.
	undo := func() {
		if row.Status == string(StateRunning) {
			be.Resume(context.WithoutCancel(ctx), inst)
		}
		vm.clearSaving(context.WithoutCancel(ctx))
	}
	if err != nil {
		undo()
		os.RemoveAll(tmp)
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	// Recorded before the VMM ends: if this process dies now, cleanup
	// stops the paused VMM of a VM with a pending restore, and the next
	// start resumes from the saved state. The VM's own disk stays; the VMM
	// flushed it when the state was saved.
	saved := h.savedPath(vm.id)
	os.RemoveAll(saved)
	if err := os.Rename(tmp, saved); err != nil {
		os.RemoveAll(tmp)
		undo()
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	if err := h.updateRecord(context.WithoutCancel(ctx), vm.id, func(r *record) error {
		r.Restore = &pendingRestore{Saved: true, Dir: saved, Format: res.Format, Files: files,
			Backend: BackendKind(be.Kind()), VMMVersion: version, Accel: row.Accel}
		return nil
	}); err != nil {
		os.RemoveAll(saved)
		undo()
		return wrapErr(op, vm.id, ErrBackend, err)
	}
	if err := vm.stopLocked(context.WithoutCancel(ctx), true); err != nil {
		return err
	}
	return vm.Refresh(context.WithoutCancel(ctx))
}

// snapshots is Cleanup's stage for snapshots: it removes snapshot
// directories a killed `snapshot create` left (temporary or unrecorded),
// and resumes VMs an interrupted snapshot left paused.
func (c *cleaner) snapshots(ctx context.Context) error {
	h := c.h
	ents, _ := os.ReadDir(h.snapDir())
	for _, e := range ents {
		path := filepath.Join(h.snapDir(), e.Name())
		vmID := ""
		if rest, ok := strings.CutPrefix(e.Name(), ".tmp-"); ok {
			vmID, _, _ = strings.Cut(rest, ".")
		} else {
			if _, err := h.st.GetSnapshot(ctx, e.Name()); err == nil || !errors.Is(err, store.ErrNotFound) {
				continue
			}
			var info SnapshotInfo
			if b, err := os.ReadFile(filepath.Join(path, snapMeta)); err == nil && json.Unmarshal(b, &info) == nil {
				vmID = info.VMID
			}
		}
		unlock := func() {}
		if vmID != "" && ValidateVMID(vmID) == nil {
			var err error
			if unlock, err = h.tryLockVM(vmID); err != nil {
				continue // a snapshot in progress
			}
		}
		c.note("snapshot files " + path)
		if !c.co.DryRun {
			if err := os.RemoveAll(path); err != nil {
				c.errs = append(c.errs, err)
			}
		}
		unlock()
	}
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, row := range rows {
		if c.interruptedRestore(ctx, row) || row.Op != store.OpSnapshotting {
			continue
		}
		unlock, err := h.tryLockVM(row.ID)
		if err != nil {
			continue
		}
		c.note("interrupted snapshot of vm " + row.ID)
		if !c.co.DryRun {
			os.RemoveAll(h.savedPath(row.ID) + ".tmp")
			inst := instanceOf(row)
			if be, err := h.backendOf(row); err == nil && vmm.Alive(inst.PID, inst.PIDStart) && row.Status == string(StateRunning) {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := be.Resume(rctx, inst); err != nil {
					c.errs = append(c.errs, fmt.Errorf("resume vm %s: %w", row.ID, err))
				}
				cancel()
			}
			h.st.UpdateVM(ctx, row.ID, func(v *store.VM) error {
				if v.Op == store.OpSnapshotting {
					v.Op = store.OpNone
				}
				return nil
			})
		}
		unlock()
	}
	return nil
}

// interruptedRestore stops the VMM of a VM whose restore was interrupted
// (its record still holds the restore, its VMM runs, its lock is free):
// such a VMM waits for a state or holds a paused guest forever. The VM is
// left stopped with the restore pending, so the next start restores again.
// It reports whether it handled the VM.
func (c *cleaner) interruptedRestore(ctx context.Context, row store.VM) bool {
	var rec record
	if json.Unmarshal(row.Config, &rec) != nil || rec.Restore == nil || !vmm.Alive(row.PID, row.PIDStart) {
		return false
	}
	unlock, err := c.h.tryLockVM(row.ID)
	if err != nil {
		return true // busy: a start in progress
	}
	defer unlock()
	c.note("interrupted restore of vm " + row.ID)
	if c.co.DryRun {
		return true
	}
	vm := &VM{h: c.h, id: row.ID}
	if err := vm.stopLocked(ctx, true); err != nil {
		c.errs = append(c.errs, err)
	}
	return true
}
