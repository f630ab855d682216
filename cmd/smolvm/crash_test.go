package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// killAfter runs the CLI and SIGKILLs it after d (if still running).
func killAfter(t *testing.T, dir string, d time.Duration, argv ...string) (killed bool) {
	t.Helper()
	bin := filepath.Join(vmtest.Binaries(t), "smolvm")
	cmd := exec.Command(bin, append([]string{"--data-dir", dir}, argv...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		return false
	case <-time.After(d):
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return true
	}
}

// checkConsistent asserts the host holds nothing of ours that the state
// does not account for: every VMM process belongs to a VM recorded as
// running with that PID, every TAP to a running VM, every VM directory to
// a recorded VM.
func checkConsistent(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vms, err := h.List(ctx, smolvm.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	running, known, taps := map[int]string{}, map[string]bool{}, map[string]bool{}
	for _, v := range vms {
		known[v.VMID] = true
		if v.Status == smolvm.StateRunning {
			running[v.PID] = v.VMID
			if v.Network != nil {
				taps[v.Network.TapDevice()] = true
			}
		}
	}
	for _, pid := range vmtest.ProcessesOf(filepath.Join(dir, "vms")) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmdline), "qemu") {
			continue // a smolvm CLI of this test, not a VMM
		}
		if _, ok := running[pid]; !ok {
			t.Errorf("VMM process %d is not accounted for by any running VM", pid)
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, "smol") && !taps[n] {
			t.Errorf("TAP %s belongs to no running VM", n)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "vms"))
	for _, e := range ents {
		if !known[e.Name()] {
			t.Errorf("directory vms/%s belongs to no VM", e.Name())
		}
	}
}

// TestCrashSafety kills the CLI with SIGKILL at random points of create,
// start, stop and delete; after each kill `smolvm cleanup` must bring the
// host back to a consistent state, and at the end nothing of ours remains.
func TestCrashSafety(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	if testing.Short() {
		t.Skip("boots many VMs")
	}
	dir := t.TempDir()
	t.Cleanup(func() { cli(t, dir, "cleanup", "--all") })
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (set SMOLVM_CRASH_SEED to replay)", seed)
	if s := os.Getenv("SMOLVM_CRASH_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	runs := 30
	small := []string{"--image", "minimal", "--memory", "192", "--vcpus", "1"}
	kills := 0
	for i := 0; i < runs; i++ {
		id := fmt.Sprintf("crash%d", i%4)
		var argv []string
		var window time.Duration
		r := cli(t, dir, "info", id, "--json")
		var inf smolvm.VMInfo
		exists := r.code == 0 && json.Unmarshal([]byte(r.stdout), &inf) == nil
		switch {
		case !exists:
			argv, window = append([]string{"create", "--name", id, "--start"}, small...), 5*time.Second
		case inf.Status == smolvm.StateRunning && rng.IntN(2) == 0:
			argv, window = []string{"stop", id}, 3*time.Second
		case inf.Status == smolvm.StateRunning || rng.IntN(2) == 0:
			argv, window = []string{"delete", id}, 3*time.Second
		default:
			argv, window = []string{"start", id}, 5*time.Second
		}
		d := time.Duration(rng.Int64N(int64(window)))
		killed := killAfter(t, dir, d, argv...)
		if killed {
			kills++
		}
		r = cli(t, dir, "cleanup")
		if r.code != 0 {
			t.Fatalf("run %d (%v killed=%v after %v): cleanup: %+v", i, argv, killed, d, r)
		}
		checkConsistent(t, dir)
		if t.Failed() {
			t.Fatalf("run %d: %v killed=%v after %v; cleanup removed: %s", i, argv, killed, d, r.stdout)
		}
		// Whatever survived must still work: a running VM answers.
		if r := cli(t, dir, "list", "--status", "running", "--json"); r.code == 0 {
			var vms []smolvm.VMInfo
			json.Unmarshal([]byte(r.stdout), &vms)
			for _, v := range vms {
				// A VM whose start was cut short may still be booting, and one
				// whose stop was cut short may be powering off: wait for either
				// to settle. It must end up answering or cleanly stopped.
				deadline := time.Now().Add(60 * time.Second)
				for {
					if e := cli(t, dir, "exec", v.VMID, "--", "echo ok"); e.stdout == "ok\n" {
						break
					}
					var now smolvm.VMInfo
					json.Unmarshal([]byte(cli(t, dir, "info", v.VMID, "--json").stdout), &now)
					if now.Status == smolvm.StateStopped {
						break
					}
					if now.Status == smolvm.StateError || time.Now().After(deadline) {
						t.Fatalf("run %d: VM %s neither answers nor stopped: %+v", i, v.VMID, now)
					}
					time.Sleep(time.Second)
				}
			}
		}
	}
	t.Logf("%d runs, %d killed mid-command", runs, kills)
	if r := cli(t, dir, "cleanup", "--all"); r.code != 0 {
		t.Fatalf("cleanup --all: %+v", r)
	}
	if pids := vmtest.ProcessesOf(filepath.Join(dir, "vms")); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "smol") {
			t.Errorf("TAP left: %s", l.Attrs().Name)
		}
	}
	if out, _ := exec.Command("nft", "list", "ruleset").Output(); strings.Contains(string(out), "smolvm") {
		t.Errorf("nft rules left:\n%s", out)
	}
	for _, sub := range []string{"vms", "logs"} {
		if ents, _ := os.ReadDir(filepath.Join(dir, sub)); len(ents) > 0 {
			t.Errorf("%s left: %v", sub, ents)
		}
	}
	if r := cli(t, dir, "list", "--all", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("VMs left: %s", r.stdout)
	}
}

// TestInterruptUndoes sends SIGINT and SIGTERM to CLI commands in the middle
// of their work: what the command had started is undone.
func TestInterruptUndoes(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	t.Cleanup(func() { cli(t, dir, "cleanup", "--all") })
	bin := filepath.Join(vmtest.Binaries(t), "smolvm")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		for _, argv := range [][]string{
			{"create", "--name", "intr", "--start", "--image", "minimal", "--memory", "192"},
			{"run", "--image", "minimal", "--memory", "192", "--", "sleep 600"},
		} {
			cmd := exec.Command(bin, append([]string{"--data-dir", dir}, argv...)...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Mid-boot for create, mid-command for run.
			wait := 1500 * time.Millisecond
			if argv[0] == "run" {
				wait = 8 * time.Second
			}
			time.Sleep(wait)
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			if err == nil && argv[0] == "create" {
				// A fast host finished the boot before the signal came.
				t.Logf("%v finished before %v arrived", argv, sig)
				cli(t, dir, "delete", "--force", "intr")
			} else if err == nil {
				t.Fatalf("%v interrupted by %v exited 0", argv, sig)
			}
			if r := cli(t, dir, "list", "--all", "--json"); strings.TrimSpace(r.stdout) != "[]" {
				t.Fatalf("%v interrupted by %v left VMs: %s\nits stderr: %s", argv, sig, r.stdout, stderr.String())
			}
			if pids := vmtest.ProcessesOf(filepath.Join(dir, "vms")); len(pids) > 0 {
				t.Fatalf("%v interrupted by %v left processes %v", argv, sig, pids)
			}
			links, _ := netlink.LinkList()
			for _, l := range links {
				if strings.HasPrefix(l.Attrs().Name, "smol") {
					t.Fatalf("%v interrupted by %v left TAP %s", argv, sig, l.Attrs().Name)
				}
			}
		}
	}
}
