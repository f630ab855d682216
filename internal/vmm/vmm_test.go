package vmm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// TestDetectAccel covers each KVM situation as a table row, with the
// device, module directory and cpuinfo made by the test: the machine's own
// situation does not matter.
func TestDetectAccel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		device   bool
		modules  []string
		flags    string
		want     Accel
		contains []string
	}{
		{"no device, no modules", false, nil, "fpu vmx", AccelTCG, []string{"unusable", "TCG"}},
		{"no device, kvm_pvm loaded", false, []string{"kvm", "kvm_pvm"}, "fpu", AccelTCG, []string{"no ", "kvm_pvm", "TCG"}},
		{"device with kvm_pvm", true, []string{"kvm", "kvm_pvm"}, "fpu", AccelTCG, []string{"paravirtual", "kvm_pvm", "TCG"}},
		{"hardware intel", true, []string{"kvm", "kvm_intel"}, "fpu vmx", AccelKVM, []string{"hardware KVM"}},
		{"hardware amd", true, []string{"kvm", "kvm_amd"}, "fpu svm", AccelKVM, []string{"hardware KVM"}},
		{"device, no hw module, cpu has vmx", true, []string{"kvm"}, "fpu vmx", AccelTCG, []string{"no hardware KVM module", "TCG"}},
		{"device, cpu without vmx/svm", true, []string{"kvm"}, "fpu sse", AccelTCG, []string{"no hardware virtualisation", "TCG"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := fakeProbe(t, tc.device, tc.modules, tc.flags)
			r := p.Detect()
			if r.Accel != tc.want {
				t.Errorf("Detect = %+v, want %s", r, tc.want)
			}
			for _, c := range tc.contains {
				if !strings.Contains(r.Reason, c) {
					t.Errorf("reason %q lacks %q", r.Reason, c)
				}
			}
			if a, why := p.Resolve(AccelAuto); a != tc.want || why != r.Reason {
				t.Errorf("Resolve(auto) = %s %q", a, why)
			}
		})
	}
	p := fakeProbe(t, true, []string{"kvm_intel"}, "vmx")
	if a, why := p.Resolve(AccelTCG); a != AccelTCG || why != "requested" {
		t.Fatalf("explicit tcg: %s %s", a, why)
	}
}

// fakeProbe makes a host description: a device file (a regular file opens
// read-write like a working /dev/kvm), a module directory and a cpuinfo.
func fakeProbe(t *testing.T, device bool, modules []string, flags string) Probe {
	t.Helper()
	dir := t.TempDir()
	p := Probe{DevKVM: filepath.Join(dir, "kvm"), SysModule: filepath.Join(dir, "module"), CPUInfo: filepath.Join(dir, "cpuinfo")}
	if device {
		if err := os.WriteFile(p.DevKVM, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range modules {
		if err := os.MkdirAll(filepath.Join(p.SysModule, m), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	info := "processor\t: 0\ncpu MHz\t\t: 2100.500\nflags\t\t: " + flags + " constant_tsc\n\nprocessor\t: 1\nflags\t\t: other\n"
	if err := os.WriteFile(p.CPUInfo, []byte(info), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTSCkHz(t *testing.T) {
	p := fakeProbe(t, false, nil, "fpu")
	if got := p.TSCkHz(); got != 2100500 {
		t.Errorf("TSCkHz = %d, want 2100500", got)
	}
	if err := os.WriteFile(p.CPUInfo, []byte("cpu MHz\t: 2100.5\nflags\t: fpu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := p.TSCkHz(); got != 0 {
		t.Errorf("without constant_tsc: TSCkHz = %d, want 0", got)
	}
}
