package smolvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// VM tests boot the minimal image under QEMU inside a private network
// namespace that vmtest.Main creates for this test binary and removes.
func TestMain(m *testing.M) { vmtest.MainWithSetup(m, prepareUserImages, ImageMinimal, ImageDefault) }

// vmEnv prepares a data dir for VM tests and returns its host.
func vmEnv(t *testing.T) (*Host, string) {
	t.Helper()
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	h := testHost(t, dir)
	t.Cleanup(func() {
		if t.Failed() {
			// Do not let a failed test leak VMs into the next one.
			h.Cleanup(context.Background(), CleanupOptions{All: true})
			return
		}
		assertNothingLeft(t, dir)
	})
	return h, dir
}

// testHost opens a Host on dir whose host-wide state is the test's own,
// closed when the test ends.
func testHost(t *testing.T, dir string, mod ...func(*HostOptions)) *Host {
	t.Helper()
	o := HostOptions{DataDir: dir, HostDir: filepath.Join(dir, ".host")}
	for _, m := range mod {
		m(&o)
	}
	h, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func minimalVM(id string) VMConfig {
	return VMConfig{VMID: id, Image: ImageMinimal, MemSizeMiB: 256, VCPUCount: 1}
}

// assertNothingLeft checks a data dir holds no VM, lease, port, VM
// directory, console log or live QEMU of its own.
func assertNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if pids := vmtest.ProcessesOf(filepath.Join(dir, "vms")); len(pids) > 0 {
		t.Errorf("QEMU processes left: %v", pids)
		for _, p := range pids {
			vmm.KillProcess(p, 0)
		}
	}
	ctx := context.Background()
	st, err := store.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	vms, _ := st.ListVMs(ctx)
	leases, _ := st.Leases(ctx)
	ports, _ := st.Ports(ctx, "")
	if len(vms)+len(leases)+len(ports) > 0 {
		t.Errorf("state left: %d VMs, %d leases, %d ports", len(vms), len(leases), len(ports))
	}
	for _, sub := range []string{"vms", "logs"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		if len(ents) > 0 {
			t.Errorf("%s left: %v", sub, ents)
		}
	}
}

func TestLifecycle(t *testing.T) {
	h, dir := vmEnv(t)
	ctx := context.Background()
	start := time.Now()
	vm, err := h.Create(ctx, minimalVM("life"))
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := vm.Run(ctx, "echo hello")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("create -> first output: %v", time.Since(start))
	if !res.OK() || res.Output() != "hello" {
		t.Fatalf("echo: %+v", res)
	}
	inf := vm.Info()
	if inf.Status != StateRunning || inf.PID == 0 || inf.Accel == "" || inf.Backend != BackendQEMU {
		t.Fatalf("info while running: %+v", inf)
	}
	if _, err := os.Stat(filepath.Join(dir, "vms", "life", "disk.ext4")); err != nil {
		t.Fatalf("isolated disk: %v", err)
	}
	// Exit codes and stderr.
	res, err = vm.Run(ctx, "echo out; echo err >&2; exit 7")
	if err != nil || res.ExitCode != 7 || res.Stdout != "out\n" || res.Stderr != "err\n" || res.OK() {
		t.Fatalf("exit 7: %+v %v", res, err)
	}
	res, err = vm.Run(ctx, "kill -9 $$")
	if err != nil || res.ExitCode != 137 {
		t.Fatalf("kill -9: %+v %v", res, err)
	}
	res, err = vm.Run(ctx, "sleep 30", RunTimeout(500*time.Millisecond))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("timeout: %+v %v", res, err)
	}
	// The VM's hostname is its id.
	if res, _ := vm.Run(ctx, "hostname"); res.Output() != "life" {
		t.Fatalf("hostname %q", res.Output())
	}
	// The init installed the data dir's SSH key from the kernel command
	// line before the ready marker: root's, 0700/0600, the key's own line.
	pub, err := h.sshKey()
	if err != nil {
		t.Fatal(err)
	}
	res, err = vm.Run(ctx, "stat -c '%a %u' /root/.ssh /root/.ssh/authorized_keys; cat /root/.ssh/authorized_keys; grep -o 'smolvm.sshkey=[^ ]*' /proc/cmdline")
	if want := "700 0\n600 0\n" + string(pub); err != nil || !strings.HasPrefix(res.Stdout, want) || !strings.Contains(res.Stdout, "smolvm.sshkey=ed25519:") {
		t.Fatalf("ssh key in the guest: %q %v; want %q then the key word", res.Stdout, err, want)
	}
	if log, _ := os.ReadFile(vm.ConsoleLog()); bytes.Contains(log, []byte("smolvm-init: ssh key")) {
		t.Fatalf("the init failed to install the key:\n%s", log)
	}
	// Files both ways, random binary content, checked by SHA-256.
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	if err := vm.Upload(ctx, "/root/data/blob.bin", bytes.NewReader(data), 0o640); err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	mode, err := vm.Download(ctx, "/root/data/blob.bin", &back)
	if err != nil || sha256.Sum256(back.Bytes()) != sha256.Sum256(data) || mode.Perm() != 0o640 {
		t.Fatalf("download: mode %v err %v, %d bytes", mode, err, back.Len())
	}
	local := filepath.Join(t.TempDir(), "out.bin")
	if err := vm.DownloadFile(ctx, "/root/data/blob.bin", local); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(local); !bytes.Equal(got, data) {
		t.Fatal("DownloadFile content differs")
	}
	if _, err := vm.Download(ctx, "/nope", &back); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing file: %v", err)
	}
	if err := vm.Upload(ctx, "relative/path", strings.NewReader("x"), 0o644); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("relative path: %v", err)
	}
	// Env vars: every shell-special character survives, and commands see them.
	val := `it's "quoted" $HOME \ back` + "\nline2 `tick` ;&|<>(){}*?#~ é"
	if err := vm.SetEnvVars(ctx, map[string]string{"SPECIAL": val, "B": "2"}); err != nil {
		t.Fatal(err)
	}
	if err := vm.UnsetEnvVars(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	env, err := vm.ListEnvVars(ctx)
	if err != nil || len(env) != 1 || env["SPECIAL"] != val {
		t.Fatalf("env list: %q %v", env, err)
	}
	res, _ = vm.Run(ctx, `printf %s "$SPECIAL"`)
	if res.Stdout != val {
		t.Fatalf("command sees %q, want %q", res.Stdout, val)
	}
	if err := vm.SetEnvVars(ctx, map[string]string{"1BAD": "x"}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("bad key: %v", err)
	}

	// Pause and resume: a command sent while paused waits for the resume.
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if inf := vm.Info(); inf.Status != StatePaused {
		t.Fatalf("after pause: %s", inf.Status)
	}
	pctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	if _, err := vm.Run(pctx, "echo paused?"); err == nil {
		t.Fatal("a paused VM ran a command")
	}
	cancel()
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := vm.Run(ctx, "echo resumed"); err != nil || res.Output() != "resumed" || vm.Info().Status != StateRunning {
		t.Fatalf("after resume: %+v %v %s", res, err, vm.Info().Status)
	}
	// Stop, then start again: the isolated disk keeps the file.
	if _, err := vm.Run(ctx, "echo persisted > /root/keep.txt"); err != nil {
		t.Fatal(err)
	}
	pid := vm.Info().PID
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if inf := vm.Info(); inf.Status != StateStopped || inf.PID != 0 {
		t.Fatalf("after stop: %+v", inf)
	}
	if vmm.Alive(pid, 0) {
		t.Fatalf("QEMU %d still alive after stop", pid)
	}
	for _, s := range []string{"agent.sock", "qmp.sock"} {
		if _, err := os.Stat(filepath.Join(dir, "vms", "life", s)); err == nil {
			t.Errorf("%s left after stop", s)
		}
	}
	if _, err := vm.Run(ctx, "true"); !errors.Is(err, ErrState) || errors.Is(err, ErrCommandUnavailable) {
		t.Fatalf("run on a stopped VM: %v", err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	res, err = vm.Run(ctx, "cat /root/keep.txt; printf %s \"$SPECIAL\" | wc -c")
	if err != nil || !strings.HasPrefix(res.Stdout, "persisted\n") {
		t.Fatalf("after restart: %+v %v", res, err)
	}
	if err := vm.Start(ctx); !errors.Is(err, ErrState) {
		t.Fatalf("start while running: %v", err)
	}
	start = time.Now()
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("delete (running VM) -> done: %v", time.Since(start))
	if _, err := h.Get(ctx, "life"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("FromID after delete: %v", err)
	}
}

func TestTwoVMsAndSecondProcess(t *testing.T) {
	h, dir := vmEnv(t)
	bin := filepath.Join(vmtest.Binaries(t), "smolvm")
	ctx := context.Background()
	var wg sync.WaitGroup
	vms := make([]*VM, 2)
	errs := make([]error, 2)
	for i, id := range []string{"twin-a", "twin-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := minimalVM(id)
			if id == "twin-b" {
				cfg.BootArgs = "loglevel=7" // undoes the kernel's quiet
			}
			vms[i], errs[i] = h.New(ctx, cfg)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("vm %d: %v", i, err)
		}
		defer vms[i].Close()
	}
	// The kernel boots quiet; loglevel=7 in boot_args brings its log back.
	for i, want := range []bool{false, true} {
		log, _ := os.ReadFile(vms[i].ConsoleLog())
		if got := bytes.Contains(log, []byte("Linux version")); got != want {
			t.Errorf("%s: kernel boot log on the console = %v, want %v", vms[i].ID(), got, want)
		}
	}
	if vms[0].GetIP() == vms[1].GetIP() || vms[0].GetIP() == "" {
		t.Fatalf("IPs %q %q", vms[0].GetIP(), vms[1].GetIP())
	}
	for _, vm := range vms {
		res, err := vm.Run(ctx, "hostname")
		if err != nil || res.Output() != vm.ID() {
			t.Fatalf("%s: %+v %v", vm.ID(), res, err)
		}
	}
	// Another process reaches the same VM by id (FromID inside the CLI):
	// this handle lets go of the agent channel soon after its last use.
	out, err := exec.Command(bin, "--data-dir", dir, "exec", "twin-b", "--", "echo from $(hostname)").CombinedOutput()
	if err != nil || string(out) != "from twin-b\n" {
		t.Fatalf("second process: %q %v", out, err)
	}
	// And this process can use it again afterwards.
	if res, err := vms[1].Run(ctx, "echo back"); err != nil || res.Output() != "back" {
		t.Fatalf("after the second process: %+v %v", res, err)
	}
	// A fresh handle used by many goroutines at once connects once and
	// serves them all.
	fresh, err := h.Get(ctx, "twin-b")
	if err != nil {
		t.Fatal(err)
	}
	vms[1].dropClient()
	var wg2 sync.WaitGroup
	outs := make([]string, 8)
	for i := range outs {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			res, err := fresh.Run(ctx, "echo "+strings.Repeat("x", i+1))
			if err != nil {
				outs[i] = err.Error()
				return
			}
			outs[i] = res.Output()
		}()
	}
	wg2.Wait()
	fresh.Release()
	for i, o := range outs {
		if o != strings.Repeat("x", i+1) {
			t.Fatalf("concurrent Run %d on a fresh handle: %q", i, o)
		}
	}
	// An env var set by another process is seen here.
	if out, err := exec.Command(bin, "--data-dir", dir, "env", "set", "twin-a", "FROM_CLI=yes").CombinedOutput(); err != nil {
		t.Fatalf("env set: %s %v", out, err)
	}
	if res, _ := vms[0].Run(ctx, "echo $FROM_CLI"); res.Output() != "yes" {
		t.Fatalf("FROM_CLI = %q", res.Output())
	}
}

func TestVMMKilledExternally(t *testing.T) {
	h, _ := vmEnv(t)
	ctx := context.Background()
	vm, err := h.New(ctx, minimalVM("victim"))
	if err != nil {
		t.Fatal(err)
	}
	pid := vm.Info().PID
	if err := vmm.KillProcess(pid, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !vmm.Alive(pid, 0) })
	vm2, err := h.Get(ctx, "victim")
	if err != nil {
		t.Fatal(err)
	}
	if inf := vm2.Info(); inf.Status != StateError || !strings.Contains(inf.Error, "exited unexpectedly") {
		t.Fatalf("after kill: %+v", inf)
	}
	vm2.Release()
	list, _ := h.List(ctx, ListOptions{Status: StateRunning})
	if len(list) != 0 {
		t.Fatalf("still listed as running: %+v", list)
	}
	if _, err := vm.Run(ctx, "true"); !errors.Is(err, ErrState) || errors.Is(err, ErrCommandUnavailable) {
		t.Fatalf("run on a dead VM: %v", err)
	}
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestBootTimeoutShowsConsole(t *testing.T) {
	_, dir := vmEnv(t)
	h := testHost(t, dir, func(o *HostOptions) { o.BootTimeout = 300 * time.Millisecond })
	ctx := context.Background()
	vm, err := h.Create(ctx, minimalVM("slow"))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Delete(ctx)
	err = vm.Start(ctx)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "did not answer within") {
		t.Fatalf("err = %v", err)
	}
	vm.Refresh(ctx)
	if inf := vm.Info(); inf.Status != StateError || inf.PID != 0 {
		t.Fatalf("after a failed boot: %+v", inf)
	}
}

// TestMissingImage: a missing image is ErrNotFound naming it; nothing
// recorded.
func TestMissingImage(t *testing.T) {
	h, dir := vmEnv(t)
	_, err := h.Create(context.Background(), VMConfig{VMID: "noimg", Image: "nonexistent"})
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrImage) || !strings.Contains(err.Error(), "nonexistent") || !strings.Contains(err.Error(), "boot-files") {
		t.Fatalf("missing image: %v", err)
	}
	assertNothingLeft(t, dir)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
