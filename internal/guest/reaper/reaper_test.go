package reaper

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// zombies returns this process's children that are zombies.
func zombies(t *testing.T) []int {
	t.Helper()
	self := strconv.Itoa(os.Getpid())
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var z []int
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may contain spaces.
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		f := strings.Fields(rest)
		if len(f) > 1 && f[0] == "Z" && f[1] == self {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(s)))
			z = append(z, pid)
		}
	}
	return z
}

// TestReaperDeliversAndReapsOrphans makes this test process a child
// subreaper, like PID 1: orphaned grandchildren come to it. Tracked
// children must get their own exit status every time, even while the
// reaper is reaping orphans concurrently, and no zombie may remain.
func TestReaperDeliversAndReapsOrphans(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)

	attr := &syscall.ProcAttr{Env: []string{"PATH=/usr/bin:/bin"}, Files: []uintptr{0, 1, 2}}
	var wg sync.WaitGroup
	const n = 40
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := i % 7
			// Each child leaves an orphan behind and exits at once.
			script := "sleep 0.05 & exit " + strconv.Itoa(code)
			_, ch, err := r.Start([]string{"/bin/sh", "-c", script}, attr)
			if err != nil {
				errs <- err.Error()
				return
			}
			select {
			case ws := <-ch:
				if !ws.Exited() || ws.ExitStatus() != code {
					errs <- "child " + strconv.Itoa(i) + ": wrong status " + strconv.Itoa(int(ws))
				}
			case <-time.After(20 * time.Second):
				errs <- "child " + strconv.Itoa(i) + ": status never delivered"
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	// The orphans (sleep 0.05) exit soon and must be reaped.
	deadline := time.Now().Add(10 * time.Second)
	for r.Orphans() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := r.Orphans(); got < n {
		t.Errorf("reaped %d orphans, want %d", got, n)
	}
	time.Sleep(100 * time.Millisecond)
	if z := zombies(t); len(z) > 0 {
		t.Errorf("zombies left: %v", z)
	}
}

func TestStartFails(t *testing.T) {
	r := New()
	if _, _, err := r.Start([]string{"/nonexistent/binary"}, nil); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}
