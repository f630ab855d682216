package shim

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	v1 "github.com/containerd/cgroups/stats/v1"
	"github.com/smolvm-go/smolvm"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times (100 on
// every Linux architecture containerd runs on).
const clockTicks = 100

// cgroupMetrics describes what the task's VM costs the host from its
// cgroup: CPU time and memory of the VMM and all its threads (guest and
// emulation together) against the cgroup's limit; pids are the processes
// the guest agent runs for the task.
func cgroupMetrics(u smolvm.Usage, guestPids uint64) *v1.Metrics {
	return &v1.Metrics{
		CPU: &v1.CPUStat{Usage: &v1.CPUUsage{Total: uint64(u.CPU)}},
		Memory: &v1.MemoryStat{Usage: &v1.MemoryEntry{Usage: uint64(u.MemoryBytes),
			Max: uint64(u.MemoryPeakBytes), Limit: uint64(u.MemoryLimitBytes)}},
		Pids: &v1.PidsStat{Current: guestPids},
	}
}

// vmmMetrics describes what the task's VM costs the host, read from its VMM
// process, where the shim manages no cgroups (not root): CPU is the VMM's
// user and system time (guest and emulation together), memory its
// resident set against the VM's memory size, pids the processes the guest
// agent runs for the task.
func vmmMetrics(pid int, memLimit uint64, guestPids uint64) (*v1.Metrics, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("/proc/%d/stat: malformed times", pid)
	}
	const nsPerTick = 1e9 / clockTicks
	var rss uint64
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil {
				rss = kb << 10
			}
		}
	}
	return &v1.Metrics{
		CPU: &v1.CPUStat{Usage: &v1.CPUUsage{
			Total: (utime + stime) * nsPerTick, User: utime * nsPerTick, Kernel: stime * nsPerTick,
		}},
		Memory: &v1.MemoryStat{RSS: rss, Usage: &v1.MemoryEntry{Usage: rss, Limit: memLimit}},
		Pids:   &v1.PidsStat{Current: guestPids},
	}, nil
}
