package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestDoctor runs doctor for each KVM situation (a table row each, the
// machine's own situation does not matter) and checks its findings.
func TestDoctor(t *testing.T) {
	for _, tc := range []struct {
		hw     string
		accel  string
		kvm    CheckStatus
		detail []string
	}{
		{"intel", "kvm", CheckOK, []string{"hardware KVM"}},
		{"pvm", "tcg", CheckWarn, []string{"paravirtual", "kvm_pvm", "TCG"}},
		{"pvm-nodev", "tcg", CheckWarn, []string{"kvm_pvm", "TCG"}},
		{"none", "tcg", CheckWarn, []string{"unusable", "TCG"}},
	} {
		t.Run(tc.hw, func(t *testing.T) {
			h := testHost(t, t.TempDir(), func(o *HostOptions) { o.probe = vmtest.KVMProbe(t, tc.hw) })
			checks := h.Doctor(context.Background(), DoctorOptions{})
			byName := map[string]Check{}
			for _, c := range checks {
				if c.Name == "" || c.Detail == "" || (c.Status != CheckOK && c.Status != CheckWarn && c.Status != CheckFail) {
					t.Fatalf("malformed check %+v", c)
				}
				if c.Status != CheckOK && c.Fix == "" {
					t.Errorf("check %s is %s without a fix hint", c.Name, c.Status)
				}
				byName[c.Name] = c
			}
			for _, n := range []string{"kvm", "acceleration", "qemu", "firecracker", "network", "nftables", "ip_forward", "data dir", "image minimal", "image default", "agent", "vmm user", "seccomp", "cgroups"} {
				if _, ok := byName[n]; !ok {
					t.Errorf("no %q check", n)
				}
			}
			if !strings.Contains(byName["acceleration"].Detail, tc.accel) {
				t.Errorf("acceleration check %q does not say %s", byName["acceleration"].Detail, tc.accel)
			}
			k := byName["kvm"]
			if k.Status != tc.kvm {
				t.Errorf("kvm check %+v, want %s", k, tc.kvm)
			}
			for _, d := range tc.detail {
				if !strings.Contains(k.Detail, d) {
					t.Errorf("kvm detail %q lacks %q", k.Detail, d)
				}
			}
			if fc := byName["firecracker"]; tc.accel == "tcg" && (fc.Status == CheckOK || fc.Status == CheckFail) {
				t.Errorf("firecracker without hardware KVM must be a warning when not asked for: %+v", fc)
			}
			if dd := byName["data dir"]; dd.Status == CheckFail {
				t.Errorf("a fresh temp data dir fails: %+v", dd)
			}
			b, _ := json.Marshal(checks[0])
			for _, k := range []string{`"name"`, `"status"`, `"detail"`} {
				if !strings.Contains(string(b), k) {
					t.Fatalf("json %s lacks %s", b, k)
				}
			}
		})
	}
	// Asked for explicitly, a backend that cannot run is a failure.
	h := testHost(t, t.TempDir(), func(o *HostOptions) { o.probe = vmtest.KVMProbe(t, "pvm") })
	for _, c := range h.Doctor(context.Background(), DoctorOptions{Backend: BackendFirecracker}) {
		if c.Name == "firecracker" && c.Status != CheckFail {
			t.Errorf("firecracker asked for on a kvm_pvm host: %+v", c)
		}
	}
}

// TestCleanupOrphans leaves behind what a crash would (a VMM process, files,
// a TAP and rules of a VM whose record is gone; an interrupted create) and
// checks that Cleanup removes exactly that, and --dry-run nothing.
func TestCleanupOrphans(t *testing.T) {
	h, dir := vmEnv(t)
	ctx := context.Background()
	keeper, err := h.New(ctx, minimalVM("keeper"))
	if err != nil {
		t.Fatal(err)
	}
	defer keeper.Close()
	lost, err := h.New(ctx, minimalVM("lost"))
	if err != nil {
		t.Fatal(err)
	}
	lostPID, lostTAP := lost.Info().PID, lost.Info().Network.TapDevice()
	lost.dropClient()
	lost.Release()
	st, err := store.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.DeleteVM(ctx, "lost"); err != nil { // the record is gone, the rest is not
		t.Fatal(err)
	}
	// An interrupted create: a record never completed, with a partial disk.
	rec, _ := json.Marshal(record{Config: minimalVM("half").WithDefaults()})
	if _, err := st.CreateVM(ctx, store.VM{ID: "half", Status: string(StateCreated), Config: rec, Op: store.OpCreating}, store.Alloc{Lease: true}); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "vms", "half"), 0o700)
	os.WriteFile(filepath.Join(dir, "vms", "half", "disk.ext4"), []byte("partial"), 0o600)
	if err := keeper.Start(ctx); err == nil {
		t.Fatal("starting a running VM succeeded")
	}
	half, _ := h.Get(ctx, "half")
	if err := half.Start(ctx); err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("starting an interrupted create: %v", err)
	}
	half.Release()

	rep, err := h.Cleanup(ctx, CleanupOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(rep.Removed, "\n")
	for _, want := range []string{"vm half", "(vm lost)", filepath.Join(dir, "vms", "lost"), filepath.Join(dir, "logs", "lost.log"), "link " + lostTAP} {
		if !strings.Contains(joined, want) {
			t.Errorf("dry run does not list %q:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "keeper") {
		t.Errorf("dry run would touch the healthy VM:\n%s", joined)
	}
	if !vmm.Alive(lostPID, 0) {
		t.Fatal("dry run killed the orphan")
	}

	rep, err = h.Cleanup(ctx, CleanupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cleanup removed: %v", rep.Removed)
	waitFor(t, func() bool { return !vmm.Alive(lostPID, 0) })
	for _, p := range []string{filepath.Join(dir, "vms", "lost"), filepath.Join(dir, "logs", "lost.log"), filepath.Join(dir, "vms", "half")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
	if links := ourLinks(t); slices.Contains(links, lostTAP) || len(links) != 1 {
		t.Errorf("links after cleanup: %v (keeper's only expected)", links)
	}
	if strings.Contains(nftRuleset(t), "vm=lost") {
		t.Error("rules of the lost VM left")
	}
	if _, err := h.Get(ctx, "half"); err == nil {
		t.Error("the interrupted create survived")
	}
	if res, err := keeper.Run(ctx, "echo alive"); err != nil || res.Output() != "alive" {
		t.Fatalf("the healthy VM was hurt: %+v %v", res, err)
	}
	// Nothing more to do the second time.
	if rep, _ := h.Cleanup(ctx, CleanupOptions{}); len(rep.Removed) != 0 {
		t.Fatalf("second cleanup removed %v", rep.Removed)
	}
	// --all removes every VM, and then no TAP or rule of ours is left.
	if _, err := h.Cleanup(ctx, CleanupOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	if links := ourLinks(t); len(links) != 0 {
		t.Errorf("links after cleanup --all: %v", links)
	}
	if strings.Contains(nftRuleset(t), "smolvm") {
		t.Errorf("tables left after cleanup --all:\n%s", nftRuleset(t))
	}
	keeper.Release()
}

// TestBackendChoice: an explicit backend that cannot run here is refused
// with the reason and leaves nothing; auto takes the first usable one in
// registry order, for each KVM situation.
func TestBackendChoice(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		hw, auto string
	}{{"pvm", "qemu"}, {"pvm-nodev", "qemu"}, {"none", "qemu"}} {
		t.Run(tc.hw, func(t *testing.T) {
			dir := t.TempDir()
			h := testHost(t, dir, func(o *HostOptions) { o.probe = vmtest.KVMProbe(t, tc.hw) })
			_, err := h.Create(ctx, bootFiles(t, VMConfig{VMID: "fc", Backend: BackendFirecracker, NoNetwork: true}))
			if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "firecracker") || !strings.Contains(err.Error(), "hardware KVM") || !strings.Contains(err.Error(), "backend") {
				t.Fatalf("firecracker on a host that cannot run it: %v", err)
			}
			if vms, _ := h.List(ctx, ListOptions{}); len(vms) != 0 {
				t.Fatalf("a refused create left %v", vms)
			}
			b, err := h.chooseBackend(ctx, VMConfig{Backend: BackendAuto, Accel: AccelAuto}.WithDefaults(), boot{Kernel: "/k", Vmlinux: "/v"})
			if err != nil || string(b.Kind()) != tc.auto {
				t.Fatalf("auto: %v %v, want %s", b, err, tc.auto)
			}
		})
	}
	// With hardware KVM and a Firecracker binary, auto prefers Firecracker
	// for a VM that has a vmlinux, and QEMU for one that has not.
	bin := filepath.Join(t.TempDir(), "firecracker")
	os.WriteFile(bin, []byte("#!/bin/sh\necho Firecracker v1.12.0\n"), 0o755)
	h := testHost(t, t.TempDir(), func(o *HostOptions) { o.probe = vmtest.KVMProbe(t, "intel"); o.FirecrackerBinary = bin })
	if b, err := h.chooseBackend(ctx, VMConfig{}.WithDefaults(), boot{Kernel: "/k", Vmlinux: "/v"}); err != nil || b.Kind() != "firecracker" {
		t.Fatalf("auto with KVM and a vmlinux: %v %v", b, err)
	}
	if b, err := h.chooseBackend(ctx, VMConfig{}.WithDefaults(), boot{Kernel: "/k"}); err != nil || b.Kind() != "qemu" {
		t.Fatalf("auto with KVM, no vmlinux: %v %v", b, err)
	}
	if _, err := h.chooseBackend(ctx, VMConfig{Backend: BackendFirecracker, Accel: AccelTCG}.WithDefaults(), boot{Kernel: "/k", Vmlinux: "/v"}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("firecracker with tcg: %v", err)
	}
}
