// Package cgroup puts each VM's VMM process in a cgroup of its own, named
// after the VM, and limits its memory, process count, CPU time and block
// I/O. It works with cgroup v2 (unified), v1 (one hierarchy per
// controller) and hybrid hosts (some controllers on v1, the rest on v2).
//
// Groups live at smolvm/<name> under each hierarchy's root (or, with
// Host.Nest, under the calling process's own cgroup). Where the host
// mounts its hierarchies is read from the mount table, never assumed, and
// every input of that detection is a field of Host so tests can point it
// at a fake tree.
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is the directory under a hierarchy's root (or the caller's cgroup,
// with Host.Nest) that holds every group of this package.
const Dir = "smolvm"

// Mode is how the host's cgroups are arranged.
type Mode int

// Modes Detect reports. The zero value means unknown.
const (
	// ModeNone means no cgroup hierarchy serves any controller we use.
	ModeNone Mode = iota + 1
	// ModeV1 means every controller we use is on a v1 hierarchy (a v2
	// mount without those controllers may exist beside them).
	ModeV1
	// ModeV2 means the unified hierarchy serves everything.
	ModeV2
	// ModeHybrid means some controllers are on v1 hierarchies and others
	// on the v2 hierarchy.
	ModeHybrid
)

// String returns the mode's name.
func (m Mode) String() string {
	switch m {
	case ModeNone:
		return "none"
	case ModeV1:
		return "v1"
	case ModeV2:
		return "v2"
	case ModeHybrid:
		return "hybrid"
	}
	return "unknown"
}

// Error kinds, checked with errors.Is.
var (
	// ErrUnsupported means the host lacks cgroups or a controller a limit needs.
	ErrUnsupported = errors.New("cgroup controller unavailable")
	// ErrInvalidLimit means a limit breaks a rule; the text names the limit
	// and the rule.
	ErrInvalidLimit = errors.New("invalid cgroup limit")
	// ErrInvalidName means a group name is not a plain name.
	ErrInvalidName = errors.New("invalid cgroup name")
	// ErrNotEmpty means processes remain in a group that is to be removed.
	ErrNotEmpty = errors.New("cgroup not empty")
	// ErrNotFound means no group of that name exists.
	ErrNotFound = errors.New("cgroup not found")
	// ErrExists means a group of that name already exists.
	ErrExists = errors.New("cgroup already exists")
)

// Controllers this package uses, by their v2 names.
const (
	Memory = "memory"
	Pids   = "pids"
	CPU    = "cpu"
	IO     = "io"
)

// ourControllers are the controllers we use, by v2 name.
var ourControllers = []string{Memory, Pids, CPU, IO}

// v1Names maps a v2 controller name to the v1 hierarchies that serve it.
// CPU needs cpu (limits) and cpuacct (usage); they may share a hierarchy.
var v1Names = map[string][]string{
	Memory: {"memory"},
	Pids:   {"pids"},
	CPU:    {"cpu", "cpuacct"},
	IO:     {"blkio"},
}

// Host says where to find the host's cgroups. The zero value means this
// machine; tests fill it to describe a fake one.
type Host struct {
	// MountInfo is the mount table to read; empty means /proc/self/mountinfo.
	MountInfo string
	// SelfCgroup is the calling process's cgroup list; empty means
	// /proc/self/cgroup. Only Nest reads it.
	SelfCgroup string
	// FSRoot is prefixed to every mount point read from MountInfo, so a
	// fake /sys/fs/cgroup can live in a temporary directory; empty means /.
	FSRoot string
	// Nest places groups under the calling process's own cgroup in each
	// hierarchy instead of under the hierarchy's root. On v2 this only
	// works when that cgroup has no processes of its own.
	Nest bool
}

// hierarchy is one mounted cgroup hierarchy we use.
type hierarchy struct {
	version int
	mount   string   // mount point, with FSRoot
	root    string   // the part of the hierarchy mounted there (mountinfo field 4)
	v1      []string // v1 controllers bound to it
	serves  []string // our controllers (v2 names) it serves
	base    string   // directory holding Dir: the root, or our own cgroup with Nest
}

// layout is the host's arrangement of the hierarchies we use.
type layout struct {
	mode Mode
	hier []*hierarchy
}

// Detect reports how this machine's cgroups are arranged.
func Detect() (Mode, error) { return Host{}.Detect() }

// Detect reports how h's cgroups are arranged.
func (h Host) Detect() (Mode, error) {
	l, err := h.layout()
	if err != nil {
		return 0, err
	}
	return l.mode, nil
}

// Controllers returns the controllers (memory, pids, cpu, io) that some
// hierarchy serves, so a caller can leave out limits the host cannot
// enforce.
func (h Host) Controllers() ([]string, error) {
	l, err := h.layout()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range ourControllers {
		if l.find(c) != nil {
			out = append(out, c)
		}
	}
	return out, nil
}

// find returns the hierarchy serving controller c, or nil.
func (l *layout) find(c string) *hierarchy {
	for _, hy := range l.hier {
		if slices.Contains(hy.serves, c) {
			return hy
		}
	}
	return nil
}

// mountEntry is one cgroup line of the mount table.
type mountEntry struct {
	root, point, fstype string
	super               []string
}

// layout reads the mount table and decides which hierarchy serves which
// controller: a controller bound to v1 cannot be on v2 at the same time.
func (h Host) layout() (*layout, error) {
	mounts, err := h.cgroupMounts()
	if err != nil {
		return nil, err
	}
	l := &layout{}
	taken := map[string]bool{}
	var v2 *mountEntry
	for i := range mounts {
		m := &mounts[i]
		if m.fstype == "cgroup2" {
			if v2 == nil || m.point == "/sys/fs/cgroup" {
				v2 = m
			}
			continue
		}
		hy := &hierarchy{version: 1, mount: filepath.Join(h.FSRoot, m.point), root: m.root}
		for _, o := range m.super {
			for _, c := range ourControllers {
				if slices.Contains(v1Names[c], o) {
					hy.v1 = append(hy.v1, o)
					// The limits live in the first name's hierarchy (cpu,
					// not cpuacct, when they are mounted apart).
					if o == v1Names[c][0] && !taken[c] && v1Complete(c, mounts) {
						hy.serves = append(hy.serves, c)
					}
				}
			}
		}
		slices.Sort(hy.v1)
		for _, c := range hy.serves {
			taken[c] = true
		}
		if len(hy.v1) > 0 && !duplicate(l, hy) {
			l.hier = append(l.hier, hy)
		}
	}
	v1Used := len(taken) > 0
	if v2 != nil {
		hy := &hierarchy{version: 2, mount: filepath.Join(h.FSRoot, v2.point), root: v2.root}
		avail, _ := readWords(filepath.Join(hy.mount, "cgroup.controllers"))
		for _, c := range ourControllers {
			if !taken[c] && slices.Contains(avail, c) {
				hy.serves = append(hy.serves, c)
			}
		}
		if !v1Used || len(hy.serves) > 0 {
			l.hier = append(l.hier, hy)
		}
	}
	switch {
	case v1Used && len(l.hier) > 0 && l.hier[len(l.hier)-1].version == 2:
		l.mode = ModeHybrid
	case v1Used:
		l.mode = ModeV1
	case v2 != nil:
		l.mode = ModeV2
	default:
		l.mode = ModeNone
	}
	if err := h.setBases(l); err != nil {
		return nil, err
	}
	return l, nil
}

// v1Complete reports whether every v1 hierarchy controller c needs is
// mounted (cpu limits need cpu, usage needs cpuacct).
func v1Complete(c string, mounts []mountEntry) bool {
	for _, name := range v1Names[c] {
		found := false
		for _, m := range mounts {
			found = found || (m.fstype == "cgroup" && slices.Contains(m.super, name))
		}
		if !found {
			return false
		}
	}
	return true
}

// duplicate reports whether hy's hierarchy is already in l (a hierarchy
// can be mounted twice); the first mount is the one used.
func duplicate(l *layout, hy *hierarchy) bool {
	for _, o := range l.hier {
		if o.version == 1 && slices.Equal(o.v1, hy.v1) {
			return true
		}
	}
	return false
}

// cgroupMounts returns the cgroup and cgroup2 lines of the mount table.
func (h Host) cgroupMounts() ([]mountEntry, error) {
	path := h.MountInfo
	if path == "" {
		path = "/proc/self/mountinfo"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cgroup: read mount table: %w", err)
	}
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+4 {
			continue
		}
		fstype := f[sep+1]
		if fstype != "cgroup" && fstype != "cgroup2" {
			continue
		}
		out = append(out, mountEntry{
			root: unescapeMount(f[3]), point: unescapeMount(f[4]), fstype: fstype,
			super: strings.Split(f[sep+3], ","),
		})
	}
	return out, nil
}

var octalEscape = regexp.MustCompile(`\\[0-7]{3}`)

// unescapeMount decodes the \040-style escapes of mountinfo paths.
func unescapeMount(s string) string {
	return octalEscape.ReplaceAllStringFunc(s, func(e string) string {
		var c byte
		fmt.Sscanf(e[1:], "%o", &c)
		return string([]byte{c})
	})
}

// setBases sets each hierarchy's base: its mount point, or with Nest the
// calling process's cgroup in it.
func (h Host) setBases(l *layout) error {
	for _, hy := range l.hier {
		hy.base = hy.mount
	}
	if !h.Nest || len(l.hier) == 0 {
		return nil
	}
	path := h.SelfCgroup
	if path == "" {
		path = "/proc/self/cgroup"
	}
	dirs, err := cgroupDirs(path, l.hier)
	if err != nil {
		return err
	}
	for hy, dir := range dirs {
		hy.base = dir
	}
	return nil
}

// cgroupDirs reads a process's or thread's cgroup list (/proc/.../cgroup)
// and returns its cgroup directory in each of hier that the list names.
func cgroupDirs(path string, hier []*hierarchy) (map[*hierarchy]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cgroup: read own cgroups: %w", err)
	}
	dirs := map[*hierarchy]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		names := strings.Split(parts[1], ",")
		for _, hy := range hier {
			if (hy.version == 2 && parts[0] == "0" && parts[1] == "") ||
				(hy.version == 1 && slices.Equal(ours(names), hy.v1)) {
				rel, ok := strings.CutPrefix(parts[2], hy.root)
				if !ok || strings.Contains(rel, "..") {
					return nil, fmt.Errorf("cgroup: own cgroup %s is outside the mounted part %s", parts[2], hy.root)
				}
				dirs[hy] = filepath.Join(hy.mount, rel)
			}
		}
	}
	return dirs, nil
}

// ours returns the v1 controller names in s that we use, sorted.
func ours(s []string) []string {
	var out []string
	for _, n := range s {
		for _, c := range ourControllers {
			if slices.Contains(v1Names[c], n) {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

// readWords returns the whitespace-separated words of a file.
func readWords(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

// MountMissing mounts, at /sys/fs/cgroup in this process's mount
// namespace, the hierarchies /proc/self/cgroup lists when the mount table
// shows none: `ip netns exec` gives its command a fresh /sys without them,
// although the process still sits in cgroups of every hierarchy. It
// reports whether it mounted anything. A host whose mount table already
// shows cgroups is left alone. It needs root.
func MountMissing() (bool, error) {
	mounts, err := Host{}.cgroupMounts()
	if err != nil || len(mounts) > 0 {
		return false, err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return false, err
	}
	type want struct{ dir, fstype, opts string }
	var wants []want
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			wants = append(wants, want{"unified", "cgroup2", ""})
		case parts[1] != "" && !strings.HasPrefix(parts[1], "name="):
			wants = append(wants, want{parts[1], "cgroup", parts[1]})
		}
	}
	if len(wants) == 0 {
		return false, nil
	}
	const root = "/sys/fs/cgroup"
	if len(wants) == 1 && wants[0].fstype == "cgroup2" {
		if err := unix.Mount("cgroup2", root, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return false, fmt.Errorf("cgroup: mount cgroup2 at %s: %w", root, err)
		}
		return true, nil
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=755"); err != nil {
		return false, fmt.Errorf("cgroup: mount tmpfs at %s: %w", root, err)
	}
	for _, w := range wants {
		dir := filepath.Join(root, w.dir)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return true, fmt.Errorf("cgroup: %w", err)
		}
		if err := unix.Mount("cgroup", dir, w.fstype, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, w.opts); err != nil {
			return true, fmt.Errorf("cgroup: mount %s at %s: %w", w.fstype, dir, err)
		}
	}
	return true, nil
}
