package firecracker

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// DefaultChrootBase is the jailer's default chroot base directory.
const DefaultChrootBase = "/srv/jailer"

// JailerConfig starts firecracker through Firecracker's jailer, which
// chroots it into <ChrootBase>/<firecracker's file name>/<id>/root, joins
// cgroups and a network namespace, and drops to UID:GID.
//
// Files Firecracker opens must be inside the chroot. Before the jailer runs,
// Launch creates the chroot directory and places the kernel (/vmlinux), the
// initrd (/initrd) and the disks (/disk0, /disk1, ...) in it as hard links,
// falling back to a copy when a hard link is impossible (another file
// system, or fs.protected_hardlinks). When running as root it gives writable
// disks to UID:GID; a hard link shares its inode, so that changes the owner
// of the original disk file too. The kernel and initrd must be readable by
// UID:GID. Firecracker's sockets and log files are created in the chroot
// and the VM's runtime directory holds symbolic links to them, so the
// vmm.Instance paths stay <Dir>/fc.sock and <Dir>/agent.sock. The chroot is
// left behind when the VM ends; RemoveJail deletes it.
type JailerConfig struct {
	// Binary is the jailer executable; empty means "jailer" in PATH.
	Binary string
	// UID and GID are the ids the jailer switches to before it execs
	// firecracker.
	UID, GID int
	// ChrootBase is the directory under which jails are built; empty means
	// DefaultChrootBase.
	ChrootBase string
	// CgroupVersion is 1 or 2; 0 leaves the jailer's default (1).
	CgroupVersion int
	// ParentCgroup is the cgroup, relative to the hierarchy's root, under
	// which the VM's cgroup is made; empty leaves the jailer's default.
	ParentCgroup string
	// Cgroups are "<cgroup file>=<value>" settings, one --cgroup each.
	Cgroups []string
	// ResourceLimits are "<resource>=<value>" bounds, one --resource-limit
	// each (e.g. "no-file=1024").
	ResourceLimits []string
	// NetNS is a network namespace handle the jailer joins (--netns).
	NetNS string
}

func (j *JailerConfig) binary() (string, error) {
	name := j.Binary
	if name == "" {
		name = "jailer"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("jailer %q not found (searched Jailer.Binary, then PATH): %v: %w", name, err, vmm.ErrUnavailable)
	}
	return p, nil
}

func (j *JailerConfig) base() string {
	if j.ChrootBase == "" {
		return DefaultChrootBase
	}
	return j.ChrootBase
}

// jailDir is <ChrootBase>/<exec file name>/<id>, the directory the jailer
// makes for VM id; the chroot is its "root" subdirectory.
func (j *JailerConfig) jailDir(execFile, id string) string {
	return filepath.Join(j.base(), filepath.Base(execFile), fcID(id))
}

// args is the jailer's command line; fcArgs are passed on to firecracker
// after "--". The jailer itself gives firecracker --id.
func (j *JailerConfig) args(execFile, id string, fcArgs []string) []string {
	a := []string{
		"--id", fcID(id),
		"--exec-file", execFile,
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", j.base(),
	}
	if j.CgroupVersion != 0 {
		a = append(a, "--cgroup-version", strconv.Itoa(j.CgroupVersion))
	}
	if j.ParentCgroup != "" {
		a = append(a, "--parent-cgroup", j.ParentCgroup)
	}
	for _, c := range j.Cgroups {
		a = append(a, "--cgroup", c)
	}
	for _, r := range j.ResourceLimits {
		a = append(a, "--resource-limit", r)
	}
	if j.NetNS != "" {
		a = append(a, "--netns", j.NetNS)
	}
	a = append(a, "--")
	return append(a, fcArgs...)
}

// RemoveJail deletes the jail directory the jailer used for VM id, after
// the VM has ended. Without a jailer it does nothing.
func (b *Backend) RemoveJail(id string) error {
	if b.Jailer == nil {
		return nil
	}
	bin, err := b.binary()
	if err != nil {
		return err
	}
	if err := os.RemoveAll(b.Jailer.jailDir(bin, id)); err != nil {
		return fmt.Errorf("remove jail of %s: %w", id, err)
	}
	return nil
}

// prepareJail makes the chroot for spec and places its files there,
// returning the layout as the jailed firecracker sees it (paths relative to
// the chroot).
func (j *JailerConfig) prepareJail(execFile string, spec vmm.Spec) (layout, error) {
	if !strings.Contains(filepath.Base(execFile), "firecracker") {
		return layout{}, fmt.Errorf("jailer needs an exec file whose name contains \"firecracker\", got %s", execFile)
	}
	root := filepath.Join(j.jailDir(execFile, spec.ID), "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return layout{}, fmt.Errorf("make chroot: %w", err)
	}
	l := layout{
		sock:    "/" + apiSockName,
		agent:   "/" + agentName,
		log:     "/" + logName,
		metrics: "/" + metricsName,
		kernel:  "/vmlinux",
	}
	if err := place(spec.Kernel, filepath.Join(root, l.kernel)); err != nil {
		return layout{}, err
	}
	if spec.Initrd != "" {
		l.initrd = "/initrd"
		if err := place(spec.Initrd, filepath.Join(root, l.initrd)); err != nil {
			return layout{}, err
		}
	}
	for i, d := range spec.Disks {
		name := fmt.Sprintf("/disk%d", i)
		dst := filepath.Join(root, name)
		if err := place(d.Path, dst); err != nil {
			return layout{}, err
		}
		if !d.ReadOnly {
			if err := j.chown(dst); err != nil {
				return layout{}, err
			}
		}
		l.disks = append(l.disks, name)
	}
	for _, f := range []string{l.log, l.metrics} {
		p := filepath.Join(root, f)
		if err := touch(p); err != nil {
			return layout{}, err
		}
		if err := j.chown(p); err != nil {
			return layout{}, err
		}
	}
	// The runtime directory points at the jailed sockets and log.
	for name, target := range map[string]string{apiSockName: l.sock, agentName: l.agent, logName: l.log} {
		link := filepath.Join(spec.Dir, name)
		os.Remove(link)
		if err := os.Symlink(filepath.Join(root, target), link); err != nil {
			return layout{}, fmt.Errorf("link %s into the jail: %w", name, err)
		}
	}
	return l, nil
}

// chown gives p to the jail's UID:GID when this process may do so (root).
func (j *JailerConfig) chown(p string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if err := os.Lchown(p, j.UID, j.GID); err != nil {
		return fmt.Errorf("chown %s: %w", p, err)
	}
	return nil
}

// place puts src at dst as a hard link, or a copy when linking fails.
func place(src, dst string) error {
	os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("place %s in the jail: %w", src, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("place %s in the jail: %w", src, err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return fmt.Errorf("place %s in the jail: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s into the jail: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s into the jail: %w", src, err)
	}
	return nil
}

// touch creates p empty (Firecracker opens its log and metrics files but
// does not create them).
func touch(p string) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	return f.Close()
}
