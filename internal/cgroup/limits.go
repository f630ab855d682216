package cgroup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Limits are what a group may use. A zero field means no limit.
type Limits struct {
	// MemoryBytes caps the group's memory; swap is capped so that memory
	// plus swap stays within it where the host accounts swap.
	MemoryBytes int64
	// Pids caps the number of processes and threads.
	Pids int64
	// CPUs caps CPU time as a number of CPUs: 2.0 is two CPUs' worth,
	// 0.5 half of one.
	CPUs float64
	// IOWeight is the group's share of block I/O, 1..10000 (v2 io.weight
	// scale, 100 is the default); on v1 it becomes blkio.weight (x5,
	// clamped to 10..1000). Needs a proportional I/O scheduler.
	IOWeight int
	// Devices throttles block I/O per device.
	Devices []DeviceLimit
}

// DeviceLimit throttles one block device. A zero rate means no limit.
type DeviceLimit struct {
	// Major and Minor are the device's numbers.
	Major, Minor uint32
	// ReadBPS and WriteBPS are bytes per second.
	ReadBPS, WriteBPS uint64
	// ReadIOPS and WriteIOPS are operations per second.
	ReadIOPS, WriteIOPS uint64
}

// Rules for limits.
const (
	// MinMemoryBytes is the smallest memory limit accepted.
	MinMemoryBytes = 4 << 20
	// MinCPUs and MaxCPUs bound the CPU limit (the kernel's smallest
	// quota is 1 ms per 100 ms period).
	MinCPUs = 0.01
	MaxCPUs = 4096
	// cpuPeriodUs is the CFS period the CPU quota is expressed in.
	cpuPeriodUs = 100000
)

// Validate checks every limit and returns an error naming the first one
// that breaks its rule.
func (l Limits) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidLimit}, args...)...)
	}
	if l.MemoryBytes < 0 || (l.MemoryBytes > 0 && l.MemoryBytes < MinMemoryBytes) {
		return bad("memory %d bytes: must be 0 (no limit) or at least %d (4 MiB)", l.MemoryBytes, MinMemoryBytes)
	}
	if l.Pids < 0 {
		return bad("pids %d: must be 0 (no limit) or positive", l.Pids)
	}
	if math.IsNaN(l.CPUs) || l.CPUs < 0 || (l.CPUs > 0 && l.CPUs < MinCPUs) || l.CPUs > MaxCPUs {
		return bad("cpus %v: must be 0 (no limit) or between %v and %v", l.CPUs, MinCPUs, MaxCPUs)
	}
	if l.IOWeight < 0 || l.IOWeight > 10000 {
		return bad("io weight %d: must be 0 (default) or between 1 and 10000", l.IOWeight)
	}
	seen := map[[2]uint32]bool{}
	for i, d := range l.Devices {
		key := [2]uint32{d.Major, d.Minor}
		if seen[key] {
			return bad("devices[%d] %d:%d: device listed twice", i, d.Major, d.Minor)
		}
		seen[key] = true
		if d.ReadBPS == 0 && d.WriteBPS == 0 && d.ReadIOPS == 0 && d.WriteIOPS == 0 {
			return bad("devices[%d] %d:%d: sets no rate", i, d.Major, d.Minor)
		}
	}
	return nil
}

// needs returns the controllers the limits need.
func (l Limits) needs() []string {
	var out []string
	if l.MemoryBytes > 0 {
		out = append(out, Memory)
	}
	if l.Pids > 0 {
		out = append(out, Pids)
	}
	if l.CPUs > 0 {
		out = append(out, CPU)
	}
	if l.IOWeight > 0 || len(l.Devices) > 0 {
		out = append(out, IO)
	}
	return out
}

// cpuQuota is the CFS quota in microseconds per cpuPeriodUs.
func (l Limits) cpuQuota() int64 { return int64(math.Round(l.CPUs * cpuPeriodUs)) }

// write is one control-file write.
type write struct {
	file, value string
	optional    bool // skipped when the file does not exist
}

// writesV2 returns the control-file writes for controller c on v2.
func (l Limits) writesV2(c string) []write {
	switch c {
	case Memory:
		return []write{{"memory.max", limitString(l.MemoryBytes), false}, {"memory.swap.max", swapV2(l.MemoryBytes), true}}
	case Pids:
		return []write{{"pids.max", limitString(l.Pids), false}}
	case CPU:
		q := "max"
		if l.CPUs > 0 {
			q = strconv.FormatInt(l.cpuQuota(), 10)
		}
		return []write{{"cpu.max", q + " " + strconv.Itoa(cpuPeriodUs), false}}
	case IO:
		var w []write
		if l.IOWeight > 0 {
			w = append(w, write{"io.weight", "default " + strconv.Itoa(l.IOWeight), false})
		}
		for _, d := range l.Devices {
			w = append(w, write{"io.max", fmt.Sprintf("%d:%d rbps=%s wbps=%s riops=%s wiops=%s", d.Major, d.Minor,
				rate(d.ReadBPS), rate(d.WriteBPS), rate(d.ReadIOPS), rate(d.WriteIOPS)), false})
		}
		return w
	}
	return nil
}

// writesV1 returns the control-file writes for controller c on v1. The
// hierarchy's dir decides between blkio.weight and blkio.bfq.weight.
func (l Limits) writesV1(c, dir string) []write {
	switch c {
	case Memory:
		v := limitString(l.MemoryBytes)
		if l.MemoryBytes == 0 {
			v = "-1"
		}
		// The kernel keeps memsw (memory+swap) at or above the memory
		// limit: raise memsw first, lower it last.
		mem, memsw := write{"memory.limit_in_bytes", v, false}, write{"memory.memsw.limit_in_bytes", v, true}
		if raising(filepath.Join(dir, mem.file), l.MemoryBytes) {
			return []write{memsw, mem}
		}
		return []write{mem, memsw}
	case Pids:
		return []write{{"pids.max", limitString(l.Pids), false}}
	case CPU:
		q := "-1"
		if l.CPUs > 0 {
			q = strconv.FormatInt(l.cpuQuota(), 10)
		}
		return []write{{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUs), false}, {"cpu.cfs_quota_us", q, false}}
	case IO:
		var w []write
		if l.IOWeight > 0 {
			file := "blkio.weight"
			if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
				file = "blkio.bfq.weight"
			}
			w = append(w, write{file, strconv.Itoa(min(max(l.IOWeight*5, 10), 1000)), false})
		}
		for _, d := range l.Devices {
			for _, r := range []struct {
				file string
				v    uint64
			}{{"read_bps_device", d.ReadBPS}, {"write_bps_device", d.WriteBPS},
				{"read_iops_device", d.ReadIOPS}, {"write_iops_device", d.WriteIOPS}} {
				if r.v > 0 {
					w = append(w, write{"blkio.throttle." + r.file, fmt.Sprintf("%d:%d %d", d.Major, d.Minor, r.v), false})
				}
			}
		}
		return w
	}
	return nil
}

// raising reports whether limit n (0: none) is above the one in file.
func raising(file string, n int64) bool {
	cur, err := readInt(file)
	if err != nil {
		return false
	}
	return n == 0 || (cur != 0 && n > cur)
}

// limitString is n, or "max" for 0 (no limit).
func limitString(n int64) string {
	if n <= 0 {
		return "max"
	}
	return strconv.FormatInt(n, 10)
}

// swapV2 is memory.swap.max for a memory limit: no swap when memory is
// limited, so the limit covers everything the group holds.
func swapV2(mem int64) string {
	if mem > 0 {
		return "0"
	}
	return "max"
}

// rate is an io.max rate, "max" for 0.
func rate(n uint64) string {
	if n == 0 {
		return "max"
	}
	return strconv.FormatUint(n, 10)
}

// apply performs writes in dir, naming the limit's file in errors.
func apply(dir string, ws []write) error {
	for _, w := range ws {
		p := filepath.Join(dir, w.file)
		if w.optional {
			if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
				continue
			}
		}
		if err := writeFile(p, w.value); err != nil {
			return fmt.Errorf("cgroup: set %s to %q: %w", w.file, w.value, err)
		}
	}
	return nil
}

// writeFile writes a control file in one write(2), as cgroupfs wants. It
// creates the file only in a fake tree (cgroupfs refuses O_CREAT of an
// unknown file, which is the error we want there).
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(value)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readInt reads a control file holding one number; "max" and v1's huge
// "unlimited" values read as 0.
func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" || s == "-1" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if u, uerr := strconv.ParseUint(s, 10, 64); uerr == nil && u >= 1<<62 {
			return 0, nil
		}
		return 0, fmt.Errorf("%s: %q is not a number", filepath.Base(path), s)
	}
	if n >= 1<<62 {
		return 0, nil
	}
	return n, nil
}

// parseCPUMax parses v2 cpu.max ("max 100000" or "200000 100000") into CPUs.
func parseCPUMax(s string) (float64, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, fmt.Errorf("cpu.max: %q is not \"QUOTA PERIOD\"", s)
	}
	if f[0] == "max" {
		return 0, nil
	}
	q, err1 := strconv.ParseInt(f[0], 10, 64)
	p, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || p <= 0 {
		return 0, fmt.Errorf("cpu.max: %q is not \"QUOTA PERIOD\"", s)
	}
	return float64(q) / float64(p), nil
}
