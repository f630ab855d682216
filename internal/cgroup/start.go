package cgroup

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Start starts cmd with its process inside the group from its first
// instruction, where Add moves a process that already runs. Moving a
// process between cgroups waits for an RCU grace period (about 10 ms) and
// stalls the process's thread creation meanwhile; a process born in the
// group costs neither.
//
// On a v2 hierarchy the child is cloned into the group (clone3 with
// CLONE_INTO_CGROUP, Linux 5.7 and later). In v1 hierarchies, where there
// is no such flag, a thread of this process locked for the purpose moves
// itself into the group (a thread moving itself takes no global lock),
// forks cmd, and moves back; if it cannot move back, the thread is
// discarded instead of running other goroutines. Go creates no thread
// from a locked one, so no other thread of this process ever enters the
// group. A kernel without CLONE_INTO_CGROUP gets cmd started and then
// moved, as Add does. On success the process is in the group.
func (g *Group) Start(cmd *exec.Cmd) error {
	var v1 []int // indexes of the group's v1 hierarchies
	for i, hy := range g.l.hier {
		if hy.version == 1 {
			v1 = append(v1, i)
			continue
		}
		fd, err := unix.Open(g.dirs[i], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("cgroup: open %s: %w", g.dirs[i], err)
		}
		defer unix.Close(fd)
		attr := &syscall.SysProcAttr{}
		if cmd.SysProcAttr != nil {
			a := *cmd.SysProcAttr
			attr = &a
		}
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		orig := cmd.SysProcAttr
		cmd.SysProcAttr = attr
		defer func() { cmd.SysProcAttr = orig }()
	}
	err := g.startFrom(cmd, v1)
	if err != nil && cmd.Process == nil && cmd.SysProcAttr != nil && cmd.SysProcAttr.UseCgroupFD &&
		(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.E2BIG)) {
		// No CLONE_INTO_CGROUP (before Linux 5.7): start, then move.
		cmd.SysProcAttr.UseCgroupFD = false
		if err = g.startFrom(cmd, v1); err == nil {
			if err = g.Add(cmd.Process.Pid); err != nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
	}
	return err
}

// startFrom starts cmd; with v1 hierarchies (indexes into g's), from a
// locked thread that sits in the group's cgroup in each of them.
func (g *Group) startFrom(cmd *exec.Cmd, v1 []int) error {
	if len(v1) == 0 {
		return cmd.Start()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is unlocked, and so reused, only once it is back
		// where it was: a goroutine that ends locked takes its thread
		// with it.
		home, err := g.threadHome(v1)
		if err != nil {
			done <- err
			runtime.UnlockOSThread()
			return
		}
		var moved []string
		for _, i := range v1 {
			if err = moveThread(g.dirs[i]); err != nil {
				break
			}
			moved = append(moved, home[i])
		}
		if err == nil {
			err = cmd.Start()
		}
		back := true
		for _, dir := range moved {
			back = back && moveThread(dir) == nil
		}
		done <- err
		if back {
			runtime.UnlockOSThread()
		}
	}()
	return <-done
}

// threadHome returns the calling thread's cgroup directory in each of the
// group's v1 hierarchies listed in v1, by hierarchy index.
func (g *Group) threadHome(v1 []int) (map[int]string, error) {
	dirs, err := cgroupDirs(fmt.Sprintf("/proc/self/task/%d/cgroup", unix.Gettid()), g.l.hier)
	if err != nil {
		return nil, err
	}
	home := map[int]string{}
	for _, i := range v1 {
		if home[i] = dirs[g.l.hier[i]]; home[i] == "" {
			return nil, fmt.Errorf("cgroup: this thread's cgroup in the %s hierarchy is unknown", strings.Join(g.l.hier[i].v1, ","))
		}
	}
	return home, nil
}

// moveThread moves the calling thread (not its process) into the v1
// cgroup dir.
func moveThread(dir string) error {
	if err := writeFile(filepath.Join(dir, "tasks"), "0"); err != nil {
		return fmt.Errorf("cgroup: move a thread to %s: %w", dir, err)
	}
	return nil
}
