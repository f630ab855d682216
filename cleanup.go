package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
// whose creation was interrupted, and TAP devices and rules of ours that no
// running VM owns. With All it deletes every VM first.
func Cleanup(ctx context.Context, co CleanupOptions, opts ...Option) (CleanupReport, error) {
	h, err := openHost(ctx, buildOptions(opts))
	if err != nil {
		return CleanupReport{}, err
	}
	defer h.close()
	rep := CleanupReport{DryRun: co.DryRun, Removed: []string{}}
	var errs []error
	note := func(s string) { rep.Removed = append(rep.Removed, s) }

	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return rep, err
	}
	for _, row := range rows {
		row, err := h.reconcile(ctx, row)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var rec record
		_ = json.Unmarshal(row.Config, &rec)
		// Interrupted creates and deletes are finished here.
		incomplete := !rec.Complete || row.Error == markDeleting
		if !co.All && !incomplete {
			continue
		}
		if incomplete && !co.All {
			// Skip one still in progress: its process holds the lock.
			if unlock, ok := h.tryLockVM(row.ID); ok {
				unlock()
			} else {
				continue
			}
		}
		note("vm " + row.ID)
		if co.DryRun {
			continue
		}
		vm := &VM{h: &host{dir: h.dir, st: h.st, bootTimeout: h.bootTimeout}, id: row.ID}
		if err := vm.deleteKeepOpen(ctx, true); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}

	// What survives: VMs recorded now, and the ones running.
	rows, _ = h.st.ListVMs(ctx)
	known, running := map[string]store.VM{}, map[string]bool{}
	for _, r := range rows {
		known[r.ID] = r
		if (r.Status == string(StateRunning) || r.Status == string(StatePaused)) && vmm.Alive(r.PID, r.PIDStart) {
			running[r.ID] = true
		}
	}
	// VMM processes of ours that no recorded VM owns.
	for pid, id := range h.vmmProcesses() {
		if r, ok := known[id]; ok && r.PID == pid {
			continue
		}
		note(fmt.Sprintf("process %d (vm %s)", pid, id))
		if !co.DryRun {
			if err := vmm.KillProcess(pid, 0); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Files of VMs that do not exist; sockets of VMs that do not run.
	for _, f := range []struct {
		dir, suffix string
	}{{filepath.Join(h.dir, "vms"), ""}, {filepath.Join(h.dir, "logs"), ".log"}, {filepath.Join(h.dir, "locks"), ".lock"}} {
		ents, _ := os.ReadDir(f.dir)
		for _, e := range ents {
			id := strings.TrimSuffix(e.Name(), f.suffix)
			p := filepath.Join(f.dir, e.Name())
			if _, ok := known[id]; ok {
				if f.suffix == "" && !running[id] {
					for _, s := range []string{"agent.sock", "qmp.sock"} {
						if _, err := os.Lstat(filepath.Join(p, s)); err == nil {
							note("socket " + filepath.Join(p, s))
							if !co.DryRun {
								os.Remove(filepath.Join(p, s))
							}
						}
					}
				}
				continue
			}
			note(p)
			if !co.DryRun {
				if err := os.RemoveAll(p); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// TAP devices and rules of ours that no running VM owns.
	if co.DryRun {
		for _, l := range h.orphanTAPs(ctx, running) {
			note("link " + l)
		}
	} else if network.Check() == nil {
		removed, err := network.Cleanup(ctx, func(id string) bool { return running[id] })
		rep.Removed = append(rep.Removed, removed...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	sort.Strings(rep.Removed)
	return rep, errors.Join(errs...)
}

var tapName = regexp.MustCompile(`^smol[0-9]+$`)

// orphanTAPs lists TAP-like links that no running VM's lease names.
func (h *host) orphanTAPs(ctx context.Context, running map[string]bool) []string {
	owned := map[string]bool{}
	leases, _ := h.st.Leases(ctx)
	for _, l := range leases {
		if running[l.VMID] {
			owned[l.TAP] = true
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range links {
		if name := l.Attrs().Name; tapName.MatchString(name) && !owned[name] {
			out = append(out, name)
		}
	}
	return out
}

// vmmProcesses maps the PIDs of live VMM processes started for this data
// directory to their VM ids, found by the VM directory on their command line.
func (h *host) vmmProcesses() map[int]string {
	out := map[int]string{}
	prefix := filepath.Join(h.dir, "vms") + "/"
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := string(b)
		i := strings.Index(cmd, prefix)
		if i < 0 || !vmm.Alive(pid, 0) {
			continue
		}
		rest := cmd[i+len(prefix):]
		id, _, _ := strings.Cut(rest, "/")
		if ValidateVMID(id) == nil {
			out[pid] = id
		}
	}
	return out
}

// tryLockVM takes a VM's lock if it is free.
func (h *host) tryLockVM(id string) (unlock func(), ok bool) {
	f, err := os.OpenFile(h.lockPath(id), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		f.Close()
		return nil, false
	}
	return func() { f.Close() }, true
}
