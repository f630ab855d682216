package initd

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// PowerOff stops every process (SIGTERM, then SIGKILL after 2 s), syncs,
// unmounts or remounts read-only every disk, and powers the machine off.
// Only the first call acts. With the real reboot(2) it does not return; if
// that fails it logs and waits forever rather than let PID 1 exit (which
// would panic the kernel).
func (in *Init) PowerOff(reason string) {
	in.poweroff.Do(func() {
		defer close(in.done)
		defer func() {
			if r := recover(); r != nil {
				in.logf("power off: panic: %v", r)
			}
		}()
		in.logf("powering off (%s)", reason)
		_ = in.opts.Kill(-1, unix.SIGTERM)
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && !in.opts.DryRun {
			in.reaper.ReapAll()
			if !userProcessesLeft("/proc") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = in.opts.Kill(-1, unix.SIGKILL)
		in.reaper.ReapAll()
		if !in.opts.DryRun {
			unix.Sync()
		}
		if err := in.mounts.UnmountAll(); err != nil {
			in.logf("power off: %v", err)
		}
		if !in.opts.DryRun {
			unix.Sync()
		}
		if err := in.opts.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			in.logf("power off: reboot(POWER_OFF): %v", err)
			if in.opts.DryRun {
				return
			}
			select {} // PID 1 must not exit
		}
	})
}

// pfKthread is the kernel-thread bit of a task's flags (/proc/PID/stat field 9).
const pfKthread = 0x00200000

// userProcessesLeft reports whether any live process other than init and
// kernel threads remains. kill(-1, 0) cannot tell: it succeeds as long as
// kernel threads exist, which is always.
func userProcessesLeft(proc string) bool {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		// f[0] is the state (field 3), f[6] the flags (field 9).
		if len(f) < 7 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		flags, err := strconv.ParseUint(f[6], 10, 64)
		if err == nil && flags&pfKthread != 0 {
			continue
		}
		return true
	}
	return false
}
