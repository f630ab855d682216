package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Mount tables of the host arrangements Detect must tell apart.
const (
	mountsV2 = `24 1 259:1 / / rw,relatime - ext4 /dev/vda rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	// mountsV1 is this development machine's table: one hierarchy per
	// controller (cpu and cpuacct apart) and a unified mount whose only
	// controller is hugetlb.
	mountsV1 = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	selfV1 = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n"
	// mountsHybrid has memory and cpu,cpuacct on v1 (co-mounted, and the
	// memory hierarchy mounted twice) and pids and io on v2.
	mountsHybrid = `31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 31 0:32 / /mnt/memory\040copy rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
`
	mountsNone = "24 1 259:1 / / rw,relatime - ext4 /dev/vda rw\n25 24 0:5 / /proc rw - proc proc rw\n"
)

// fakeHost writes a mount table and the cgroup.controllers files of its v2
// mounts into a temporary directory and returns a Host reading them.
func fakeHost(t *testing.T, mounts string, v2controllers map[string]string) Host {
	t.Helper()
	root := t.TempDir()
	mi := filepath.Join(root, "mountinfo")
	if err := os.WriteFile(mi, []byte(mounts), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			if err := os.MkdirAll(filepath.Join(root, unescapeMount(f[4])), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	for dir, cs := range v2controllers {
		if err := os.WriteFile(filepath.Join(root, dir, "cgroup.controllers"), []byte(cs+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	self := filepath.Join(root, "self-cgroup")
	os.WriteFile(self, []byte(selfV1), 0o644)
	return Host{MountInfo: mi, FSRoot: root, SelfCgroup: self}
}

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name        string
		mounts      string
		v2          map[string]string
		mode        Mode
		controllers []string
		hier        []string // version:mount of each hierarchy used
	}{
		{"v2 unified", mountsV2, map[string]string{"/sys/fs/cgroup": "cpuset cpu io memory hugetlb pids rdma misc"},
			ModeV2, []string{"memory", "pids", "cpu", "io"}, []string{"2:/sys/fs/cgroup"}},
		{"v2 without io", mountsV2, map[string]string{"/sys/fs/cgroup": "cpu memory pids"},
			ModeV2, []string{"memory", "pids", "cpu"}, []string{"2:/sys/fs/cgroup"}},
		{"v1 plus empty unified (this machine)", mountsV1, map[string]string{"/sys/fs/cgroup/unified": "hugetlb"},
			ModeV1, []string{"memory", "pids", "cpu", "io"},
			[]string{"1:/sys/fs/cgroup/cpu", "1:/sys/fs/cgroup/cpuacct", "1:/sys/fs/cgroup/memory", "1:/sys/fs/cgroup/blkio", "1:/sys/fs/cgroup/pids"}},
		{"hybrid", mountsHybrid, map[string]string{"/sys/fs/cgroup/unified": "io pids"},
			ModeHybrid, []string{"memory", "pids", "cpu", "io"},
			[]string{"1:/sys/fs/cgroup/cpu,cpuacct", "1:/sys/fs/cgroup/memory", "2:/sys/fs/cgroup/unified"}},
		{"none", mountsNone, nil, ModeNone, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := fakeHost(t, tc.mounts, tc.v2)
			mode, err := h.Detect()
			if err != nil {
				t.Fatal(err)
			}
			if mode != tc.mode {
				t.Errorf("mode %s, want %s", mode, tc.mode)
			}
			cs, err := h.Controllers()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cs, tc.controllers) {
				t.Errorf("controllers %v, want %v", cs, tc.controllers)
			}
			l, _ := h.layout()
			var got []string
			for _, hy := range l.hier {
				got = append(got, string(rune('0'+hy.version))+":"+strings.TrimPrefix(hy.mount, h.FSRoot))
			}
			if !slices.Equal(got, tc.hier) {
				t.Errorf("hierarchies %v, want %v", got, tc.hier)
			}
		})
	}
}

func TestDetectMissingMountTable(t *testing.T) {
	_, err := Host{MountInfo: filepath.Join(t.TempDir(), "nope")}.Detect()
	if err == nil || !strings.Contains(err.Error(), "mount table") {
		t.Fatalf("err = %v", err)
	}
}

// readFake reads a control file of a fake tree, trimmed.
func readFake(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestCreateV2Writes(t *testing.T) {
	h := fakeHost(t, mountsV2, map[string]string{"/sys/fs/cgroup": "cpuset cpu io memory pids"})
	lim := Limits{MemoryBytes: 512 << 20, Pids: 100, CPUs: 1.5, IOWeight: 200,
		Devices: []DeviceLimit{{Major: 8, Minor: 0, ReadBPS: 1 << 20, WriteIOPS: 50}}}
	g, err := h.Create("vm-1", lim)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(h.FSRoot, "sys/fs/cgroup")
	dir := filepath.Join(root, "smolvm/vm-1")
	if !slices.Equal(g.Paths(), []string{dir}) {
		t.Fatalf("paths %v, want [%s]", g.Paths(), dir)
	}
	for file, want := range map[string]string{
		filepath.Join(root, "cgroup.subtree_control"):        "+memory +pids +cpu +io",
		filepath.Join(root, "smolvm/cgroup.subtree_control"): "+memory +pids +cpu +io",
		filepath.Join(dir, "memory.max"):                     "536870912",
		filepath.Join(dir, "pids.max"):                       "100",
		filepath.Join(dir, "cpu.max"):                        "150000 100000",
		filepath.Join(dir, "io.weight"):                      "default 200",
		filepath.Join(dir, "io.max"):                         "8:0 rbps=1048576 wbps=max riops=max wiops=50",
	} {
		if got := readFake(t, file); got != want {
			t.Errorf("%s = %q, want %q", strings.TrimPrefix(file, root), got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); !errors.Is(err, os.ErrNotExist) {
		t.Error("memory.swap.max written though the host has no such file")
	}
	back, err := g.Limits()
	if err != nil {
		t.Fatal(err)
	}
	if back.MemoryBytes != lim.MemoryBytes || back.Pids != lim.Pids || back.CPUs != lim.CPUs {
		t.Errorf("Limits() = %+v, want memory/pids/cpus of %+v", back, lim)
	}
	// Lifting limits writes "max".
	if err := g.SetLimits(Limits{}); err != nil {
		t.Fatal(err)
	}
	if readFake(t, filepath.Join(dir, "memory.max")) != "max" || readFake(t, filepath.Join(dir, "cpu.max")) != "max 100000" {
		t.Error("SetLimits(Limits{}) did not lift the limits")
	}
	checkMembership(t, h, g)
}

// checkMembership adds a pid, sees it, and checks that Remove refuses a
// group with processes, that names cannot be taken twice and that List
// and Open find the group.
func checkMembership(t *testing.T, h Host, g *Group) {
	t.Helper()
	if err := g.Add(4242); err != nil {
		t.Fatal(err)
	}
	if p, err := g.Procs(); err != nil || !slices.Equal(p, []int{4242}) {
		t.Fatalf("procs %v %v, want [4242]", p, err)
	}
	if err := g.Remove(); !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "4242") {
		t.Fatalf("Remove with a process: %v", err)
	}
	if _, err := h.Create(g.Name(), Limits{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create: %v", err)
	}
	if names, err := h.List(); err != nil || !slices.Equal(names, []string{g.Name()}) {
		t.Fatalf("List = %v %v", names, err)
	}
	if o, err := h.Open(g.Name()); err != nil || !slices.Equal(o.Paths(), g.Paths()) {
		t.Fatalf("Open = %v %v", o, err)
	}
	if _, err := h.Open("other"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open(other): %v", err)
	}
}

func TestCreateV1Writes(t *testing.T) {
	h := fakeHost(t, mountsV1, map[string]string{"/sys/fs/cgroup/unified": "hugetlb"})
	h.Nest = true
	g, err := h.Create("vm-2", Limits{MemoryBytes: 256 << 20, Pids: 64, CPUs: 0.5, IOWeight: 300,
		Devices: []DeviceLimit{{Major: 254, Minor: 16, WriteBPS: 4096}}})
	if err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(h.FSRoot, "sys/fs/cgroup")
	mem := filepath.Join(cg, "memory/process_api/abc/smolvm/vm-2") // nested under our own memory cgroup
	for file, want := range map[string]string{
		filepath.Join(mem, "memory.limit_in_bytes"):                            "268435456",
		filepath.Join(cg, "pids/smolvm/vm-2/pids.max"):                         "64",
		filepath.Join(cg, "cpu/smolvm/vm-2/cpu.cfs_period_us"):                 "100000",
		filepath.Join(cg, "cpu/smolvm/vm-2/cpu.cfs_quota_us"):                  "50000",
		filepath.Join(cg, "blkio/smolvm/vm-2/blkio.bfq.weight"):                "1000",
		filepath.Join(cg, "blkio/smolvm/vm-2/blkio.throttle.write_bps_device"): "254:16 4096",
	} {
		if got := readFake(t, file); got != want {
			t.Errorf("%s = %q, want %q", strings.TrimPrefix(file, cg), got, want)
		}
	}
	if len(g.Paths()) != 5 {
		t.Errorf("paths %v: want one per v1 hierarchy we use (cpu, cpuacct, memory, blkio, pids)", g.Paths())
	}
	if _, err := os.Stat(filepath.Join(cg, "unified/smolvm")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a group was made in the unified hierarchy, which serves none of our controllers")
	}
	back, err := g.Limits()
	if err != nil || back.MemoryBytes != 256<<20 || back.Pids != 64 || back.CPUs != 0.5 {
		t.Errorf("Limits() = %+v %v", back, err)
	}
	// Stats read v1's files.
	os.WriteFile(filepath.Join(mem, "memory.usage_in_bytes"), []byte("1234\n"), 0o644)
	os.WriteFile(filepath.Join(mem, "memory.max_usage_in_bytes"), []byte("5678\n"), 0o644)
	os.WriteFile(filepath.Join(cg, "pids/smolvm/vm-2/pids.current"), []byte("3\n"), 0o644)
	os.WriteFile(filepath.Join(cg, "cpuacct/smolvm/vm-2/cpuacct.usage"), []byte("2500000000\n"), 0o644)
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryBytes != 1234 || st.MemoryPeakBytes != 5678 || st.Pids != 3 || st.CPU.Seconds() != 2.5 {
		t.Errorf("stats %+v", st)
	}
	checkMembership(t, h, g)
}

func TestBadLimitsAndNames(t *testing.T) {
	h := fakeHost(t, mountsV2, map[string]string{"/sys/fs/cgroup": "cpu memory pids"})
	for _, tc := range []struct {
		name   string
		lim    Limits
		kind   error
		expect string
	}{
		{"vm", Limits{MemoryBytes: -1}, ErrInvalidLimit, "memory -1 bytes: must be 0 (no limit) or at least 4194304"},
		{"vm", Limits{MemoryBytes: 4096}, ErrInvalidLimit, "memory 4096 bytes"},
		{"vm", Limits{Pids: -5}, ErrInvalidLimit, "pids -5: must be 0 (no limit) or positive"},
		{"vm", Limits{CPUs: 0.001}, ErrInvalidLimit, "cpus 0.001: must be 0 (no limit) or between 0.01 and 4096"},
		{"vm", Limits{CPUs: 1e6}, ErrInvalidLimit, "cpus 1e+06"},
		{"vm", Limits{IOWeight: 10001}, ErrInvalidLimit, "io weight 10001: must be 0 (default) or between 1 and 10000"},
		{"vm", Limits{Devices: []DeviceLimit{{Major: 8}}}, ErrInvalidLimit, "devices[0] 8:0: sets no rate"},
		{"vm", Limits{Devices: []DeviceLimit{{Major: 8, ReadBPS: 1}, {Major: 8, WriteBPS: 1}}}, ErrInvalidLimit, "devices[1] 8:0: device listed twice"},
		{"vm", Limits{IOWeight: 100}, ErrUnsupported, "the io limit needs the io controller"},
		{"../escape", Limits{}, ErrInvalidName, `"../escape"`},
		{"", Limits{}, ErrInvalidName, `""`},
		{"a/b", Limits{}, ErrInvalidName, "letters, digits"},
		{strings.Repeat("x", 129), Limits{}, ErrInvalidName, "1-128"},
	} {
		_, err := h.Create(tc.name, tc.lim)
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.expect) {
			t.Errorf("Create(%.10q, %+v) = %v, want %v containing %q", tc.name, tc.lim, err, tc.kind, tc.expect)
		}
	}
	if _, err := os.Stat(filepath.Join(h.FSRoot, "sys/fs/cgroup/smolvm")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a refused Create left a directory behind")
	}
	if _, err := fakeHost(t, mountsNone, nil).Create("vm", Limits{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Create without cgroups: %v", err)
	}
}

func TestStatsV2(t *testing.T) {
	h := fakeHost(t, mountsV2, map[string]string{"/sys/fs/cgroup": "cpu memory pids"})
	g, err := h.Create("vm", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	dir := g.Paths()[0]
	os.WriteFile(filepath.Join(dir, "memory.current"), []byte("4096\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "pids.current"), []byte("2\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("usage_usec 1500000\nuser_usec 1000000\n"), 0o644)
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryBytes != 4096 || st.MemoryPeakBytes != 0 || st.Pids != 2 || st.CPU.Seconds() != 1.5 {
		t.Errorf("stats %+v", st)
	}
}

// TestCPULimitsInCPUHierarchy: when cpuacct's hierarchy is listed before
// cpu's (as a mount table made from /proc/self/cgroup is), the CPU quota
// still goes to the cpu hierarchy, which has the files.
func TestCPULimitsInCPUHierarchy(t *testing.T) {
	swapped := strings.Replace(strings.Replace(mountsV1,
		"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n", "", 1),
		"33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n",
		"33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n", 1)
	h := fakeHost(t, swapped, map[string]string{"/sys/fs/cgroup/unified": "hugetlb"})
	if _, err := h.Create("vm-3", Limits{CPUs: 1.5}); err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(h.FSRoot, "sys/fs/cgroup")
	if got := readFake(t, filepath.Join(cg, "cpu/smolvm/vm-3/cpu.cfs_quota_us")); got != "150000" {
		t.Errorf("cpu quota = %q, want 150000", got)
	}
	if _, err := os.Stat(filepath.Join(cg, "cpuacct/smolvm/vm-3/cpu.cfs_quota_us")); err == nil {
		t.Error("the quota was written to the cpuacct hierarchy")
	}
}
