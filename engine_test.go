package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/smolvm-go/smolvm/internal/netplan"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmm/vmmfake"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

func init() { vmm.Register(vmmfake.Kind, vmmfake.New) }

// fakeVM is a VM on the in-process fake backend: no emulator, so the
// engine's logic is tested in milliseconds.
func fakeVM(t *testing.T, id string) VMConfig {
	return bootFiles(t, VMConfig{VMID: id, Backend: BackendKind(vmmfake.Kind), MemSizeMiB: 128, VCPUCount: 1, DiskMode: DiskShared, NoNetwork: true})
}

// fakeEnv is a data dir for fake-backend tests; with network, the test
// binary must run in its private namespace (vmtest).
func fakeEnv(t *testing.T, network bool, mod ...func(*HostOptions)) (*Host, string) {
	t.Helper()
	if network {
		vmtest.Require(t)
	}
	dir := t.TempDir()
	h := testHost(t, dir, mod...)
	t.Cleanup(func() {
		if t.Failed() {
			h.Cleanup(context.Background(), CleanupOptions{All: true})
		}
	})
	return h, dir
}

// assertFakeNothingLeft checks the data dir has no VM row, lease, file,
// claim or fake VMM process.
func assertFakeNothingLeft(t *testing.T, h *Host, dir string) {
	t.Helper()
	ctx := context.Background()
	if vms, _ := h.st.ListVMs(ctx); len(vms) != 0 {
		t.Errorf("rows left: %+v", vms)
	}
	if ls, _ := h.st.Leases(ctx); len(ls) != 0 {
		t.Errorf("leases left: %+v", ls)
	}
	for _, sub := range []string{"vms", "logs", "locks"} {
		if ents, _ := os.ReadDir(filepath.Join(dir, sub)); len(ents) != 0 {
			t.Errorf("%s/ not empty: %v", sub, ents)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(h.opts.HostDir, "leases")); len(ents) != 0 {
		t.Errorf("host-wide lease claims left: %v", ents)
	}
	if pids := vmtest.ProcessesOf(filepath.Join(dir, "vms")); len(pids) > 0 {
		t.Errorf("VMM processes left: %v", pids)
	}
}

// TestFakeLifecycle runs a VM through every state on the fake backend.
func TestFakeLifecycle(t *testing.T) {
	h, dir := fakeEnv(t, false)
	ctx := context.Background()
	vm, err := h.Create(ctx, fakeVM(t, "f1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	inf := vm.Info()
	if inf.Status != StateRunning || inf.Backend != BackendKind(vmmfake.Kind) || inf.PID == 0 || inf.Network != nil {
		t.Fatalf("after start: %+v", inf)
	}
	res, err := vm.Run(ctx, "echo hi")
	if err != nil || res.Output() != "hi" {
		t.Fatalf("run: %+v %v", res, err)
	}
	if err := vm.Start(ctx); !errors.Is(err, ErrState) {
		t.Fatalf("second start: %v", err)
	}
	if err := vm.Pause(ctx); err != nil || vm.Info().Status != StatePaused {
		t.Fatalf("pause: %v %s", err, vm.Info().Status)
	}
	if err := vm.Resume(ctx); err != nil || vm.Info().Status != StateRunning {
		t.Fatalf("resume: %v %s", err, vm.Info().Status)
	}
	if err := vm.Stop(ctx); err != nil || vm.Info().Status != StateStopped {
		t.Fatalf("stop: %v %s", err, vm.Info().Status)
	}
	if _, err := vm.Run(ctx, "true"); !errors.Is(err, ErrState) {
		t.Fatalf("run on a stopped VM: %v, want ErrState", err)
	}
	// A VMM that dies is reconciled as error.
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	vmm.KillProcess(vm.Info().PID, 0)
	vmm.WaitExit(ctx, vmm.Instance{PID: inf.PID})
	waitFor(t, func() bool { vm.Refresh(ctx); return vm.Info().Status == StateError })
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Get(ctx, "f1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	assertFakeNothingLeft(t, h, dir)
}

// TestEachStepFails makes every step of create and start fail in turn (the
// list comes from the step tables) and checks the error names the step and
// nothing is left behind. With networking, the TAP and rules must go too.
func TestEachStepFails(t *testing.T) {
	ctx := context.Background()
	for _, network := range []bool{false, true} {
		for _, s := range stepNames(createSteps) {
			t.Run(fmt.Sprintf("create/%s/network=%v", s, network), func(t *testing.T) {
				h, dir := fakeEnv(t, network, func(o *HostOptions) { o.failAt = s })
				cfg := fakeVM(t, "fail")
				cfg.NoNetwork = !network
				if network {
					cfg.SSHHostPort = SSHPortAuto
				}
				_, err := h.Create(ctx, cfg)
				if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "create fail: "+s+": ") {
					t.Fatalf("err = %v", err)
				}
				assertFakeNothingLeft(t, h, dir)
			})
		}
		for _, s := range stepNames(startSteps) {
			t.Run(fmt.Sprintf("start/%s/network=%v", s, network), func(t *testing.T) {
				h, dir := fakeEnv(t, network)
				cfg := fakeVM(t, "fail")
				cfg.NoNetwork = !network
				cfg.EnvVars = map[string]string{"A": "1"}
				vm, err := h.Create(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				h.opts.failAt = s
				err = vm.Start(ctx)
				h.opts.failAt = ""
				if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "start fail: "+s+": ") {
					t.Fatalf("err = %v", err)
				}
				inf := vm.Info()
				// check and runtime-dir fail before anything is made: the VM
				// stays as it was.
				early := s == "check" || s == "runtime-dir"
				if inf.PID != 0 || (early && inf.Status != StateCreated) || (!early && (inf.Status != StateError || !strings.Contains(inf.Error, s))) {
					t.Fatalf("after a failed start: %+v", inf)
				}
				if vmmfake.Running() != 0 {
					t.Fatalf("%d fake VMMs still run", vmmfake.Running())
				}
				if network {
					assertNoLink(t, netplan.MustFor(0, 0).TAP)
				}
				if err := vm.Delete(ctx); err != nil {
					t.Fatal(err)
				}
				assertFakeNothingLeft(t, h, dir)
			})
		}
	}
}

// TestFakeConcurrency creates, starts and deletes 50 VMs at once from 50
// goroutines sharing one Host: no two living VMs share a lease, nothing is
// left.
func TestFakeConcurrency(t *testing.T) {
	h, dir := fakeEnv(t, false)
	ctx := context.Background()
	const n = 50
	var wg, up sync.WaitGroup
	errs := make([]error, n)
	idx := make([]int, n)
	up.Add(n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			once := sync.OnceFunc(up.Done)
			defer once()
			vm, err := h.Create(ctx, fakeVM(t, fmt.Sprintf("c%d", i)))
			if err != nil {
				errs[i] = err
				return
			}
			if err := vm.Start(ctx); err != nil {
				errs[i] = errors.Join(err, vm.Delete(ctx))
				return
			}
			l, err := h.st.LeaseOf(ctx, vm.ID())
			idx[i] = l.Index
			once()
			up.Wait() // every VM lives at once before any is deleted
			if _, rerr := vm.Run(ctx, "true"); rerr != nil {
				err = errors.Join(err, rerr)
			}
			errs[i] = errors.Join(err, vm.Delete(ctx))
		}()
	}
	wg.Wait()
	seen := map[int]bool{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("vm %d: %v", i, err)
		}
		if seen[idx[i]] && err == nil {
			t.Errorf("lease index %d handed out twice", idx[i])
		}
		seen[idx[i]] = true
	}
	assertFakeNothingLeft(t, h, dir)
}

// TestInterruptedOps: an operation recorded as in progress whose process
// died is recognised: an interrupted create refuses to start and cleanup
// removes it; an interrupted stop's VMM exit is a stop, not a crash.
func TestInterruptedOps(t *testing.T) {
	h, dir := fakeEnv(t, false)
	ctx := context.Background()
	vm, err := h.Create(ctx, fakeVM(t, "half"))
	if err != nil {
		t.Fatal(err)
	}
	h.st.UpdateVM(ctx, "half", func(v *store.VM) error { v.Op = store.OpCreating; return nil })
	if err := vm.Start(ctx); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("start of an interrupted create: %v", err)
	}
	vm2, err := h.Create(ctx, fakeVM(t, "stopping"))
	if err != nil {
		t.Fatal(err)
	}
	if err := vm2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h.st.UpdateVM(ctx, "stopping", func(v *store.VM) error { v.Op = store.OpStopping; return nil })
	pid := vm2.Info().PID
	vmm.KillProcess(pid, 0)
	vmm.WaitExit(ctx, vmm.Instance{PID: pid})
	waitFor(t, func() bool { vm2.Refresh(ctx); return vm2.Info().Status == StateStopped })
	if inf := vm2.Info(); inf.Error != "" {
		t.Fatalf("an interrupted stop counted as a crash: %+v", inf)
	}
	rep, err := h.Cleanup(ctx, CleanupOptions{})
	if err != nil || !strings.Contains(strings.Join(rep.Removed, ","), "vm half") {
		t.Fatalf("cleanup: %+v %v", rep, err)
	}
	if err := vm2.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	assertFakeNothingLeft(t, h, dir)
}

// TestTwoDataDirsOneHost: two data directories on one host never hand out
// the same TAP, subnet or vsock context id.
func TestTwoDataDirsOneHost(t *testing.T) {
	ctx := context.Background()
	hostDir := t.TempDir()
	shared := func(o *HostOptions) { o.HostDir = hostDir }
	h1 := testHost(t, t.TempDir(), shared)
	h2 := testHost(t, t.TempDir(), shared)
	a, err := h1.Create(ctx, fakeVM(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := h2.Create(ctx, fakeVM(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	pa, _ := h1.plan(ctx, "a")
	pb, _ := h2.plan(ctx, "a")
	if pa.TAP == pb.TAP || pa.CID == pb.CID || pa.GuestIP == pb.GuestIP {
		t.Fatalf("two data dirs share an identity: %+v %+v", pa, pb)
	}
	// A VM without network still has its own vsock context id.
	if pa.CID < 3 || pb.CID < 3 {
		t.Fatalf("CIDs %d %d", pa.CID, pb.CID)
	}
	a.Delete(ctx)
	b.Delete(ctx)
}

func assertNoLink(t *testing.T, name string) {
	t.Helper()
	if _, err := os.Stat("/sys/class/net/" + name); err == nil {
		t.Errorf("link %s left", name)
	}
}

// TestCleanupPrunesClaims: cleanup removes host-wide lease claims that
// nothing backs (a VM of its own data dir that is gone, a data dir that was
// removed) and keeps live ones, its own and another data dir's.
func TestCleanupPrunesClaims(t *testing.T) {
	ctx := context.Background()
	hostDir := t.TempDir()
	shared := func(o *HostOptions) { o.HostDir = hostDir }
	h1 := testHost(t, t.TempDir(), shared)
	other := t.TempDir()
	h2 := testHost(t, other, shared)
	if _, err := h1.Create(ctx, fakeVM(t, "live")); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.Create(ctx, fakeVM(t, "theirs")); err != nil {
		t.Fatal(err)
	}
	claims := netplan.Claims{Dir: filepath.Join(hostDir, "leases")}
	gone := t.TempDir()
	for i, o := range map[int]netplan.Owner{7: {DataDir: h1.DataDir(), VMID: "ghost"}, 8: {DataDir: gone, VMID: "x"}} {
		if err := claims.Claim(i, o, nil); err != nil {
			t.Fatal(err)
		}
	}
	os.RemoveAll(gone)
	rep, err := h1.Cleanup(ctx, CleanupOptions{DryRun: true})
	if err != nil || !slices.Contains(rep.Removed, "lease claim 7") || !slices.Contains(rep.Removed, "lease claim 8") {
		t.Fatalf("dry run: %+v %v", rep, err)
	}
	if ents, _ := os.ReadDir(claims.Dir); len(ents) != 4 {
		t.Fatalf("a dry run removed claims: %v", ents)
	}
	if _, err := h1.Cleanup(ctx, CleanupOptions{}); err != nil {
		t.Fatal(err)
	}
	var left []string
	ents, _ := os.ReadDir(claims.Dir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if strings.Join(left, ",") != "0,1" {
		t.Fatalf("claims left %v, want the two live ones (0, 1)", left)
	}
	h1.Cleanup(ctx, CleanupOptions{All: true})
	h2.Cleanup(ctx, CleanupOptions{All: true})
}
