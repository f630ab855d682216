package main

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestCleanupOrphanShares: cleanup kills a virtio-fs daemon whose VM has no
// VMM (here a stand-in process with a daemon's socket argument).
func TestCleanupOrphanShares(t *testing.T) {
	vmtest.Require(t)
	dir := t.TempDir()
	sock := "--socket-path=" + filepath.Join(dir, "vms", "ghost", "fs-smolvm0.sock")
	p := exec.Command("sh", "-c", "sleep 300", sock)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { p.Wait(); close(exited) }()
	defer p.Process.Kill()
	if r := cli(t, dir, "cleanup", "--dry-run"); !strings.Contains(r.stdout, "virtiofsd "+strconv.Itoa(p.Process.Pid)) {
		t.Fatalf("cleanup --dry-run: %+v", r)
	}
	if err := p.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatal("a dry run killed the process")
	}
	if r := cli(t, dir, "cleanup"); r.code != 0 || !strings.Contains(r.stdout, "(vm ghost)") {
		t.Fatalf("cleanup: %+v", r)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("orphan daemon still running")
	}
}
