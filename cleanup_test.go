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
	"github.com/smolvm-go/smolvm/internal/vmm/firecracker"
)

func TestDoctor(t *testing.T) {
	checks := Doctor(context.Background(), DoctorOptions{}, WithDataDir(t.TempDir()))
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
	for _, n := range []string{"kvm", "acceleration", "qemu", "firecracker", "network", "nftables", "ip_forward", "data dir", "image minimal", "image default", "agent"} {
		if _, ok := byName[n]; !ok {
			t.Errorf("no %q check", n)
		}
	}
	acc := vmm.DetectAccel()
	if !strings.Contains(byName["acceleration"].Detail, string(acc.Accel)) {
		t.Errorf("acceleration check %q does not say %s", byName["acceleration"].Detail, acc.Accel)
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil && acc.Accel == vmm.AccelTCG {
		if k := byName["kvm"]; k.Status != CheckWarn || !strings.Contains(k.Detail, "paravirtual") || !strings.Contains(k.Detail, "TCG") {
			t.Errorf("kvm check on a kvm_pvm host: %+v", k)
		}
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
}

// TestCleanupOrphans leaves behind what a crash would (a VMM process, files,
// a TAP and rules of a VM whose record is gone; an interrupted create) and
// checks that Cleanup removes exactly that, and --dry-run nothing.
func TestCleanupOrphans(t *testing.T) {
	opt, dir := vmEnv(t)
	ctx := context.Background()
	keeper, err := New(ctx, WithConfig(minimalVM("keeper")), opt)
	if err != nil {
		t.Fatal(err)
	}
	defer keeper.Close()
	lost, err := New(ctx, WithConfig(minimalVM("lost")), opt)
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
	rec, _ := json.Marshal(record{Config: minimalVM("half").WithDefaults(), Network: true})
	if _, err := st.CreateVM(ctx, store.VM{ID: "half", Status: string(StateCreated), Config: rec}, store.Alloc{Lease: true}); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "vms", "half"), 0o700)
	os.WriteFile(filepath.Join(dir, "vms", "half", "disk.ext4"), []byte("partial"), 0o600)
	if err := keeper.Start(ctx); err == nil {
		t.Fatal("starting a running VM succeeded")
	}
	half, _ := FromID(ctx, "half", opt)
	if err := half.Start(ctx); err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("starting an interrupted create: %v", err)
	}
	half.Release()

	rep, err := Cleanup(ctx, CleanupOptions{DryRun: true}, opt)
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

	rep, err = Cleanup(ctx, CleanupOptions{}, opt)
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
	if _, err := FromID(ctx, "half", opt); err == nil {
		t.Error("the interrupted create survived")
	}
	if res, err := keeper.Run(ctx, "echo alive"); err != nil || res.Output() != "alive" {
		t.Fatalf("the healthy VM was hurt: %+v %v", res, err)
	}
	// Nothing more to do the second time.
	if rep, _ := Cleanup(ctx, CleanupOptions{}, opt); len(rep.Removed) != 0 {
		t.Fatalf("second cleanup removed %v", rep.Removed)
	}
	// --all removes every VM, and then no TAP or rule of ours is left.
	if _, err := Cleanup(ctx, CleanupOptions{All: true}, opt); err != nil {
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

func TestBackendChoice(t *testing.T) {
	dir := t.TempDir()
	ok, reason := (&firecracker.Backend{}).Usable()
	_, err := Create(context.Background(), bootFiles(t, VMConfig{VMID: "fc", Backend: BackendFirecracker}), CreateOptions{NoNetwork: true}, WithDataDir(dir))
	if ok {
		if err != nil {
			t.Fatalf("firecracker usable here (%s) but create failed: %v", reason, err)
		}
		return
	}
	if !errors.Is(err, ErrBackend) || !strings.Contains(err.Error(), "Firecracker") || !strings.Contains(err.Error(), "--backend qemu") {
		t.Fatalf("firecracker on a host that cannot run it: %v", err)
	}
	if vms, _ := List(context.Background(), ListOptions{}, WithDataDir(dir)); len(vms) != 0 {
		t.Fatalf("a refused create left %v", vms)
	}
	b, err := chooseBackend(BackendAuto, "", boot{})
	if err != nil || b.Name() != "qemu" {
		t.Fatalf("auto on a host without Firecracker: %v %v", b, err)
	}
}
