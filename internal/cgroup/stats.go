package cgroup

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Stats is a group's resource use. A field the host does not account
// stays zero.
type Stats struct {
	// MemoryBytes is the memory the group uses now.
	MemoryBytes int64
	// MemoryPeakBytes is the most it has used (v2 needs Linux 5.19).
	MemoryPeakBytes int64
	// Pids is the number of processes and threads in the group.
	Pids int64
	// CPU is the CPU time the group has used.
	CPU time.Duration
}

// Stats reads the group's resource use.
func (g *Group) Stats() (Stats, error) {
	var s Stats
	var err error
	if dir, hy := g.dirFor(Memory); hy != nil {
		cur, peak := "memory.usage_in_bytes", "memory.max_usage_in_bytes"
		if hy.version == 2 {
			cur, peak = "memory.current", "memory.peak"
		}
		if s.MemoryBytes, err = readInt(filepath.Join(dir, cur)); err != nil {
			return s, fmt.Errorf("cgroup: stats of %s: %w", g.name, err)
		}
		s.MemoryPeakBytes, _ = readInt(filepath.Join(dir, peak)) // absent before 5.19
	}
	if dir, hy := g.dirFor(Pids); hy != nil {
		if s.Pids, err = readInt(filepath.Join(dir, "pids.current")); err != nil {
			return s, fmt.Errorf("cgroup: stats of %s: %w", g.name, err)
		}
	}
	if s.CPU, err = g.cpuUsage(); err != nil {
		return s, fmt.Errorf("cgroup: stats of %s: %w", g.name, err)
	}
	return s, nil
}

// cpuUsage reads the CPU time used: v1 cpuacct.usage (ns), else v2
// cpu.stat usage_usec (which v2 keeps even without the cpu controller).
func (g *Group) cpuUsage() (time.Duration, error) {
	if dir := g.dirV1("cpuacct"); dir != "" {
		ns, err := readInt(filepath.Join(dir, "cpuacct.usage"))
		return time.Duration(ns), err
	}
	for i, hy := range g.l.hier {
		if hy.version != 2 {
			continue
		}
		b, err := os.ReadFile(filepath.Join(g.dirs[i], "cpu.stat"))
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "usage_usec "); ok {
				us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("cpu.stat: usage_usec %q", v)
				}
				return time.Duration(us) * time.Microsecond, nil
			}
		}
	}
	return 0, nil
}
