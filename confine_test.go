package smolvm

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/cgroup"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

func TestLimitsOf(t *testing.T) {
	c := VMConfig{VCPUCount: 2, MemSizeMiB: 512}.WithDefaults()
	got := limitsOf(c)
	want := Limits{MemoryBytes: (512 + VMMMemoryOverheadMiB) << 20, Pids: VMMPidsLimit, CPUQuota: 2}
	if got != want {
		t.Errorf("limitsOf(%+v) = %+v, want %+v", c, got, want)
	}
	c.CPUQuota, c.DiskBPS, c.DiskIOPS = 0.5, 8<<20, 300
	got = limitsOf(c)
	if got.CPUQuota != 0.5 || got.IO != (IOLimits{BPS: 8 << 20, IOPS: 300}) {
		t.Errorf("with quota and throttles: %+v", got)
	}
}

func TestValidateLimits(t *testing.T) {
	for _, tc := range []struct {
		mod   func(*VMConfig)
		field string
	}{
		{func(c *VMConfig) { c.CPUQuota = 3 }, "cpu_quota"}, // more than its 2 vCPUs
		{func(c *VMConfig) { c.CPUQuota = -1 }, "cpu_quota"},
		{func(c *VMConfig) { c.CPUQuota = 0.001 }, "cpu_quota"},
		{func(c *VMConfig) { c.CPUQuota = math.NaN() }, "cpu_quota"},
		{func(c *VMConfig) { c.DiskBPS = 100 }, "disk_bps"},
		{func(c *VMConfig) { c.DiskBPS = -1 }, "disk_bps"},
		{func(c *VMConfig) { c.DiskIOPS = 5 }, "disk_iops"},
		{func(c *VMConfig) { c.VCPUCount = 1; c.CPUQuota = 1.5 }, "cpu_quota"},
	} {
		c := VMConfig{VCPUCount: 2}
		tc.mod(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: err = %v, want a %s error", c, err, tc.field)
		}
	}
	for _, c := range []VMConfig{{CPUQuota: 0.5}, {CPUQuota: 2}, {VCPUCount: 4, CPUQuota: 3.5}, {DiskBPS: 1 << 20, DiskIOPS: 10}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// TestDiskSizeOverFreeSpace: a disk larger than the free space is refused
// with an error naming disk_size_mib, and nothing is left.
func TestDiskSizeOverFreeSpace(t *testing.T) {
	ctx := context.Background()
	h, dir := fakeEnv(t, false)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if int64(st.Bavail)*st.Bsize >= int64(MaxDiskSizeMiB)<<20 {
		t.Skip("more free space than the largest disk allowed")
	}
	cfg := fakeVM(t, "big")
	cfg.DiskMode, cfg.DiskSizeMiB = DiskIsolated, MaxDiskSizeMiB
	_, err := h.Create(ctx, cfg)
	var ce *ConfigError
	if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != "disk_size_mib" || !strings.Contains(err.Error(), "free space") {
		t.Fatalf("err = %v", err)
	}
	assertFakeNothingLeft(t, h, dir)
}

// TestCgroupLifecycle (fake VMM, as root): a started VM's process sits in
// smolvm/<id> with its limits, info shows them, and stop removes the group.
func TestCgroupLifecycle(t *testing.T) {
	if !useCgroups() {
		t.Skip("needs root and a cgroup hierarchy")
	}
	ctx := context.Background()
	h, dir := fakeEnv(t, false)
	cfg := fakeVM(t, fmt.Sprintf("cg-%d", os.Getpid()))
	cfg.CPUQuota = 0.5
	vm, err := h.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	inf := vm.Info()
	want := limitsOf(inf.Config)
	// The group's name carries the data directory's tag: another data
	// directory's VM of the same id gets its own.
	name := h.cgroupName(cfg.VMID)
	if !strings.HasPrefix(name, cfg.VMID+".") || len(name) != len(cfg.VMID)+9 {
		t.Errorf("cgroup name %q, want %s.<8 hex>", name, cfg.VMID)
	}
	want.Cgroup = "/" + cgroup.Dir + "/" + name
	if inf.Limits != want {
		t.Errorf("info limits = %+v, want %+v", inf.Limits, want)
	}
	checkInCgroup(t, inf.PID, name, want)
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cgroupHost().Open(name); !errors.Is(err, cgroup.ErrNotFound) {
		t.Errorf("cgroup after stop: %v", err)
	}
	if vm.Info().Limits.Cgroup != "" {
		t.Errorf("a stopped VM shows cgroup %q", vm.Info().Limits.Cgroup)
	}
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	assertFakeNothingLeft(t, h, dir)
}

// TestCleanupOrphanCgroups (as root): cleanup removes an empty group of
// this data directory that no VM owns and an empty untagged one (from an
// older version), and leaves one that holds a process and another data
// directory's.
func TestCleanupOrphanCgroups(t *testing.T) {
	if !useCgroups() {
		t.Skip("needs root and a cgroup hierarchy")
	}
	old := orphanCgroupAge
	orphanCgroupAge = 0
	t.Cleanup(func() { orphanCgroupAge = old })
	ctx := context.Background()
	h, _ := fakeEnv(t, false)
	empty, busy := h.cgroupName(fmt.Sprintf("orph-%d", os.Getpid())), h.cgroupName(fmt.Sprintf("busy-%d", os.Getpid()))
	legacy, other := fmt.Sprintf("old-%d", os.Getpid()), fmt.Sprintf("othr-%d.0badc0de", os.Getpid())
	for _, n := range []string{empty, legacy, other} {
		if _, err := cgroupHost().Create(n, cgroup.Limits{}); err != nil {
			t.Fatal(err)
		}
		defer cgroupHost().RemoveEmpty(n)
	}
	g, err := cgroupHost().Create(busy, cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Destroy(context.Background())
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	rep, err := h.Cleanup(ctx, CleanupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Removed, "cgroup smolvm/"+empty) || !slices.Contains(rep.Removed, "cgroup smolvm/"+legacy) ||
		slices.Contains(rep.Removed, "cgroup smolvm/"+busy) || slices.Contains(rep.Removed, "cgroup smolvm/"+other) {
		t.Errorf("removed %v; want %s and %s, not %s or %s", rep.Removed, empty, legacy, busy, other)
	}
	for _, n := range []string{empty, legacy} {
		if _, err := cgroupHost().Open(n); !errors.Is(err, cgroup.ErrNotFound) {
			t.Errorf("orphan group %s left: %v", n, err)
		}
	}
	if _, err := cgroupHost().Open(other); err != nil {
		t.Errorf("another data directory's group removed: %v", err)
	}
	if _, err := cgroupHost().Open(busy); err != nil {
		t.Errorf("busy group removed: %v", err)
	}
}

// checkInCgroup asserts that pid sits in smolvm/<name> in every hierarchy
// that serves a controller we limit, and the group's limits are l's.
func checkInCgroup(t *testing.T, pid int, name string, l Limits) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	rel := "/" + cgroup.Dir + "/" + name
	cs, _ := cgroupHost().Controllers()
	for _, c := range cs {
		v1 := map[string]string{cgroup.Memory: "memory", cgroup.Pids: "pids", cgroup.CPU: "cpu", cgroup.IO: "blkio"}[c]
		found := false
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) == 3 && strings.HasSuffix(parts[2], rel) &&
				(parts[1] == "" || strings.Contains(","+parts[1]+",", ","+v1+",")) {
				found = true
			}
		}
		if !found {
			t.Errorf("process %d is not in %s for %s:\n%s", pid, rel, c, b)
		}
	}
	g, err := cgroupHost().Open(name)
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.Limits()
	if err != nil {
		t.Fatal(err)
	}
	want := cgroup.Limits{MemoryBytes: l.MemoryBytes, Pids: l.Pids, CPUs: l.CPUQuota}
	if got.MemoryBytes != want.MemoryBytes || got.Pids != want.Pids || math.Abs(got.CPUs-want.CPUs) > 1e-9 {
		t.Errorf("cgroup limits = %+v, want %+v", got, want)
	}
}

// procStatus returns the named fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestConfinedVM boots two real VMs (TCG, private netns). The QEMU of a
// running VM is not root, has seccomp on and no capabilities, and sits in
// the VM's cgroup with its limits. A memory hog and then a fork bomb in
// the first VM leave its QEMU within its cgroup's limits (and alive), and
// the second VM keeps answering. The memory test also measures QEMU's
// overhead over the guest's RAM (logged), which VMMMemoryOverheadMiB
// covers.
func TestConfinedVM(t *testing.T) {
	h, _ := vmEnv(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := user.Lookup(VMMUser); err != nil {
		t.Skipf("no user %s: run `smolvm setup` (make user)", VMMUser)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cfgA := minimalVM("conf-a")
	a, err := h.New(ctx, cfgA)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Delete(context.Background())
	cfgB := minimalVM("conf-b")
	cfgB.NoNetwork = true
	b, err := h.New(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Delete(context.Background())

	pid := a.Info().PID
	st := procStatus(t, pid)
	if f := strings.Fields(st["Uid"]); len(f) != 4 || slicesContain(f, "0") {
		t.Errorf("QEMU Uid: %q, want no root id", st["Uid"])
	}
	if f := strings.Fields(st["Gid"]); len(f) != 4 || slicesContain(f, "0") {
		t.Errorf("QEMU Gid: %q, want no root id", st["Gid"])
	}
	if st["Seccomp"] != "2" {
		t.Errorf("QEMU Seccomp: %q, want 2", st["Seccomp"])
	}
	if st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" {
		t.Errorf("QEMU capabilities: eff %s prm %s", st["CapEff"], st["CapPrm"])
	}
	lim := a.Info().Limits
	if want := "/" + cgroup.Dir + "/" + h.cgroupName("conf-a"); lim.Cgroup != want {
		t.Errorf("info limits cgroup %q, want %q", lim.Cgroup, want)
	}
	checkInCgroup(t, pid, h.cgroupName("conf-a"), lim)
	g, err := cgroupHost().Open(h.cgroupName("conf-a"))
	if err != nil {
		t.Fatal(err)
	}

	answers := func(what string) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		res, err := b.Run(rctx, "echo alive")
		if err != nil || res.Output() != "alive" {
			t.Errorf("after %s the other VM does not answer: %q %v", what, res.Output(), err)
		}
		if !vmm.Alive(pid, 0) {
			t.Fatalf("after %s the hostile VM's QEMU is gone (killed by its cgroup's limit?)", what)
		}
	}

	// Memory hog: fill a tmpfs as large as the guest's RAM, so every page
	// the guest has is in use, then read QEMU's memory.
	// 90% of it: the rest of the guest's memory holds its kernel and
	// caches, and the guest does not need to OOM-kill anything.
	hctx, hcancel := context.WithTimeout(ctx, 60*time.Second)
	res, err := a.Run(hctx, "mkdir -p /mnt/hog && mount -t tmpfs -o size=90% tmpfs /mnt/hog && "+
		"dd if=/dev/zero of=/mnt/hog/fill bs=1M count=512 2>&1 | tail -1; grep -E 'MemTotal|MemFree' /proc/meminfo")
	hcancel()
	t.Logf("memory hog: %q, %v", res.Stdout, err)
	rss := procStatus(t, pid)["VmRSS"]
	stats, _ := g.Stats()
	t.Logf("QEMU VmRSS %s with %d MiB of guest RAM in use; cgroup memory %d MiB, peak %d MiB (limit %d MiB); overhead allowed %d MiB",
		rss, cfgA.MemSizeMiB, stats.MemoryBytes>>20, stats.MemoryPeakBytes>>20, lim.MemoryBytes>>20, VMMMemoryOverheadMiB)
	if stats.MemoryBytes > lim.MemoryBytes {
		t.Errorf("cgroup memory %d above its limit %d", stats.MemoryBytes, lim.MemoryBytes)
	}
	// vm.Usage reads the same group: the hog's pages are charged to it.
	if u, err := a.Usage(ctx); err != nil || u.Cgroup != lim.Cgroup || u.MemoryLimitBytes != lim.MemoryBytes ||
		u.MemoryBytes < int64(cfgA.MemSizeMiB/2)<<20 || u.CPU <= 0 || u.Tasks <= 0 {
		t.Errorf("Usage after the memory hog = %+v, %v; want cgroup %s, limit %d, memory over half the guest's RAM, CPU and tasks", u, err, lim.Cgroup, lim.MemoryBytes)
	}
	answers("a memory hog")

	// Fork bomb: the guest's processes are not the host's; QEMU's thread
	// count stays under the pids limit and the host is unaffected.
	fctx, fcancel := context.WithTimeout(ctx, 45*time.Second)
	a.Run(fctx, "timeout 20 sh -c 'b(){ b | b & }; b' >/dev/null 2>&1; echo done")
	fcancel()
	stats, _ = g.Stats()
	t.Logf("after the fork bomb: cgroup pids %d (limit %d), memory %d", stats.Pids, lim.Pids, stats.MemoryBytes)
	if stats.Pids > lim.Pids {
		t.Errorf("cgroup pids %d above its limit %d", stats.Pids, lim.Pids)
	}
	answers("a fork bomb")

	if err := a.ForceDelete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Usage(ctx); !errors.Is(err, ErrState) {
		t.Errorf("Usage of a deleted VM: %v, want ErrState", err)
	}
	if _, err := cgroupHost().Open(h.cgroupName("conf-a")); !errors.Is(err, cgroup.ErrNotFound) {
		t.Errorf("cgroup after delete: %v", err)
	}
	if err := b.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
