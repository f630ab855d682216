package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// pollInterval is how often console logs are checked for the ready marker.
// Bare and SmolVM boots are polled alike, so the detection delay cancels out.
const pollInterval = 5 * time.Millisecond

var readyRE = regexp.MustCompile(bootparams.ReadyMarker + ` uptime=([0-9.]+)s`)

// marker is when the guest's ready marker appeared on a console log.
type marker struct {
	Found  bool
	At     time.Duration // since the watch's start time
	Uptime time.Duration // the guest's own uptime in the marker line
}

// watch follows a console log for the ready marker.
type watch struct {
	found chan struct{} // closed when the marker is seen
	quit  chan struct{}
	done  chan struct{}
	res   marker
}

// watchConsole follows the console log at path (which may not exist yet)
// until the ready marker appears or Stop is called.
func watchConsole(path string, t0 time.Time) *watch {
	w := &watch{found: make(chan struct{}), quit: make(chan struct{}), done: make(chan struct{})}
	go w.run(path, t0)
	return w
}

func (w *watch) run(path string, t0 time.Time) {
	defer close(w.done)
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var buf []byte
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	quitting := false
	for {
		at := time.Since(t0)
		if f == nil {
			f, _ = os.Open(path)
		}
		if f != nil {
			b, _ := io.ReadAll(f)
			buf = append(buf, b...)
			if m := readyRE.FindSubmatch(buf); m != nil {
				up, _ := strconv.ParseFloat(string(m[1]), 64)
				w.res = marker{Found: true, At: at, Uptime: time.Duration(up * float64(time.Second))}
				close(w.found)
				return
			}
			// Keep only the last, unfinished line: the marker is one line.
			if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
				buf = buf[i+1:]
			}
		}
		if quitting {
			return
		}
		select {
		case <-w.quit:
			// One last look: a Start that returns within a poll interval
			// of the marker must not lose it. Found then, it counts as
			// seen at the quit, which is the latest it can have been
			// (an upper bound on the guest boot, a lower one on what
			// follows the marker).
			quitting = true
		case <-tick.C:
		}
	}
}

// Found is closed when the marker has been seen.
func (w *watch) Found() <-chan struct{} { return w.found }

// Stop ends the watch and returns what it saw.
func (w *watch) Stop() marker {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	<-w.done
	return w.res
}

// uptime returns the host's uptime (10 ms resolution).
func uptime() time.Duration {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return time.Duration(f * float64(time.Second))
}

// launchOffset returns when process pid started, relative to the host
// uptime up0 (taken when the measured step began), at clock-tick resolution.
func launchOffset(pid int, up0 time.Duration) (time.Duration, error) {
	ticks, err := vmm.StartTime(pid)
	if err != nil {
		return 0, err
	}
	const userHZ = 100 // USER_HZ is 100 on Linux x86
	return time.Duration(ticks)*time.Second/userHZ - up0, nil
}

// memory is a process's resident memory, in MiB. For QEMU, PSS is split
// by mapping (from /proc/PID/smaps).
type memory struct {
	PSSMiB float64 `json:"pss_mib"`
	RSSMiB float64 `json:"rss_mib"`
	// GuestRAMMiB is the part of guest memory the guest has touched.
	GuestRAMMiB float64 `json:"guest_ram_mib"`
	// TCGCacheMiB is translated code (anonymous executable mappings);
	// TCGCacheMappedMiB their size, which tb-size bounds.
	TCGCacheMiB       float64 `json:"tcg_cache_mib"`
	TCGCacheMappedMiB float64 `json:"tcg_cache_mapped_mib"`
	// QEMUAnonMiB is QEMU's other anonymous memory (heap, buffers).
	QEMUAnonMiB float64 `json:"qemu_anon_mib"`
	// FilesMiB is mapped files (binary, libraries), shared between QEMUs.
	FilesMiB float64 `json:"files_mib"`
}

// processMemory reads PSS and RSS from /proc/PID/smaps_rollup and splits
// PSS by mapping; an anonymous mapping of exactly guestMiB is guest RAM.
func processMemory(pid, guestMiB int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "Pss:":
			m.PSSMiB = kb / 1024
		case "Rss:":
			m.RSSMiB = kb / 1024
		}
	}
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return m, err
	}
	var kind string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4 {
			var lo, hi uint64
			fmt.Sscanf(f[0], "%x-%x", &lo, &hi)
			size := float64(hi-lo) / (1 << 20)
			switch anon := len(f) == 5; {
			case anon && guestMiB > 0 && size == float64(guestMiB),
				!anon && strings.HasPrefix(f[5], "/memfd:memory-backend"): // QEMU's RAM memfd
				kind = "ram"
			case anon && strings.Contains(f[1], "x"):
				kind = "tcg"
				m.TCGCacheMappedMiB += size
			case anon || strings.HasPrefix(f[5], "["):
				kind = "anon"
			default:
				kind = "file"
			}
			continue
		}
		if len(f) < 2 || f[0] != "Pss:" {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch kind {
		case "ram":
			m.GuestRAMMiB += kb / 1024
		case "tcg":
			m.TCGCacheMiB += kb / 1024
		case "anon":
			m.QEMUAnonMiB += kb / 1024
		case "file":
			m.FilesMiB += kb / 1024
		}
	}
	return m, nil
}

// cmdlineOf returns a process's command line with spaces between arguments.
func cmdlineOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// breakdown describes m on one line.
func (m memory) breakdown() string {
	return fmt.Sprintf("PSS %.1f MiB = guest RAM touched %.1f + TCG code cache %.1f (%.0f MiB mapped) + QEMU heap/buffers %.1f + files %.1f",
		m.PSSMiB, m.GuestRAMMiB, m.TCGCacheMiB, m.TCGCacheMappedMiB, m.QEMUAnonMiB, m.FilesMiB)
}
