package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestHostileGuestFloods attacks the host from inside one real VM (TCG,
// private namespace), booted from a data directory whose path tries to
// inject QEMU options through a comma:
//   - a command printing 1 GiB through the SDK's Run, in a separate host
//     process: its peak RSS stays under 100 MiB and Truncated is set;
//   - 64 MiB written to /dev/console: the console log stays under its cap
//     (8 MiB by default) and the newest line is in it;
//   - a guest file with mode 4777 downloaded: mode neutralised to 0755.
//
// Under TCG on 2 cores this takes 3 minutes idle, 15 under heavy load
// (the emulated UART moves 150-400 KB/s); -short skips it.
func TestHostileGuestFloods(t *testing.T) {
	if testing.Short() {
		t.Skip("floods take minutes under TCG")
	}
	vmtest.Require(t)
	vmtest.Setup(t)
	ctx := context.Background()
	base := t.TempDir()
	dir := filepath.Join(base, "data,readonly=on,x")
	hostDir := filepath.Join(base, "host")
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: dir, HostDir: hostDir})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	t.Cleanup(func() {
		if t.Failed() {
			h.Cleanup(context.Background(), smolvm.CleanupOptions{All: true})
		}
	})
	vm, err := h.Create(ctx, smolvm.VMConfig{VMID: "hostile", Image: smolvm.ImageMinimal, MemSizeMiB: 256, VCPUCount: 2, NoNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer vm.Delete(context.Background())

	// The comma in the data dir cannot reach QEMU as an option separator:
	// confined QEMU gets its files as descriptors (no path of the data dir
	// on its command line at all); where paths are used (qemu.Args), commas
	// are doubled (TestPathsWithCommasAreQuoted).
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(vm.Info().PID) + "/cmdline")
	if len(cmdline) == 0 || bytes.Contains(cmdline, []byte("data,readonly")) {
		t.Errorf("QEMU command line holds the data dir unquoted: %q", cmdline)
	}

	// A file claiming mode 4777 comes out 0755.
	if res, err := vm.Run(ctx, "echo x > /tmp/suid && chmod 4777 /tmp/suid && stat -c %a /tmp/suid"); err != nil || res.Output() != "4777" {
		t.Fatalf("make the setuid file: %+v, %v", res, err)
	}
	local := filepath.Join(base, "suid")
	if err := vm.DownloadFile(ctx, "/tmp/suid", local); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(local); err != nil || fi.Mode() != 0o755 {
		t.Errorf("downloaded mode %v (%v), want 0755 without setuid", fi.Mode(), err)
	}
	// Small cap per call.
	if res, err := vm.Run(ctx, "head -c 5000 /dev/zero", smolvm.RunMaxOutputBytes(1000)); err != nil || !res.Truncated || len(res.Stdout) != 1000 {
		t.Fatalf("RunMaxOutputBytes(1000): %d bytes, truncated %v, %v", len(res.Stdout), res.Truncated, err)
	}

	// The console flood runs in the background in the guest while the
	// output flood runs.
	const consoleFlood = 64 << 20
	flood := "setsid sh -c 'yes console-flood-line-0123456789-abcdefghijklmnopqrstuvwxyz | head -c " + strconv.Itoa(consoleFlood) +
		" > /dev/console; echo; echo NEWEST-LINE-OF-THE-FLOOD > /dev/console; touch /tmp/flood-done' </dev/null >/dev/null 2>&1 &"
	if _, err := vm.Run(ctx, flood); err != nil {
		t.Fatal(err)
	}
	vm.Release() // virtio-serial serves one host process at a time

	// 1 GiB through Run, in a separate host process.
	bin := filepath.Join(base, "floodrun")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/floodrun").CombinedOutput(); err != nil {
		t.Fatalf("build floodrun: %v: %s", err, out)
	}
	child := exec.Command(bin, "-data-dir", dir, "-host-dir", hostDir, "-vm", "hostile", "-bytes", strconv.Itoa(1<<30))
	var out bytes.Buffer
	child.Stdout, child.Stderr = &out, os.Stderr
	if err := child.Run(); err != nil {
		t.Fatalf("floodrun: %v: %s", err, out.String())
	}
	var rep struct {
		ExitCode  int     `json:"exit_code"`
		StdoutLen int     `json:"stdout_len"`
		Stderr    string  `json:"stderr"`
		Truncated bool    `json:"truncated"`
		Seconds   float64 `json:"seconds"`
		Error     string  `json:"error"`
		VmHWMKiB  int64   `json:"vm_hwm_kib"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("floodrun output %q: %v", out.String(), err)
	}
	ru := child.ProcessState.SysUsage().(*syscall.Rusage)
	// The child's own VmHWM: rusage's maxrss of a child counts the
	// (race-instrumented, larger) test process it was forked from.
	rssMiB := float64(rep.VmHWMKiB) / 1024
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	t.Logf("1 GiB through Run: %.1f s, host process peak RSS %.1f MiB, CPU %v (user %v, sys %v), kept %d bytes, truncated %v",
		rep.Seconds, rssMiB, cpu.Round(time.Millisecond), time.Duration(ru.Utime.Nano()).Round(time.Millisecond), time.Duration(ru.Stime.Nano()).Round(time.Millisecond), rep.StdoutLen, rep.Truncated)
	if rep.Error != "" || rep.ExitCode != 0 || rep.Stderr != "done\n" {
		t.Fatalf("floodrun: %+v", rep)
	}
	if !rep.Truncated || rep.StdoutLen != smolvm.DefaultMaxOutputBytes {
		t.Errorf("kept %d bytes, truncated %v; want %d and truncated", rep.StdoutLen, rep.Truncated, smolvm.DefaultMaxOutputBytes)
	}
	if rep.VmHWMKiB <= 0 || rssMiB >= 100 {
		t.Errorf("host process peak RSS %.1f MiB, want < 100", rssMiB)
	}

	// Wait for the console flood to finish.
	deadline := time.Now().Add(20 * time.Minute)
	for {
		res, err := vm.Run(ctx, "test -e /tmp/flood-done")
		if err == nil && res.OK() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console flood did not finish: %+v, %v", res, err)
		}
		vm.Release()
		time.Sleep(5 * time.Second)
	}
	log := vm.ConsoleLog()
	var total int64
	for _, p := range []string{log, log + ".1"} {
		if fi, err := os.Stat(p); err == nil {
			total += fi.Size()
		}
	}
	t.Logf("console log after a %d MiB flood: %d bytes on disk (cap %d)", consoleFlood>>20, total, smolvm.DefaultConsoleLogMaxBytes)
	if total > smolvm.DefaultConsoleLogMaxBytes || total < smolvm.DefaultConsoleLogMaxBytes/4 {
		t.Errorf("console log holds %d bytes; cap %d", total, smolvm.DefaultConsoleLogMaxBytes)
	}
	r := cli(t, dir, "logs", "--tail", "3", "hostile")
	if r.code != 0 || !strings.Contains(r.stdout, "NEWEST-LINE-OF-THE-FLOOD") {
		t.Fatalf("logs --tail 3: %+v", r)
	}
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "logs")); len(ents) != 0 {
		t.Errorf("logs left: %v", ents)
	}
}
