package vmm

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestAliveAndStartTime(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	st, err := StartTime(pid)
	if err != nil || st == 0 {
		t.Fatalf("StartTime = %d, %v", st, err)
	}
	if !Alive(pid, st) || !Alive(pid, 0) {
		t.Fatal("a live child is not alive")
	}
	if Alive(pid, st+1) {
		t.Fatal("a different start time (a reused PID) counts as alive")
	}
	if err := KillProcess(pid, st+1); err != nil || !Alive(pid, st) {
		t.Fatal("KillProcess killed a process whose start time differs")
	}
	if err := KillProcess(pid, st); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if Alive(pid, st) {
		t.Fatal("a killed child is alive")
	}
	if Alive(0, 0) || Alive(-1, 0) {
		t.Fatal("pid <= 0 is alive")
	}
}

func TestZombieIsNotAlive(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Not waited for: it becomes a zombie once it exits.
	for i := 0; i < 200 && Alive(pid, 0); i++ {
		exec.Command("sleep", "0.01").Run()
	}
	if Alive(pid, 0) {
		t.Fatal("a zombie counts as alive")
	}
	cmd.Wait()
}

func TestDetectAccel(t *testing.T) {
	old := sysModule
	defer func() { sysModule = old }()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		if r := DetectAccel(); r.Accel != AccelTCG {
			t.Fatalf("no /dev/kvm: %+v", r)
		}
		t.Skip("no /dev/kvm for the module cases")
	}
	for _, tc := range []struct {
		modules []string
		want    Accel
	}{
		{[]string{"kvm", "kvm_pvm"}, AccelTCG},
		{[]string{"kvm", "kvm_intel"}, AccelKVM},
		{[]string{"kvm", "kvm_amd"}, AccelKVM},
		{[]string{"kvm"}, AccelTCG},
	} {
		sysModule = t.TempDir()
		for _, m := range tc.modules {
			os.Mkdir(filepath.Join(sysModule, m), 0o755)
		}
		if r := DetectAccel(); r.Accel != tc.want || r.Reason == "" {
			t.Errorf("modules %v: %+v, want %s", tc.modules, r, tc.want)
		}
	}
	if a, why := AccelTCG.Resolve(); a != AccelTCG || why != "requested" {
		t.Fatalf("explicit tcg: %s %s", a, why)
	}
}
