package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// CleanupOptions tunes Cleanup.
type CleanupOptions struct {
	// All deletes every VM too, not only orphans.
	All bool
	// DryRun lists what would be removed and touches nothing.
	DryRun bool
}

// CleanupReport lists what Cleanup removed (or would remove).
type CleanupReport struct {
	// Removed describes each thing removed, e.g. "vm web", "process 123 (vm web)".
	Removed []string `json:"removed"`
	// DryRun reports whether nothing was actually removed.
	DryRun bool `json:"dry_run"`
}

// Cleanup brings the data directory and the host back to a consistent
// state: it kills VMM processes of VMs that are not recorded as running,
// removes VM directories, logs and locks of VMs that do not exist, VMs
// whose creation or deletion was interrupted, and TAP devices and rules of
// ours that no running VM owns. With All it deletes every VM first.
//
// It touches a VM's things only while holding that VM's lock, so work in
// progress in another process (a create, a start) is left alone.
func (h *Host) Cleanup(ctx context.Context, co CleanupOptions) (CleanupReport, error) {
	rep := CleanupReport{DryRun: co.DryRun, Removed: []string{}}
	var errs []error
	note := func(s string) { rep.Removed = append(rep.Removed, s) }
	fail := func(err error) (CleanupReport, error) {
		sort.Strings(rep.Removed)
		return rep, wrapErr("cleanup", "", ErrBackend, errors.Join(append(errs, err)...))
	}

	// VMs to delete: every one with All; else those whose create or delete
	// was interrupted (and whose lock is free: not in progress).
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return fail(err)
	}
	for _, row := range rows {
		unlock, err := h.tryLockVM(row.ID)
		if errors.Is(err, errLockBusy) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		row, err := h.st.GetVM(ctx, row.ID) // again, under the lock
		if err == nil {
			row, err = h.reconcile(ctx, row)
		}
		if err != nil {
			unlock()
			if !errors.Is(err, store.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		if co.All || row.Op == store.OpCreating || row.Op == store.OpDeleting {
			note("vm " + row.ID)
			if !co.DryRun {
				vm := &VM{h: h, id: row.ID}
				if err := vm.deleteLocked(ctx, true); err != nil && !errors.Is(err, ErrNotFound) {
					errs = append(errs, err)
				}
			}
		}
		unlock()
	}
	if ctx.Err() != nil {
		return fail(ctx.Err())
	}

	// VMM processes of ours that their VM's record does not own.
	for pid, id := range h.vmmProcesses() {
		unlock, err := h.tryLockVM(id)
		if err != nil {
			continue // busy: a start is under way
		}
		if r, err := h.st.GetVM(ctx, id); err == nil && r.PID == pid {
			unlock()
			continue
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			unlock()
			errs = append(errs, err)
			continue
		}
		note(fmt.Sprintf("process %d (vm %s)", pid, id))
		if !co.DryRun {
			if err := vmm.KillProcess(pid, 0); err != nil {
				errs = append(errs, err)
			}
		}
		unlock()
	}
	if ctx.Err() != nil {
		return fail(ctx.Err())
	}

	// Files of VMs that do not exist; sockets of VMs that do not run.
	for _, f := range []struct{ dir, suffix string }{
		{filepath.Join(h.dir, "vms"), ""}, {filepath.Join(h.dir, "logs"), ".log"}, {filepath.Join(h.dir, "locks"), ".lock"},
	} {
		ents, _ := os.ReadDir(f.dir)
		for _, e := range ents {
			id := strings.TrimSuffix(e.Name(), f.suffix)
			if ValidateVMID(id) != nil {
				continue
			}
			unlock, err := h.tryLockVM(id)
			if err != nil {
				continue // busy: work in progress
			}
			h.cleanFiles(ctx, id, filepath.Join(f.dir, e.Name()), f.suffix == "", co.DryRun, note, &errs)
			unlock()
		}
	}

	// Host-wide lease claims nothing backs: this data directory's whose VM
	// is gone (a claim of work in progress is backed by its VM's lock), and
	// those of data directories that were removed.
	pruned, err := h.claims.Prune(h.dir, func(i int, id string) bool {
		l, err := h.st.LeaseOf(ctx, id)
		switch {
		case err == nil:
			return l.Index == i || h.lockBusy(id)
		case errors.Is(err, store.ErrNotFound):
			return h.lockBusy(id)
		}
		return true // unsure: keep it
	}, co.DryRun)
	if err != nil {
		errs = append(errs, err)
	}
	for _, i := range pruned {
		note(fmt.Sprintf("lease claim %d", i))
	}

	// TAP devices and rules of ours that no running VM owns.
	running := map[string]bool{}
	rows, err = h.st.ListVMs(ctx)
	if err != nil {
		return fail(err)
	}
	for _, r := range rows {
		if (r.Status == string(StateRunning) || r.Status == string(StatePaused)) && vmm.Alive(r.PID, r.PIDStart) {
			running[r.ID] = true
		}
	}
	// A VM that runs keeps its TAP and rules, and so does one whose lock is
	// held: a start in progress has made them and not recorded the VMM yet.
	keep := func(id string) bool { return running[id] || (id != "" && h.lockBusy(id)) }
	if co.DryRun {
		if links, err := network.OrphanLinks(keep); err == nil {
			rep.Removed = append(rep.Removed, links...)
		}
	} else if network.Check() == nil {
		removed, err := network.Cleanup(ctx, keep)
		rep.Removed = append(rep.Removed, removed...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	sort.Strings(rep.Removed)
	if len(errs) > 0 {
		return rep, wrapErr("cleanup", "", ErrBackend, errors.Join(errs...))
	}
	return rep, nil
}

// cleanFiles removes path (a VM directory, log or lock of id) when no VM id
// is recorded, or the sockets in id's directory when id does not run. The
// VM's lock must be held.
func (h *Host) cleanFiles(ctx context.Context, id, path string, isDir, dryRun bool, note func(string), errs *[]error) {
	row, err := h.st.GetVM(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		note(path)
		if !dryRun {
			if err := os.RemoveAll(path); err != nil {
				*errs = append(*errs, err)
			}
		}
	case err != nil:
		*errs = append(*errs, err)
	case isDir && !vmm.Alive(row.PID, row.PIDStart):
		be, err := h.backendOf(row)
		if err != nil {
			return // never started: no runtime files
		}
		for _, s := range be.RuntimeFiles() {
			if _, err := os.Lstat(filepath.Join(path, s)); err == nil {
				note("file " + filepath.Join(path, s))
				if !dryRun {
					os.Remove(filepath.Join(path, s))
				}
			}
		}
	}
}

// vmmProcesses maps the PIDs of live VMM processes (QEMU or Firecracker)
// started for this data directory to their VM ids, found by the VM
// directory on their command line.
func (h *Host) vmmProcesses() map[int]string {
	out := map[int]string{}
	prefix := filepath.Join(h.dir, "vms") + "/"
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || !h.isVMM(exe) {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		i := strings.Index(string(b), prefix)
		if i < 0 || !vmm.Alive(pid, 0) {
			continue
		}
		id, _, _ := strings.Cut(string(b)[i+len(prefix):], "/")
		if ValidateVMID(id) == nil {
			out[pid] = id
		}
	}
	return out
}

// isVMM reports whether exe is the VMM of a registered backend.
func (h *Host) isVMM(exe string) bool {
	for _, k := range vmm.Kinds() {
		if be, err := h.backend(k); err == nil && be.IsVMM(exe) {
			return true
		}
	}
	return false
}
