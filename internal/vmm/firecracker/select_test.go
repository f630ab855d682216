package firecracker

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
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

// TestUsable covers each KVM situation as a table row: only hardware KVM
// with a binary makes the backend usable, and the reason says why not.
func TestUsable(t *testing.T) {
	bin := fake(t, t.TempDir(), "firecracker", "firecracker", nil)
	for _, tc := range []struct {
		hw       string
		ok       bool
		contains []string
	}{
		{"intel", true, []string{"hardware KVM"}},
		{"pvm", false, []string{"needs hardware KVM", "kvm_pvm", "paravirtual"}},
		{"pvm-nodev", false, []string{"needs hardware KVM", "kvm_pvm", "no "}},
		{"none", false, []string{"needs hardware KVM", "unusable"}},
	} {
		t.Run(tc.hw, func(t *testing.T) {
			b := &Backend{Binary: bin, Probe: vmtest.KVMProbe(t, tc.hw)}
			ok, reason := b.Usable(testCtx(t))
			if ok != tc.ok {
				t.Errorf("Usable = %v (%s), want %v", ok, reason, tc.ok)
			}
			for _, c := range tc.contains {
				if !strings.Contains(reason, c) {
					t.Errorf("reason %q lacks %q", reason, c)
				}
			}
		})
	}
	t.Setenv("PATH", t.TempDir())
	t.Setenv(EnvBinary, "")
	if ok, reason := (&Backend{Probe: vmtest.KVMProbe(t, "intel")}).Usable(testCtx(t)); ok || !strings.Contains(reason, "firecracker not found") {
		t.Errorf("without a binary: %v, %q", ok, reason)
	}
}

// TestNeedsKVM: a VM whose acceleration resolves to TCG is refused before
// firecracker runs, whether TCG was asked for or auto found no KVM.
func TestNeedsKVM(t *testing.T) {
	for _, tc := range []struct {
		accel vmm.Accel
		hw    string
	}{{vmm.AccelTCG, "intel"}, {vmm.AccelAuto, "pvm"}, {vmm.AccelAuto, "pvm-nodev"}, {vmm.AccelAuto, "none"}} {
		e := newEnv(t)
		b := e.backend(t, "firecracker", nil)
		b.Probe = vmtest.KVMProbe(t, tc.hw)
		s := e.spec
		s.Accel = tc.accel
		_, err := b.Launch(testCtx(t), s)
		if !errors.Is(err, vmm.ErrUnavailable) || !strings.Contains(err.Error(), "needs hardware KVM") {
			t.Errorf("accel %s on %s: Launch = %v, want ErrUnavailable explaining KVM", tc.accel, tc.hw, err)
		}
		if _, err := b.Start(testCtx(t), s); !errors.Is(err, vmm.ErrUnavailable) {
			t.Errorf("accel %s on %s: Start = %v, want ErrUnavailable", tc.accel, tc.hw, err)
		}
		if _, err := os.Stat(e.args); err == nil {
			t.Errorf("accel %s on %s: firecracker ran", tc.accel, tc.hw)
		}
	}
}

func TestFCID(t *testing.T) {
	valid := regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)
	for in, want := range map[string]string{
		"vm-1":                  "vm-1",
		"a-b":                   "a-b",
		strings.Repeat("a", 64): strings.Repeat("a", 64),
	} {
		if got := fcID(in); got != want {
			t.Errorf("fcID(%q) = %q, want %q", in, got, want)
		}
	}
	// Ids that must change stay distinct from each other and from every
	// id kept as is, and are valid jail ids.
	ins := []string{"a_b", "a-b", "a__b", "a-_b", "my_vm.2", "my-vm-2", "", strings.Repeat("a", 70), strings.Repeat("a", 71),
		strings.Repeat("a", 64), strings.Repeat("a", 63) + "_", "A-b", "a-b-X00000000"}
	seen := map[string]string{}
	for _, in := range ins {
		got := fcID(in)
		if !valid.MatchString(got) {
			t.Errorf("fcID(%q) = %q: not a valid jail id", in, got)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("fcID(%q) = fcID(%q) = %q", in, prev, got)
		}
		seen[got] = in
		if fcID(in) != got {
			t.Errorf("fcID(%q) is not stable", in)
		}
	}
	if got := fcID("a_b"); !strings.HasPrefix(got, "a-b-X") || len(got) != len("a-b-X")+8 {
		t.Errorf("fcID(a_b) = %q, want a-b-X + 8 hex digits", got)
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
