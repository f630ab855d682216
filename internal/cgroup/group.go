package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Group is one VM's cgroup: a directory in each hierarchy we use.
type Group struct {
	name string
	l    *layout
	dirs []string // dirs[i] is the group's directory in l.hier[i]
}

// validName is what a group name may look like: a VM id.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// checkName rejects names that are not plain, short directory names.
func checkName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("%w: %q (want 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit)", ErrInvalidName, name)
	}
	return nil
}

// Create makes the group name on this machine with limits l.
func Create(name string, l Limits) (*Group, error) { return Host{}.Create(name, l) }

// Open returns the existing group name on this machine.
func Open(name string) (*Group, error) { return Host{}.Open(name) }

// List returns the names of this machine's groups, sorted.
func List() ([]string, error) { return Host{}.List() }

// Create makes the group name with limits l in every hierarchy we use. It
// fails, leaving nothing behind, when the name is taken, a limit breaks
// its rule, or the host lacks a controller a limit needs.
func (h Host) Create(name string, l Limits) (_ *Group, retErr error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	lay, err := h.layout()
	if err != nil {
		return nil, err
	}
	if lay.mode == ModeNone {
		return nil, fmt.Errorf("%w: no cgroup hierarchy is mounted", ErrUnsupported)
	}
	for _, c := range l.needs() {
		if lay.find(c) == nil {
			return nil, fmt.Errorf("%w: the %s limit needs the %s controller, which this host (%s) does not offer", ErrUnsupported, c, c, lay.mode)
		}
	}
	// g.dirs holds only directories this call made, so the undo never
	// touches an existing group of the same name.
	g := &Group{name: name, l: lay}
	defer func() {
		if retErr != nil {
			g.rmdirs()
		}
	}()
	for _, hy := range lay.hier {
		dir := filepath.Join(hy.base, Dir, name)
		if err := makeGroupDir(hy, dir); err != nil {
			return nil, err
		}
		g.dirs = append(g.dirs, dir)
	}
	if err := g.SetLimits(l); err != nil {
		return nil, err
	}
	return g, nil
}

// makeGroupDir creates dir and, on v2, enables our controllers for it in
// its parents. mkdir of an existing group is ErrExists.
func makeGroupDir(hy *hierarchy, dir string) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("cgroup: create %s: %w", parent, err)
	}
	if hy.version == 2 {
		for _, d := range []string{hy.base, parent} {
			if err := enableControllers(d, hy.serves); err != nil {
				return err
			}
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, dir)
		}
		return fmt.Errorf("cgroup: create %s: %w", dir, err)
	}
	return nil
}

// enableControllers enables, in one write to dir's cgroup.subtree_control,
// every controller in cs not yet enabled there.
func enableControllers(dir string, cs []string) error {
	on, _ := readWords(filepath.Join(dir, "cgroup.subtree_control"))
	var add []string
	for _, c := range cs {
		if !slices.Contains(on, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(add, " ")); err != nil {
		hint := ""
		if errors.Is(err, unix.EBUSY) {
			hint = " (a v2 cgroup with processes of its own cannot delegate controllers: do not nest there)"
		}
		return fmt.Errorf("cgroup: enable %s in %s: %w%s", strings.Join(add, " "), dir, err, hint)
	}
	return nil
}

// Open returns the existing group name; ErrNotFound if it is missing
// from any hierarchy we use.
func (h Host) Open(name string) (*Group, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	lay, err := h.layout()
	if err != nil {
		return nil, err
	}
	g := &Group{name: name, l: lay}
	for _, hy := range lay.hier {
		dir := filepath.Join(hy.base, Dir, name)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("%w: %s (no %s)", ErrNotFound, name, dir)
		}
		g.dirs = append(g.dirs, dir)
	}
	if len(g.dirs) == 0 {
		return nil, fmt.Errorf("%w: %s (no cgroup hierarchy)", ErrNotFound, name)
	}
	return g, nil
}

// List returns the names of the groups in any hierarchy we use, sorted,
// so cleanup can find groups whose VM is gone.
func (h Host) List() ([]string, error) {
	lay, err := h.layout()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, hy := range lay.hier {
		ents, err := os.ReadDir(filepath.Join(hy.base, Dir))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cgroup: list: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() && validName.MatchString(e.Name()) && !slices.Contains(names, e.Name()) {
				names = append(names, e.Name())
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Mode returns how the host's cgroups are arranged.
func (g *Group) Mode() Mode { return g.l.mode }

// Paths returns the group's directory in each hierarchy.
func (g *Group) Paths() []string { return slices.Clone(g.dirs) }

// dirFor returns the group's directory in the hierarchy serving
// controller c, and that hierarchy; "" if none does.
func (g *Group) dirFor(c string) (string, *hierarchy) {
	for i, hy := range g.l.hier {
		if slices.Contains(hy.serves, c) {
			return g.dirs[i], hy
		}
	}
	return "", nil
}

// dirV1 returns the group's directory in the v1 hierarchy that has the
// named v1 controller (cpuacct may have a hierarchy of its own).
func (g *Group) dirV1(name string) string {
	for i, hy := range g.l.hier {
		if hy.version == 1 && slices.Contains(hy.v1, name) {
			return g.dirs[i]
		}
	}
	return ""
}

// SetLimits changes the group's limits; a zero field removes that limit.
func (g *Group) SetLimits(l Limits) error {
	if err := l.Validate(); err != nil {
		return err
	}
	for _, c := range ourControllers {
		dir, hy := g.dirFor(c)
		if hy == nil {
			if slices.Contains(l.needs(), c) {
				return fmt.Errorf("%w: the %s limit needs the %s controller", ErrUnsupported, c, c)
			}
			continue
		}
		ws := l.writesV1(c, dir)
		if hy.version == 2 {
			ws = l.writesV2(c)
		}
		if err := apply(dir, ws); err != nil {
			return err
		}
	}
	return nil
}

// Limits reads back the group's memory, pids and CPU limits (I/O limits
// are not read back).
func (g *Group) Limits() (Limits, error) {
	var l Limits
	var err error
	if dir, hy := g.dirFor(Memory); hy != nil {
		file := "memory.limit_in_bytes"
		if hy.version == 2 {
			file = "memory.max"
		}
		if l.MemoryBytes, err = readInt(filepath.Join(dir, file)); err != nil {
			return l, fmt.Errorf("cgroup: memory limit: %w", err)
		}
	}
	if dir, hy := g.dirFor(Pids); hy != nil {
		if l.Pids, err = readInt(filepath.Join(dir, "pids.max")); err != nil {
			return l, fmt.Errorf("cgroup: pids limit: %w", err)
		}
	}
	if dir, hy := g.dirFor(CPU); hy != nil {
		if l.CPUs, err = readCPULimit(dir, hy.version); err != nil {
			return l, fmt.Errorf("cgroup: cpu limit: %w", err)
		}
	}
	return l, nil
}

// readCPULimit reads the CPU quota as a number of CPUs.
func readCPULimit(dir string, version int) (float64, error) {
	if version == 2 {
		b, err := os.ReadFile(filepath.Join(dir, "cpu.max"))
		if err != nil {
			return 0, err
		}
		return parseCPUMax(strings.TrimSpace(string(b)))
	}
	q, err := readInt(filepath.Join(dir, "cpu.cfs_quota_us"))
	if err != nil || q <= 0 {
		return 0, err
	}
	p, err := readInt(filepath.Join(dir, "cpu.cfs_period_us"))
	if err != nil || p <= 0 {
		return 0, fmt.Errorf("cpu.cfs_period_us: %d", p)
	}
	return float64(q) / float64(p), nil
}

// Add moves process pid (all its threads) into the group in every hierarchy.
func (g *Group) Add(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("cgroup: add pid %d: not a process id", pid)
	}
	for _, dir := range g.dirs {
		if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup: add pid %d to %s: %w", pid, dir, err)
		}
	}
	return nil
}

// Procs returns the processes in the group (the union over hierarchies).
func (g *Group) Procs() ([]int, error) {
	var pids []int
	for _, dir := range g.dirs {
		words, err := readWords(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cgroup: procs of %s: %w", g.name, err)
		}
		for _, w := range words {
			if pid, err := strconv.Atoi(w); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	slices.Sort(pids)
	return pids, nil
}

// Remove deletes the group. It kills nothing: if processes remain, it
// fails with ErrNotEmpty naming them (see Kill and Destroy).
func (g *Group) Remove() error {
	pids, err := g.Procs()
	if err != nil {
		return err
	}
	if len(pids) > 0 {
		return fmt.Errorf("%w: %s still has processes %v", ErrNotEmpty, g.name, pids)
	}
	return g.rmdirs()
}

// rmdirs removes the group's directories, and the parent Dir where it is
// left empty.
func (g *Group) rmdirs() error {
	var errs []error
	for _, dir := range g.dirs {
		if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("cgroup: remove %s: %w", dir, err))
			continue
		}
		_ = unix.Rmdir(filepath.Dir(dir)) // fails while other groups exist
	}
	return errors.Join(errs...)
}

// Kill sends SIGKILL to every process in the group until none is left or
// ctx is done. On v2 it uses cgroup.kill where the kernel has it.
func (g *Group) Kill(ctx context.Context) error {
	for i, hy := range g.l.hier {
		if hy.version == 2 {
			if err := writeFile(filepath.Join(g.dirs[i], "cgroup.kill"), "1"); err == nil {
				break
			}
		}
	}
	for {
		pids, err := g.Procs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup: kill %s: processes %v remain: %w", g.name, pids, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Destroy kills every process in the group and removes it.
func (g *Group) Destroy(ctx context.Context) error {
	if err := g.Kill(ctx); err != nil {
		return err
	}
	return g.Remove()
}

// RemoveEmpty removes the group name from every hierarchy where it
// exists, without opening it first, so a group left half-made is removed
// too. The kernel refuses to remove a group that holds processes: that is
// ErrNotEmpty, and nothing is killed. A group that does not exist is
// success.
func (h Host) RemoveEmpty(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	lay, err := h.layout()
	if err != nil {
		return err
	}
	var errs []error
	for _, hy := range lay.hier {
		dir := filepath.Join(hy.base, Dir, name)
		err := unix.Rmdir(dir)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			_ = unix.Rmdir(filepath.Dir(dir)) // fails while other groups exist
		case errors.Is(err, unix.EBUSY):
			errs = append(errs, fmt.Errorf("%w: %s", ErrNotEmpty, dir))
		default:
			errs = append(errs, fmt.Errorf("cgroup: remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// Age returns how long ago the group name was made (its oldest
// directory's change time), so cleanup can leave alone a group another
// program is still setting up.
func (h Host) Age(name string) (time.Duration, error) {
	if err := checkName(name); err != nil {
		return 0, err
	}
	lay, err := h.layout()
	if err != nil {
		return 0, err
	}
	var age time.Duration
	found := false
	for _, hy := range lay.hier {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(hy.base, Dir, name), &st); err != nil {
			continue
		}
		found = true
		age = max(age, time.Since(time.Unix(st.Ctim.Unix())))
	}
	if !found {
		return 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return age, nil
}

// RelPath returns the group's path relative to a hierarchy's root, as
// /proc/PID/cgroup shows it (e.g. "/smolvm/web").
func (g *Group) RelPath() string {
	if len(g.dirs) == 0 {
		return ""
	}
	hy := g.l.hier[0]
	rel, err := filepath.Rel(hy.mount, g.dirs[0])
	if err != nil {
		return ""
	}
	return filepath.Join(hy.root, rel)
}
