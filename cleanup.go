package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

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
	c := &cleaner{h: h, co: co, rep: CleanupReport{DryRun: co.DryRun, Removed: []string{}}}
	for _, stage := range []func(context.Context) error{c.snapshots, c.warm, c.vms, c.processes, c.shares, c.files, c.claims, c.network, c.dnsForwarder, c.cgroups} {
		if err := stage(ctx); err != nil {
			c.errs = append(c.errs, err)
			break
		}
		if err := ctx.Err(); err != nil {
			c.errs = append(c.errs, err)
			break
		}
	}
	sort.Strings(c.rep.Removed)
	if len(c.errs) > 0 {
		wrapped := make([]error, len(c.errs))
		for i, err := range c.errs {
			wrapped[i] = wrapErr("cleanup", "", ErrBackend, err) // each keeps its kind
		}
		return c.rep, errors.Join(wrapped...)
	}
	return c.rep, nil
}

// cleaner is one Cleanup: its options, what it removed and the errors that
// did not stop it.
type cleaner struct {
	h    *Host
	co   CleanupOptions
	rep  CleanupReport
	errs []error
}

func (c *cleaner) note(s string) { c.rep.Removed = append(c.rep.Removed, s) }

// vms deletes every VM with All; else those whose create or delete was
// interrupted (and whose lock is free: not in progress).
func (c *cleaner) vms(ctx context.Context) error {
	h := c.h
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, row := range rows {
		unlock, err := h.tryLockVM(row.ID)
		if errors.Is(err, errLockBusy) {
			continue
		}
		if err != nil {
			c.errs = append(c.errs, err)
			continue
		}
		row, err := h.st.GetVM(ctx, row.ID) // again, under the lock
		if err == nil {
			row, err = h.reconcile(ctx, row)
		}
		switch {
		case err != nil:
			if !errors.Is(err, store.ErrNotFound) {
				c.errs = append(c.errs, err)
			}
		case c.co.All || row.Op == store.OpCreating || row.Op == store.OpDeleting:
			c.note("vm " + row.ID)
			if !c.co.DryRun {
				vm := &VM{h: h, id: row.ID}
				if err := vm.deleteLocked(ctx, true); err != nil && !errors.Is(err, ErrNotFound) {
					c.errs = append(c.errs, err)
				}
			}
		}
		unlock()
	}
	return nil
}

// processes kills VMM processes of ours that their VM's record does not own.
func (c *cleaner) processes(ctx context.Context) error {
	h := c.h
	for pid, id := range h.vmmProcesses() {
		unlock, err := h.tryLockVM(id)
		if err != nil {
			continue // busy: a start is under way
		}
		r, err := h.st.GetVM(ctx, id)
		switch {
		case err == nil && r.PID == pid:
		case err != nil && !errors.Is(err, store.ErrNotFound):
			c.errs = append(c.errs, err)
		default:
			c.note(fmt.Sprintf("process %d (vm %s)", pid, id))
			if !c.co.DryRun {
				if err := vmm.KillProcess(pid, 0); err != nil {
					c.errs = append(c.errs, err)
				}
				// Its cgroup held it: it goes with it.
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				vmm.WaitExit(wctx, vmm.Instance{PID: pid})
				cancel()
				if err := h.removeCgroup(ctx, id); err != nil {
					c.errs = append(c.errs, err)
				}
			}
		}
		unlock()
	}
	return nil
}

// files removes the files of VMs that do not exist and the runtime files
// of VMs that do not run.
func (c *cleaner) files(ctx context.Context) error {
	h := c.h
	for _, f := range []struct{ dir, suffix string }{
		{filepath.Join(h.dir, "vms"), ""}, {filepath.Join(h.dir, "logs"), ".log"}, {filepath.Join(h.dir, "logs"), ".log.1"}, {filepath.Join(h.dir, "locks"), ".lock"},
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
			c.cleanFiles(ctx, id, filepath.Join(f.dir, e.Name()), f.suffix == "")
			unlock()
		}
	}
	return nil
}

// claims prunes host-wide lease claims nothing backs: this data
// directory's whose VM is gone (a claim of work in progress is backed by
// its VM's lock), and those of data directories that were removed.
func (c *cleaner) claims(ctx context.Context) error {
	h := c.h
	pruned, err := h.claims.Prune(h.dir, func(i int, id string) bool {
		l, err := h.st.LeaseOf(ctx, id)
		switch {
		case err == nil:
			return l.Index == i || h.lockBusy(id)
		case errors.Is(err, store.ErrNotFound):
			return h.lockBusy(id)
		}
		return true // unsure: keep it
	}, c.co.DryRun)
	if err != nil {
		c.errs = append(c.errs, err)
	}
	for _, i := range pruned {
		c.note(fmt.Sprintf("lease claim %d", i))
	}
	return nil
}

// network removes TAP devices and rules of ours that no running VM owns.
func (c *cleaner) network(ctx context.Context) error {
	h := c.h
	running := map[string]bool{}
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if (r.Status == string(StateRunning) || r.Status == string(StatePaused)) && vmm.Alive(r.PID, r.PIDStart) {
			running[r.ID] = true
		}
	}
	// A VM that runs keeps its TAP and rules, and so does one whose lock is
	// held: a start in progress has made them and not recorded the VMM yet.
	keep := func(id string) bool { return running[id] || (id != "" && h.lockBusy(id)) }
	if network.Check() != nil {
		return nil // without network privileges nothing here can be removed, nor our rules read
	}
	removed, err := network.Cleanup(ctx, keep, c.co.DryRun)
	c.rep.Removed = append(c.rep.Removed, removed...)
	if err != nil {
		c.errs = append(c.errs, err)
	}
	return nil
}

// cleanFiles removes path (a VM directory, log or lock of id) when no VM id
// is recorded, or the sockets in id's directory when id does not run. The
// VM's lock must be held.
func (c *cleaner) cleanFiles(ctx context.Context, id, path string, isDir bool) {
	h, dryRun, note := c.h, c.co.DryRun, c.note
	row, err := h.st.GetVM(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		note(path)
		if !dryRun {
			if err := os.RemoveAll(path); err != nil {
				c.errs = append(c.errs, err)
			}
		}
	case err != nil:
		c.errs = append(c.errs, err)
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
		// A confined QEMU has no path of ours on its command line: its
		// environment names its VM directory (qemu.VMDirEnv).
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		b = append(append(b, 0), env...)
		i := strings.Index(string(b), prefix)
		if i < 0 || !vmm.Alive(pid, 0) {
			continue
		}
		id := string(b)[i+len(prefix):]
		if j := strings.IndexAny(id, "/\x00"); j >= 0 {
			id = id[:j]
		}
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
