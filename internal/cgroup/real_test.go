package cgroup

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRealGroup uses this machine's cgroups: it makes a group nested under
// the test's own cgroup, runs a real shell in it, sees the shell's child
// in the group, reads the group's stats, shows that a pids limit stops a
// fork, then kills and removes the group and checks nothing is left.
func TestRealGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	h := Host{Nest: true}
	mode, err := h.Detect()
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := h.Controllers()
	t.Logf("mode %s, controllers %v", mode, cs)
	if !slices.Contains(cs, Pids) {
		t.Skipf("no pids controller here (mode %s)", mode)
	}
	name := fmt.Sprintf("test-%d", os.Getpid())
	lim := Limits{Pids: 2}
	if slices.Contains(cs, Memory) {
		lim.MemoryBytes = 64 << 20
	}
	if slices.Contains(cs, CPU) {
		lim.CPUs = 0.5
	}
	g, err := h.Create(name, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("group dirs %v", g.Paths())
	defer g.Destroy(context.Background())

	sh := exec.Command("/bin/sh")
	stdin, _ := sh.StdinPipe()
	stdout, _ := sh.StdoutPipe()
	var stderr lockedBuffer
	sh.Stderr = &stderr
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	defer func() {
		if !exited {
			sh.Process.Kill()
			sh.Wait()
		}
	}()
	if err := g.Add(sh.Process.Pid); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewReader(stdout)
	// say sends the shell a command and returns the line it prints, or ""
	// when the shell exits first; it gives up after 10 s.
	say := func(cmd string) string {
		t.Helper()
		if _, err := io.WriteString(stdin, cmd+"\n"); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		go func() {
			l, _ := lines.ReadString('\n')
			got <- strings.TrimSpace(l)
		}()
		select {
		case l := <-got:
			return l
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer in 10 s (stderr %q)", cmd, stderr.String())
			return ""
		}
	}
	// The shell forks a sleep: two processes, the limit.
	sleepPid := say("sleep 60 >/dev/null 2>&1 & echo $!")
	procs, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(procs, sh.Process.Pid) || !slices.Contains(procs, atoi(t, sleepPid)) {
		t.Fatalf("group procs %v, want the shell %d and its sleep %s", procs, sh.Process.Pid, sleepPid)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", st)
	if st.Pids != 2 {
		t.Errorf("pids.current %d, want 2", st.Pids)
	}
	if slices.Contains(cs, Memory) && st.MemoryBytes <= 0 {
		t.Errorf("memory use %d after a fork and exec in the group", st.MemoryBytes)
	}
	if back, err := g.Limits(); err != nil || back.Pids != 2 || back.MemoryBytes != lim.MemoryBytes || back.CPUs != lim.CPUs {
		t.Errorf("Limits() = %+v %v, want %+v", back, err, lim)
	}
	// A third process is over the limit: the fork fails, and a script
	// shell that cannot fork reports it and exits.
	if out := say("/bin/true; echo rc=$?"); out != "" {
		t.Fatalf("a fork beyond pids.max=2: shell said %q, want it to fail", out)
	}
	werr := sh.Wait() // also waits for stderr to be copied
	exited = true
	if werr == nil {
		t.Error("the shell that could not fork exited 0")
	}
	if !strings.Contains(strings.ToLower(stderr.String()), "fork") {
		t.Errorf("shell's stderr does not report the failed fork: %q", stderr.String())
	}
	t.Logf("fork beyond the limit, shell's stderr: %q", stderr.String())
	if err := g.SetLimits(Limits{Pids: 10}); err != nil {
		t.Fatal(err)
	}
	if lim, err := g.Limits(); err != nil || lim.Pids != 10 {
		t.Errorf("after raising: Limits() = %+v %v, want pids 10", lim, err)
	}
	if p, _ := g.Procs(); !slices.Equal(p, []int{atoi(t, sleepPid)}) {
		t.Errorf("procs %v after the shell exited, want only the sleep %s", p, sleepPid)
	}

	if err := g.Remove(); err == nil {
		t.Fatal("Remove succeeded with processes in the group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range g.Paths() {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Destroy (%v)", p, err)
		}
	}
	names, err := h.List()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, name) {
		t.Errorf("List still shows %s: %v", name, names)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil {
		t.Fatalf("not a pid: %q", s)
	}
	return n
}

// lockedBuffer is a strings.Builder safe for the writer goroutine of
// exec.Cmd and the test reading it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStartInGroup checks that Start starts a process inside the group:
// the process reads its own cgroups first thing and finds the group in
// every hierarchy, and no thread of the test process is left in the group.
func TestStartInGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	h := Host{Nest: true}
	if mode, err := h.Detect(); err != nil || mode == ModeNone {
		t.Skipf("no cgroups here (%v, %v)", mode, err)
	}
	g, err := h.Create(fmt.Sprintf("start-%d", os.Getpid()), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Destroy(context.Background())
	// Several times: the thread that forks is put back and reused.
	for range 3 {
		var out strings.Builder
		cmd := exec.Command("/bin/cat", "/proc/self/cgroup")
		cmd.Stdout = &out
		if err := g.Start(cmd); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		procs, err := g.Procs()
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(procs, os.Getpid()) {
			t.Errorf("a thread of the test process is in the group: procs %v", procs)
		}
		if len(procs) > 0 && !slices.Equal(procs, []int{pid}) {
			t.Errorf("group procs = %v, want only the started process %d (or none once it exited)", procs, pid)
		}
		in := 0
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) == 3 && strings.HasSuffix(parts[2], "/"+Dir+"/"+g.Name()) {
				in++
			}
		}
		if in != len(g.Paths()) {
			t.Errorf("the process found itself in the group in %d of %d hierarchies at its start:\n%s", in, len(g.Paths()), out.String())
		}
	}
	for _, f := range []string{"/proc/self/cgroup"} {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), g.Name()) {
			t.Errorf("the test process is in the group:\n%s", b)
		}
	}
}

// TestStartInV2Group runs Start's v2 path (clone3 with CLONE_INTO_CGROUP)
// where the machine has a cgroup2 mount: a group made there directly, with
// no controllers needed, since only membership is checked.
func TestStartInV2Group(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	mounts, err := Host{}.cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	var mount, root string
	for _, m := range mounts {
		if m.fstype == "cgroup2" {
			mount, root = m.point, m.root
		}
	}
	if mount == "" {
		t.Skip("no cgroup2 mount here")
	}
	dir := filepath.Join(mount, fmt.Sprintf("smolvm-start-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a cgroup2 group: %v", err)
	}
	defer os.Remove(dir)
	hy := &hierarchy{version: 2, mount: mount, root: root, base: mount}
	g := &Group{name: filepath.Base(dir), l: &layout{mode: ModeV2, hier: []*hierarchy{hy}}, dirs: []string{dir}}
	var out strings.Builder
	cmd := exec.Command("/bin/cat", "/proc/self/cgroup")
	cmd.Stdout = &out
	if err := g.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "0::/"+filepath.Base(dir)+"\n") {
		t.Errorf("the process did not start in %s:\n%s", dir, out.String())
	}
	if cmd.SysProcAttr != nil {
		t.Errorf("Start left its SysProcAttr on the command: %+v", cmd.SysProcAttr)
	}
}
