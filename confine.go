package smolvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/cgroup"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Confinement of VMM processes and their resource limits (issue 13).

// VMMUser is the unprivileged system user VMM processes run as when smolvm
// runs as root. `smolvm setup` (run by `make setup` and CI) creates it.
// Without it a root smolvm runs QEMU as root (still under its seccomp
// sandbox and in the VM's cgroup) and `smolvm doctor` warns loudly.
const VMMUser = "smolvm"

// VMMMemoryOverheadMiB is what a VM's cgroup allows its VMM beyond the
// guest's RAM: QEMU's own memory under TCG (the 64 MiB translation
// cache, its code and heap, device buffers, page cache of the disk). It
// was measured: QEMU's RSS minus the guest RAM it had touched, with a
// guest whose memory was all in use (see TestConfinedVM and the README).
const VMMMemoryOverheadMiB = 192

// VMMPidsLimit caps the processes and threads of a VM's cgroup: QEMU's
// vCPU, I/O worker and helper threads fit with room to spare, and its
// sandbox forbids new processes anyway.
const VMMPidsLimit = 256

// Bounds of the disk throttles, so a VM can still boot.
const (
	MinDiskBPS  = 1 << 20
	MinDiskIOPS = 10
)

// Limits are the resource limits of a VM, as info shows them under
// "limits". They are computed from its configuration and enforced by its
// cgroup (memory, pids, CPU) and its VMM (disk I/O).
type Limits struct {
	// MemoryBytes caps the VMM's memory: guest RAM plus VMMMemoryOverheadMiB.
	MemoryBytes int64 `json:"memory_bytes"`
	// Pids caps the VMM's processes and threads.
	Pids int64 `json:"pids"`
	// CPUQuota caps CPU time in CPUs (2 is two CPUs' worth).
	CPUQuota float64 `json:"cpu_quota"`
	// IO throttles the VM's disks.
	IO IOLimits `json:"io"`
	// Cgroup is the VM's cgroup as /proc/PID/cgroup shows it (e.g.
	// "/smolvm/web") while it exists; empty when none does (the VM does
	// not run, or the host offers no cgroups to this process).
	Cgroup string `json:"cgroup,omitempty"`
}

// IOLimits throttle a VM's disks; 0 means no limit.
type IOLimits struct {
	// BPS is bytes per second, reads and writes together.
	BPS int64 `json:"bps"`
	// IOPS is operations per second, reads and writes together.
	IOPS int64 `json:"iops"`
}

// limitsOf computes the limits of a VM configured with c (defaults applied).
func limitsOf(c VMConfig) Limits {
	q := c.CPUQuota
	if q == 0 {
		q = float64(c.VCPUCount)
	}
	return Limits{
		MemoryBytes: int64(c.MemSizeMiB+VMMMemoryOverheadMiB) << 20,
		Pids:        VMMPidsLimit,
		CPUQuota:    q,
		IO:          IOLimits{BPS: c.DiskBPS, IOPS: c.DiskIOPS},
	}
}

// validateLimits checks the resource fields of c (defaults applied).
func validateLimits(c VMConfig) error {
	if math.IsNaN(c.CPUQuota) || c.CPUQuota < 0 || (c.CPUQuota > 0 && c.CPUQuota < cgroup.MinCPUs) || c.CPUQuota > float64(c.VCPUCount) {
		return configErr("cpu_quota", strconv.FormatFloat(c.CPUQuota, 'g', -1, 64),
			fmt.Sprintf("must be 0 (as many CPUs as vCPUs) or between %v and vcpu_count (%d)", cgroup.MinCPUs, c.VCPUCount))
	}
	if c.DiskBPS < 0 || (c.DiskBPS > 0 && c.DiskBPS < MinDiskBPS) {
		return configErr("disk_bps", fmt.Sprint(c.DiskBPS), fmt.Sprintf("must be 0 (no limit) or at least %d (1 MiB/s)", MinDiskBPS))
	}
	if c.DiskIOPS < 0 || (c.DiskIOPS > 0 && c.DiskIOPS < MinDiskIOPS) {
		return configErr("disk_iops", fmt.Sprint(c.DiskIOPS), fmt.Sprintf("must be 0 (no limit) or at least %d", MinDiskIOPS))
	}
	return nil
}

// checkDiskSpace refuses a disk of sizeMiB in dir when its file system has
// less free space than that (the guest could fill it all).
func checkDiskSpace(dir string, sizeMiB int) error {
	if sizeMiB <= 0 {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", dir, err)
	}
	free := int64(st.Bavail) * st.Bsize
	if int64(sizeMiB)<<20 > free {
		return configErr("disk_size_mib", fmt.Sprint(sizeMiB),
			fmt.Sprintf("larger than the free space where VM disks live (%s: %d MiB free)", dir, free>>20))
	}
	return nil
}

// vmmIdentity returns the identity VMM processes run as: nil when smolvm
// does not run as root (the VMM is then as unprivileged as its caller), the
// VMMUser (with the kvm group, for /dev/kvm) when it exists, else nil and
// why not.
func vmmIdentity() (*vmm.Identity, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(VMMUser)
	if err != nil {
		return nil, fmt.Errorf("no user %q (run `smolvm setup` as root to create it): %w", VMMUser, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		return nil, fmt.Errorf("user %q has uid %s gid %s: want a non-root numeric id", VMMUser, u.Uid, u.Gid)
	}
	id := &vmm.Identity{UID: uint32(uid), GID: uint32(gid)}
	if g, err := user.LookupGroup("kvm"); err == nil {
		if n, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			id.Groups = append(id.Groups, uint32(n))
		}
	}
	return id, nil
}

// cgroupHost returns the host's cgroups. When this process's mount table
// shows none although it sits in cgroups (`ip netns exec` mounts a fresh
// /sys without them), it first mounts them in its own mount namespace.
func cgroupHost() cgroup.Host {
	if os.Geteuid() == 0 {
		mountOnce.Do(func() { cgroup.MountMissing() })
	}
	return cgroup.Host{}
}

var mountOnce sync.Once

// useCgroups reports whether this process manages per-VM cgroups: as
// root, on a host with a cgroup hierarchy.
func useCgroups() bool {
	if os.Geteuid() != 0 {
		return false
	}
	m, err := cgroupHost().Detect()
	return err == nil && m != cgroup.ModeNone
}

// makeCgroup creates the VM's cgroup with its limits (those whose
// controller the host has). A leftover group of the same name without
// processes is replaced; one with processes is an error.
func (s *startOp) makeCgroup() error {
	if !useCgroups() {
		return nil
	}
	cs, err := cgroupHost().Controllers()
	if err != nil {
		return err
	}
	l := limitsOf(s.rec.Config)
	var cl cgroup.Limits
	if slices.Contains(cs, cgroup.Memory) {
		cl.MemoryBytes = l.MemoryBytes
	}
	if slices.Contains(cs, cgroup.Pids) {
		cl.Pids = l.Pids
	}
	if slices.Contains(cs, cgroup.CPU) {
		cl.CPUs = l.CPUQuota
	}
	name := s.h().cgroupName(s.vm.id)
	g, err := cgroupHost().Create(name, cl)
	if errors.Is(err, cgroup.ErrExists) {
		if rerr := cgroupHost().RemoveEmpty(name); rerr != nil {
			return fmt.Errorf("cgroup %s/%s exists and is in use (a VMM of this VM left running?): %w", cgroup.Dir, name, rerr)
		}
		g, err = cgroupHost().Create(name, cl)
	}
	if err != nil {
		return err
	}
	s.cg = g
	// Block I/O of the disk's device where the controller exists: best
	// effort (the VMM's own throttle is the limit that always applies).
	if slices.Contains(cs, cgroup.IO) && (l.IO.BPS > 0 || l.IO.IOPS > 0) {
		if maj, min, ok := blockDevice(s.rec.Boot.Disk); ok {
			cl.Devices = []cgroup.DeviceLimit{{Major: maj, Minor: min,
				ReadBPS: uint64(l.IO.BPS), WriteBPS: uint64(l.IO.BPS), ReadIOPS: uint64(l.IO.IOPS), WriteIOPS: uint64(l.IO.IOPS)}}
			if err := g.SetLimits(cl); err != nil {
				cl.Devices = nil
				g.SetLimits(cl)
			}
		}
	}
	return nil
}

// blockDevice returns the whole disk holding the file at path, when it is
// on a block device.
func blockDevice(path string) (major, minor uint32, ok bool) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0, 0, false
	}
	major, minor = unix.Major(st.Dev), unix.Minor(st.Dev)
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	if _, err := os.Stat(sys); err != nil {
		return 0, 0, false
	}
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		b, err := os.ReadFile(filepath.Join(sys, "..", "dev"))
		if err != nil {
			return 0, 0, false
		}
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); err != nil {
			return 0, 0, false
		}
	}
	return major, minor, true
}

// confine fills the confinement fields of a launch spec: the identity the
// VMM runs as, the cgroup it starts in, the disk throttles, and the wait
// for the work earlier steps left running until the guest runs
// (beforeGuest).
func (s *startOp) confine(spec *vmm.Spec) {
	spec.RunAs, _ = vmmIdentity()
	if g := s.cg; g != nil {
		spec.Start = func(cmd *exec.Cmd) error {
			if err := g.Start(cmd); err != nil {
				return fmt.Errorf("start %s in the VM's cgroup: %w", filepath.Base(cmd.Path), err)
			}
			return nil
		}
	}
	spec.BeforeRun = s.awaitPending
	spec.DiskBPS, spec.DiskIOPS = s.rec.Config.DiskBPS, s.rec.Config.DiskIOPS
}

// cgroupName is the name of a VM's cgroup below cgroup.Dir: the VM's id
// and a tag of its data directory (cgroups are host-wide, VM ids only
// unique within a data directory, so two data directories may each have
// a VM "web": they get web.<tag1> and web.<tag2>). A '.' never occurs in
// a VM id.
func (h *Host) cgroupName(id string) string { return id + "." + h.cgroupTag() }

// cgroupTag is the data directory's tag in its VMs' cgroup names: 8 hex
// characters of a digest of its absolute path.
func (h *Host) cgroupTag() string {
	sum := sha256.Sum256([]byte(h.dir))
	return hex.EncodeToString(sum[:4])
}

// removeCgroup removes a VM's cgroup once its VMM is gone. It kills
// nothing: a group that still holds processes (a VMM still exiting) is
// left, and cleanup takes it once it is empty.
func (h *Host) removeCgroup(ctx context.Context, id string) error {
	if !useCgroups() {
		return nil
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := cgroupHost().RemoveEmpty(h.cgroupName(id))
		if !errors.Is(err, cgroup.ErrNotEmpty) {
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// limitsInfo returns the limits of a VM for its info, with its cgroup's
// path while it exists.
func (h *Host) limitsInfo(id string, c VMConfig, running bool) Limits {
	l := limitsOf(c)
	if running && useCgroups() {
		if g, err := cgroupHost().Open(h.cgroupName(id)); err == nil {
			l.Cgroup = g.RelPath()
		}
	}
	return l
}

// orphanCgroupAge is how old an empty group must be for cleanup to take
// it (tests shorten it).
var orphanCgroupAge = time.Minute

// cgroups removes cgroups of ours that no running VM of this data
// directory owns, and that are empty and older than a minute: cgroups are
// host-wide, and another data directory's VM may be starting in one.
func (c *cleaner) cgroups(ctx context.Context) error {
	if !useCgroups() {
		return nil
	}
	h := c.h
	names, err := cgroupHost().List()
	if err != nil {
		return err
	}
	tag := "." + h.cgroupTag()
	for _, name := range names {
		// This data directory's groups are <id>.<tag>; a plain <id> is
		// from a version that did not tag them, and may be any data
		// directory's: taken only once empty. Other tags are other data
		// directories'.
		id, ours := strings.CutSuffix(name, tag)
		if ValidateVMID(id) != nil {
			continue
		}
		if ours {
			if row, err := h.st.GetVM(ctx, id); err == nil && vmm.Alive(row.PID, row.PIDStart) {
				continue
			}
		}
		if h.lockBusy(id) {
			continue
		}
		if age, err := cgroupHost().Age(name); err != nil || age < orphanCgroupAge {
			continue
		}
		g, err := cgroupHost().Open(name)
		if err == nil {
			if pids, err := g.Procs(); err != nil || len(pids) > 0 {
				continue // a VMM still exiting, or an untagged group in use
			}
		}
		c.note(fmt.Sprintf("cgroup %s/%s", cgroup.Dir, name))
		if !c.co.DryRun {
			if err := cgroupHost().RemoveEmpty(name); err != nil && !errors.Is(err, cgroup.ErrNotEmpty) {
				c.errs = append(c.errs, err)
			}
		}
	}
	return nil
}

// confinementChecks are doctor's findings about VMM confinement: the
// unprivileged user, seccomp, and cgroups.
func confinementChecks() []Check {
	var out []Check
	switch id, err := vmmIdentity(); {
	case os.Geteuid() != 0:
		out = append(out, Check{"vmm user", CheckOK, "smolvm runs unprivileged: VMMs run as the calling user", ""})
	case err != nil:
		out = append(out, Check{"vmm user", CheckWarn,
			"CONFINEMENT DEGRADED: " + err.Error() + "; QEMU runs as root (still under its seccomp sandbox and in the VM's cgroup)",
			"smolvm setup"})
	default:
		out = append(out, Check{"vmm user", CheckOK, fmt.Sprintf("QEMU runs as user %s (uid %d, gid %d) with no capabilities", VMMUser, id.UID, id.GID), ""})
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil && strings.Contains(string(b), "\nSeccomp:") {
		out = append(out, Check{"seccomp", CheckOK, "the kernel has seccomp: QEMU runs with -sandbox " + "on (obsolete, elevateprivileges, spawn, resourcecontrol denied)", ""})
	} else {
		out = append(out, Check{"seccomp", CheckFail, "the kernel has no seccomp: QEMU's -sandbox cannot start", "use a kernel built with CONFIG_SECCOMP_FILTER"})
	}
	mode, err := cgroupHost().Detect()
	cs, _ := cgroupHost().Controllers()
	switch {
	case err != nil:
		out = append(out, Check{"cgroups", CheckWarn, err.Error(), "mount cgroup2 at /sys/fs/cgroup"})
	case mode == cgroup.ModeNone:
		out = append(out, Check{"cgroups", CheckWarn, "no cgroup hierarchy: VMs run without memory, pids and CPU limits", "mount cgroup2 at /sys/fs/cgroup"})
	case os.Geteuid() != 0:
		out = append(out, Check{"cgroups", CheckWarn, fmt.Sprintf("cgroup %s, controllers %v, but per-VM cgroups need root", mode, cs), "run smolvm as root for per-VM limits"})
	default:
		st := CheckOK
		fix := ""
		for _, c := range []string{cgroup.Memory, cgroup.Pids, cgroup.CPU} {
			if !slices.Contains(cs, c) {
				st, fix = CheckWarn, "enable the "+c+" controller"
			}
		}
		out = append(out, Check{"cgroups", st, fmt.Sprintf("cgroup %s, controllers %v: each VM gets %s/<vm-id>.<data dir tag>", mode, cs, cgroup.Dir), fix})
	}
	return out
}

// EnsureVMMUser creates VMMUser as a system user with its own group, no
// home and no login shell, unless it exists; it reports whether it made
// it. It needs root and the useradd program (Debian's passwd package).
func EnsureVMMUser(ctx context.Context) (created bool, err error) {
	if _, err := user.Lookup(VMMUser); err == nil {
		return false, nil
	}
	if os.Geteuid() != 0 {
		return false, fmt.Errorf("creating user %q needs root: %w", VMMUser, ErrUnavailable)
	}
	out, err := exec.CommandContext(ctx, "useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", "SmolVM VMM processes", VMMUser).CombinedOutput()
	if err != nil {
		if _, lerr := user.Lookup(VMMUser); lerr == nil {
			return false, nil // made meanwhile by another setup
		}
		return false, fmt.Errorf("useradd %s: %v: %s", VMMUser, err, strings.TrimSpace(string(out)))
	}
	return true, nil
}
