// Package reaper reaps child processes for a process that is PID 1 (or a
// child subreaper) without stealing exit statuses from code that waits for
// its own children.
//
// Orphans are re-parented to PID 1 and must be reaped, or they stay zombies.
// Reaping with wait4(-1) races with os/exec's Wait, which then fails with
// ECHILD: so a process using a Reaper must start every child through
// Reaper.Start, never os/exec. The smolvm agent therefore runs its command
// server, which uses os/exec, in a child process; PID 1 only boots, reaps
// and powers off.
package reaper

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper reaps every child of the process and delivers the exit status of
// the ones started with Start.
type Reaper struct {
	// Logf, if set, is told about reaped processes nobody waited for.
	Logf func(format string, args ...any)

	mu      sync.Mutex                   // held while forking so a fast exit finds its waiter
	waiters map[int]chan unix.WaitStatus // guarded by mu
	reaped  int                          // orphans reaped; guarded by mu
}

// New returns a Reaper; call Run to start reaping.
func New() *Reaper {
	return &Reaper{waiters: map[int]chan unix.WaitStatus{}}
}

// Start starts argv[0] (a path) with attr and returns its pid and a channel
// that receives its wait status once it exits.
func (r *Reaper) Start(argv []string, attr *syscall.ProcAttr) (int, <-chan unix.WaitStatus, error) {
	if attr == nil {
		attr = &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv[0], argv, attr)
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	return pid, ch, nil
}

// Run reaps children until ctx is done, on every SIGCHLD and once a second
// in case a signal was coalesced away.
func (r *Reaper) Run(ctx context.Context) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.ReapAll()
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-tick.C:
		}
	}
}

// ReapAll reaps every child that has exited and returns how many it reaped.
func (r *Reaper) ReapAll() int {
	n := 0
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return n
		}
		n++
		r.mu.Lock()
		ch, ok := r.waiters[pid]
		delete(r.waiters, pid)
		if !ok {
			r.reaped++
		}
		r.mu.Unlock()
		if ok {
			ch <- ws
		} else if r.Logf != nil {
			r.Logf("reaper: reaped orphan %d (%s)", pid, describe(ws))
		}
	}
}

// Orphans returns how many processes not started by Start have been reaped.
func (r *Reaper) Orphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reaped
}

// describe renders a wait status for logs.
func describe(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal " + ws.Signal().String()
	}
	return "status " + strconv.Itoa(int(ws))
}
