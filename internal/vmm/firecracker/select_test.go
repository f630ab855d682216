package firecracker

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

func TestBinaryLookup(t *testing.T) {
	dir := t.TempDir()
	onPath := fake(t, dir, "firecracker", "firecracker", nil)
	other := t.TempDir()
	viaEnv := fake(t, other, "fc-from-env", "firecracker", nil)

	t.Setenv("PATH", dir)
	t.Setenv(EnvBinary, "")
	if got, err := (&Backend{}).binary(); err != nil || got != onPath {
		t.Errorf("from PATH: %q, %v", got, err)
	}
	t.Setenv(EnvBinary, viaEnv)
	if got, err := (&Backend{}).binary(); err != nil || got != viaEnv {
		t.Errorf("from $%s: %q, %v", EnvBinary, got, err)
	}
	if got, err := (&Backend{Binary: onPath}).binary(); err != nil || got != onPath {
		t.Errorf("from Binary: %q, %v", got, err)
	}

	for _, tc := range []struct {
		name    string
		binary  string
		env     string
		path    string
		mention []string
	}{
		{"flag", "/nonexistent/firecracker", viaEnv, dir, []string{"/nonexistent/firecracker", "--firecracker"}},
		{"env", "", "/nonexistent/fc", dir, []string{"/nonexistent/fc", "$" + EnvBinary}},
		{"path", "", "", other, []string{"PATH", other, "$" + EnvBinary, "--firecracker"}},
	} {
		t.Setenv(EnvBinary, tc.env)
		t.Setenv("PATH", tc.path)
		_, err := (&Backend{Binary: tc.binary}).binary()
		if !errors.Is(err, vmm.ErrUnavailable) {
			t.Errorf("%s: %v, want ErrUnavailable", tc.name, err)
			continue
		}
		for _, m := range tc.mention {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: %q does not mention %q", tc.name, err, m)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	b := &Backend{Binary: fake(t, t.TempDir(), "firecracker", "firecracker", nil)}
	v, err := b.Version(testCtx(t))
	if err != nil || v != "Firecracker v1.12.0" {
		t.Errorf("Version = %q, %v", v, err)
	}
}

// TestUsable uses this host's detection as it is: where it finds no
// hardware KVM (here: a paravirtual kvm_pvm), the backend is unusable and
// says why.
func TestUsable(t *testing.T) {
	b := &Backend{Binary: fake(t, t.TempDir(), "firecracker", "firecracker", nil)}
	ok, reason := b.Usable()
	r := vmm.DetectAccel()
	t.Logf("DetectAccel: %s (%s); Usable: %v, %s", r.Accel, r.Reason, ok, reason)
	if reason == "" {
		t.Error("Usable gave no reason")
	}
	if r.Accel == vmm.AccelTCG {
		if ok {
			t.Error("Usable without hardware KVM")
		}
		if !strings.Contains(reason, "hardware KVM") || !strings.Contains(reason, r.Reason) {
			t.Errorf("reason %q does not explain the missing KVM (%s)", reason, r.Reason)
		}
		if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil && !strings.Contains(reason, "kvm_pvm") {
			t.Errorf("reason %q does not name the paravirtual KVM", reason)
		}
	} else if !ok {
		t.Errorf("hardware KVM and a binary, yet unusable: %s", reason)
	}

	t.Setenv("PATH", t.TempDir())
	t.Setenv(EnvBinary, "")
	if ok, reason := (&Backend{}).Usable(); ok || !strings.Contains(reason, "firecracker not found") {
		t.Errorf("without a binary: %v, %q", ok, reason)
	}
}

// TestNeedsKVM: a VM whose acceleration resolves to TCG is refused before
// firecracker runs.
func TestNeedsKVM(t *testing.T) {
	accels := []vmm.Accel{vmm.AccelTCG}
	if r := vmm.DetectAccel(); r.Accel == vmm.AccelTCG {
		accels = append(accels, vmm.AccelAuto)
	}
	for _, a := range accels {
		e := newEnv(t)
		b := e.backend(t, "firecracker", nil)
		s := e.spec
		s.Accel = a
		_, err := b.Launch(testCtx(t), s)
		if !errors.Is(err, vmm.ErrUnavailable) || !strings.Contains(err.Error(), "needs hardware KVM") {
			t.Errorf("accel %s: Launch = %v, want ErrUnavailable explaining KVM", a, err)
		}
		if _, err := b.Start(testCtx(t), s); !errors.Is(err, vmm.ErrUnavailable) {
			t.Errorf("accel %s: Start = %v, want ErrUnavailable", a, err)
		}
		if _, err := os.Stat(e.args); err == nil {
			t.Errorf("accel %s: firecracker ran", a)
		}
	}
}

func TestFCID(t *testing.T) {
	for in, want := range map[string]string{
		"vm-1":                  "vm-1",
		"my_vm.2":               "my-vm-2",
		"":                      "smolvm",
		strings.Repeat("a", 70): strings.Repeat("a", 64),
	} {
		if got := fcID(in); got != want {
			t.Errorf("fcID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckSpec(t *testing.T) {
	base := newEnv(t).spec
	for _, tc := range []struct {
		name string
		mod  func(*vmm.Spec)
		want string
	}{
		{"ok", func(*vmm.Spec) {}, ""},
		{"no dir", func(s *vmm.Spec) { s.Dir = "" }, "runtime directory"},
		{"no kernel", func(s *vmm.Spec) { s.Kernel = "" }, "kernel"},
		{"too many vcpus", func(s *vmm.Spec) { s.VCPUs = 33 }, "vCPUs"},
		{"no memory", func(s *vmm.Spec) { s.MemoryMiB = 0 }, "memory"},
		{"reserved cid", func(s *vmm.Spec) { s.VsockCID = 2 }, "CID"},
		{"long dir", func(s *vmm.Spec) { s.Dir = "/" + strings.Repeat("d", 100) }, "too long"},
	} {
		s := base
		tc.mod(&s)
		err := checkSpec(s)
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
