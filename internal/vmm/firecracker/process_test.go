package firecracker

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// TestSocketWait: the fake creates its API socket 300ms late; Launch waits.
func TestSocketWait(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", map[string]string{envDelay: "300ms"})
	start := time.Now()
	inst, err := b.Launch(testCtx(t), e.spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("Launch returned after %v, before the socket existed", d)
	}
}

// TestSocketWaitBoundedByCtx: a socket that never comes in time fails
// Launch with the context's error, and the process is killed.
func TestSocketWaitBoundedByCtx(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", map[string]string{envDelay: "10s"})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := b.Launch(ctx, e.spec)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Launch = %v, want deadline exceeded", err)
	}
	// The fake wrote its argv first; its process must be gone now.
	waitGone(t, e)
}

// waitGone fails unless no process runs the fake's recorded command line
// within a second: it scans /proc for the runtime dir's API socket.
func waitGone(t *testing.T, e *env) {
	t.Helper()
	sock := controlPath(e.spec.Dir)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if !procWithArg(sock) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("a process with argument %s still runs", sock)
}

// procWithArg reports whether a live process has arg on its command line.
func procWithArg(arg string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				stat, _ := os.ReadFile("/proc/" + d.Name() + "/stat")
				if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z' {
					return true
				}
			}
		}
	}
	return false
}

// TestEarlyExit: a firecracker that exits at once fails Launch with its
// standard error.
func TestEarlyExit(t *testing.T) {
	e := newEnv(t)
	const msg = "Error: cannot open /dev/kvm: No such file or directory"
	b := e.backend(t, "fail", map[string]string{envMsg: msg})
	_, err := b.Launch(testCtx(t), e.spec)
	if err == nil || !strings.Contains(err.Error(), msg) {
		t.Fatalf("Launch = %v, want it to carry %q", err, msg)
	}
	if !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Launch = %v, want ErrNotRunning", err)
	}
}

// TestKill: Kill ends the process, WaitExit returns, and the backend then
// reports it gone.
func TestKill(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	ctx := testCtx(t)
	inst, err := b.Launch(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Kill(inst); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := vmm.WaitExit(wctx, inst); err != nil {
		t.Fatalf("WaitExit after Kill: %v", err)
	}
	if st, err := b.Status(ctx, inst); err != nil || st != vmm.StateGone {
		t.Errorf("Status = %q, %v; want gone", st, err)
	}
	if err := b.Pause(ctx, inst); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Pause of a dead VM = %v, want ErrNotRunning", err)
	}
	if err := b.Stop(ctx, inst); err != nil {
		t.Errorf("Stop of a dead VM = %v, want nil", err)
	}
	if err := b.WaitReady(ctx, inst); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("WaitReady of a dead VM = %v, want ErrNotRunning", err)
	}
}

// TestStop: SendCtrlAltDel makes the (fake) firecracker exit and Stop
// returns once it has.
func TestStop(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	ctx := testCtx(t)
	inst, err := b.Launch(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	if err := b.Stop(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if vmm.Alive(inst.PID, inst.PIDStart) {
		t.Error("process alive after Stop")
	}
}

// TestOutlivesLaunchCtx: the process survives the end of Launch's context
// and runs in a session of its own.
func TestOutlivesLaunchCtx(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	ctx, cancel := context.WithCancel(context.Background())
	inst, err := b.Launch(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	cancel()
	time.Sleep(300 * time.Millisecond)
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		t.Fatal("process died with Launch's context")
	}
	if st, err := b.Status(testCtx(t), inst); err != nil || st != vmm.StateRunning {
		t.Errorf("Status = %q, %v", st, err)
	}
	if sid, err := unix.Getsid(inst.PID); err != nil || sid != inst.PID {
		t.Errorf("session of %d = %d, %v; want its own", inst.PID, sid, err)
	}
}

// TestStatusUnanswered: a live process whose API does not answer is an
// error, not a state.
func TestStatusUnanswered(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	ctx := testCtx(t)
	inst, err := b.Launch(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	inst.Control += ".missing"
	if _, err := b.Status(ctx, inst); err == nil {
		t.Error("Status over a missing socket succeeded")
	}
}
