// Package mount sets up the guest's filesystems in its init: the early
// pseudo filesystems, the root disk, and the switch from the initramfs to
// the root disk.
package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mounter performs mounts under Root. With DryRun it records each
// operation in Ops instead of making system calls, so tests run the real
// sequence without root.
type Mounter struct {
	// Root is prefixed to every target path; empty means /.
	Root string
	// DryRun records operations instead of performing them.
	DryRun bool
	// Ops lists the operations performed (or, with DryRun, planned), one
	// line each, e.g. "mount proc /proc proc".
	Ops []string
}

// EarlyMount is one pseudo filesystem mounted before anything else.
type EarlyMount struct {
	// Source, Target and FSType are mount(2)'s source, target and type.
	Source, Target, FSType string
	// Flags are mount(2)'s MS_* flags.
	Flags uintptr
	// Data holds the filesystem's options.
	Data string
	// Mode is Target's mode if it has to be created.
	Mode os.FileMode
}

// Early are the filesystems the init mounts first.
var Early = []EarlyMount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
}

func (m *Mounter) path(p string) string {
	if m.Root == "" {
		return p
	}
	return filepath.Join(m.Root, p)
}

func (m *Mounter) record(format string, args ...any) {
	m.Ops = append(m.Ops, fmt.Sprintf(format, args...))
}

// Mount mounts source on target (under Root), creating target if needed.
// A target that already has this filesystem mounted (EBUSY) is not an error.
func (m *Mounter) Mount(source, target, fstype string, flags uintptr, data string, mode os.FileMode) error {
	m.record("mount %s %s %s %s", source, target, fstype, data)
	if m.DryRun {
		return nil
	}
	t := m.path(target)
	if err := os.MkdirAll(t, mode); err != nil {
		return fmt.Errorf("mount %s: %w", target, err)
	}
	if err := unix.Mount(source, t, fstype, flags, data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// MountEarly mounts /proc, /sys, /dev, /dev/pts, /dev/shm and /run.
func (m *Mounter) MountEarly() error {
	var errs []error
	for _, e := range Early {
		errs = append(errs, m.Mount(e.Source, e.Target, e.FSType, e.Flags, e.Data, e.Mode))
	}
	return errors.Join(errs...)
}

// WaitDevice waits up to timeout for a device node to appear (drivers probe
// asynchronously after their module loads).
func (m *Mounter) WaitDevice(dev string, timeout time.Duration) error {
	m.record("wait %s", dev)
	if m.DryRun {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(m.path(dev)); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not appear within %v", dev, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// MountRoot mounts the root disk on target read-write.
func (m *Mounter) MountRoot(dev, fstype, target string) error {
	return m.Mount(dev, target, fstype, 0, "", 0o755)
}

// SwitchRoot makes newRoot the root filesystem, like switch_root(8): it
// moves /proc, /sys, /dev and /run into newRoot, deletes the initramfs'
// files (when / is a ramfs or tmpfs) to free their memory, moves newRoot
// onto / and chroots into it.
func (m *Mounter) SwitchRoot(newRoot string) error {
	for _, e := range []string{"/dev", "/proc", "/sys", "/run"} {
		m.record("move %s %s", e, newRoot+e)
		if m.DryRun {
			continue
		}
		dst := m.path(filepath.Join(newRoot, e))
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		if err := unix.Mount(m.path(e), dst, "", unix.MS_MOVE, ""); err != nil {
			// Not fatal: the new root mounts what it lacks itself.
			unix.Unmount(m.path(e), unix.MNT_DETACH)
		}
	}
	m.record("chdir %s", newRoot)
	m.record("clean initramfs")
	m.record("move %s /", newRoot)
	m.record("chroot .")
	if m.DryRun {
		return nil
	}
	if err := unix.Chdir(m.path(newRoot)); err != nil {
		return fmt.Errorf("switch root: chdir: %w", err)
	}
	// Free the initramfs: only in the real init (PID 1) or under an
	// explicit Root, never on a host's own root filesystem.
	if (m.Root != "" || os.Getpid() == 1) && isRAMRoot(m.path("/")) {
		var st unix.Stat_t
		if err := unix.Stat(m.path("/"), &st); err == nil {
			removeTree(m.path("/"), st.Dev)
		}
	}
	if err := unix.Mount(".", m.path("/"), "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move %s to /: %w", newRoot, err)
	}
	if m.Root == "" {
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("switch root: chroot: %w", err)
		}
		if err := unix.Chdir("/"); err != nil {
			return fmt.Errorf("switch root: chdir /: %w", err)
		}
	}
	return nil
}

// isRAMRoot reports whether dir is on a ramfs or tmpfs (an initramfs).
func isRAMRoot(dir string) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return false
	}
	return fs.Type == unix.RAMFS_MAGIC || fs.Type == unix.TMPFS_MAGIC
}

// removeTree deletes dir's contents that live on device dev, never crossing
// into other mounts (the new root, /proc, ...).
func removeTree(dir string, dev uint64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Dev != dev {
			continue
		}
		if e.IsDir() {
			removeTree(p, dev)
			unix.Rmdir(p) // fails harmlessly for mount points
			continue
		}
		unix.Unlink(p)
	}
}

// UnmountAll remounts every filesystem listed in /proc/self/mounts read-only
// (deepest first) and unmounts what it can, for a clean power-off.
func (m *Mounter) UnmountAll() error {
	b, err := os.ReadFile(m.path("/proc/self/mounts"))
	if err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var errs []error
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) < 3 {
			continue
		}
		target := strings.ReplaceAll(f[1], `\040`, " ")
		switch f[2] {
		case "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "rootfs", "ramfs", "cgroup2", "securityfs", "debugfs", "configfs", "mqueue", "hugetlbfs":
			continue
		}
		m.record("unmount %s", target)
		if m.DryRun {
			continue
		}
		if err := unix.Unmount(m.path(target), 0); err != nil {
			if err := unix.Mount("", m.path(target), "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				errs = append(errs, fmt.Errorf("remount %s read-only: %w", target, err))
			}
		}
	}
	return errors.Join(errs...)
}
