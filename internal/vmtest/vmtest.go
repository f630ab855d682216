// Package vmtest prepares real environments for tests that boot VMs: a
// private network namespace that the test binary re-executes itself in (and
// removes afterwards), the static guest agent built from this module, and a
// shared cache of the minimal image.
//
// Only tests import it.
package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Environment variables the re-executed test binary sees.
const (
	envInNetns = "SMOLVM_TEST_IN_NETNS" // name of the namespace we run in
	// CacheEnv overrides the shared image cache directory.
	CacheEnv = "SMOLVM_TEST_CACHE"
)

// Main runs the tests of a package that boots VMs. As root, outside a test
// namespace, it creates a fresh network namespace, re-runs the test binary
// inside it with `ip netns exec`, deletes the namespace and exits with the
// child's status. Inside (or when not root) it runs the tests directly; VM
// tests then call Require, which skips them unless in a namespace.
func Main(m *testing.M) { MainWith(m, image.NameMinimal) }

// hostDirEnv is smolvm.HostDirEnv: the host-wide state (lease claims)
// shared by every data directory.
const hostDirEnv = "SMOLVM_HOST_DIR"

// warmEnv is smolvm.WarmEnv: "off" boots every VM cold.
const warmEnv = "SMOLVM_WARM"

// MainWith is Main for a package that needs the named images built. The
// test binary, the namespace it re-runs in and the smolvm processes its
// tests start share a private host-wide directory (lease claims), removed
// at the end, so tests never write into the real host's.
func MainWith(m *testing.M, images ...string) { MainWithSetup(m, nil, images...) }

// MainWithSetup is MainWith that also calls setup outside the namespace,
// after the binaries and images are built and while the network is
// reachable (e.g. to build an image from Debian packages). binDir holds
// smolvm and smolvm-agent.
func MainWithSetup(m *testing.M, setup func(binDir string) error, images ...string) {
	prepareHook = setup
	// VMs boot cold in tests (a warm template would add a boot and a
	// snapshot to every test binary's fresh data directory); the warm
	// path's own tests turn it on.
	if os.Getenv(warmEnv) == "" {
		os.Setenv(warmEnv, "off")
	}
	if os.Getenv(hostDirEnv) == "" {
		d, err := os.MkdirTemp("", "smolvm-test-host-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmtest:", err)
			os.Exit(1)
		}
		os.Setenv(hostDirEnv, d)
		code := runMain(m, images)
		os.RemoveAll(d)
		os.Exit(code)
	}
	os.Exit(runMain(m, images))
}

// runMain is MainWith without the host directory: it returns the exit code.
func runMain(m *testing.M, images []string) int {
	if os.Getenv(envInNetns) != "" || os.Geteuid() != 0 {
		return m.Run()
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fmt.Fprintln(os.Stderr, "vmtest: ip (iproute2) not found; running without a namespace, VM tests will skip")
		return m.Run()
	}
	// Build what the tests need while the network is still reachable: the
	// namespace has none.
	if err := prepare(images); err != nil {
		fmt.Fprintln(os.Stderr, "vmtest:", err)
		return 1
	}
	name := fmt.Sprintf("smolvm-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: ip netns add: %v: %s\n", err, out)
		return 1
	}
	exec.Command("ip", "-n", name, "link", "set", "lo", "up").Run()
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), envInNetns+"="+name)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		code = 1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: ip netns delete %s: %v: %s\n", name, err, out)
		code = 1
	}
	if d := os.Getenv(binDirEnv); d != "" {
		os.RemoveAll(d)
	}
	return code
}

// prepare builds the binaries and the images in the shared cache.
func prepare(images []string) error {
	dir, err := build()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, name := range images {
		start := time.Now()
		_, err = image.Build(ctx, image.BuildOptions{Name: name, CacheDir: CacheDir(), AgentPath: filepath.Join(dir, "smolvm-agent")})
		if err != nil {
			return fmt.Errorf("build the %s image: %w", name, err)
		}
		fmt.Fprintf(os.Stderr, "vmtest: image %s ready in %.1fs\n", name, time.Since(start).Seconds())
	}
	if prepareHook != nil {
		return prepareHook(dir)
	}
	return nil
}

// prepareHook is MainWithSetup's setup.
var prepareHook func(binDir string) error

// Require skips t unless it runs as root inside a private test namespace and
// QEMU is installed.
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv(envInNetns) == "" {
		t.Skip("boots a VM: needs root and a private network namespace (vmtest.Main)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
}

// Netns returns the name of the namespace the tests run in, or "".
func Netns() string { return os.Getenv(envInNetns) }

// CacheDir returns the image cache shared by test runs and packages:
// $SMOLVM_TEST_CACHE, or <tmp>/smolvm-test-cache.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "smolvm-test-cache")
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds ./cmd/smolvm and ./cmd/smolvm-agent (static) once per test
// binary and returns the directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	dir, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// binDirEnv passes the built binaries' directory to the re-executed test
// binary, so it does not build them again.
const binDirEnv = "SMOLVM_TEST_BIN_DIR"

func build() (string, error) {
	buildOnce.Do(func() {
		if d := os.Getenv(binDirEnv); d != "" {
			binDir = d
			return
		}
		binDir, buildErr = os.MkdirTemp("", "smolvm-bin-")
		if buildErr != nil {
			return
		}
		root := moduleRoot()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", binDir+"/", "./cmd/smolvm", "./cmd/smolvm-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
		os.Setenv(binDirEnv, binDir)
	})
	return binDir, buildErr
}

// Setup points the SDK at the freshly built agent and the shared image
// cache, for the rest of the test binary.
func Setup(t testing.TB) (binDir string) {
	t.Helper()
	binDir = Binaries(t)
	os.Setenv("SMOLVM_AGENT", filepath.Join(binDir, "smolvm-agent"))
	os.Setenv("SMOLVM_IMAGE_DIR", CacheDir())
	return binDir
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

// ProcessesOf lists the PIDs of live processes whose command line or
// environment contains s (a confined QEMU has no path of ours on its
// command line; its environment names its VM directory).
func ProcessesOf(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !(strings.Contains(string(cmd), s) || strings.Contains(string(env), s)) {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && (st[i+2] == 'Z' || st[i+2] == 'X') {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// KVMProbe describes one KVM situation to acceleration detection with files
// made in a temp dir, so tests do not depend on the machine's own:
// "intel" (hardware KVM), "pvm" (/dev/kvm of a paravirtual kvm_pvm),
// "pvm-nodev" (kvm_pvm loaded, no /dev/kvm), "none" (neither).
func KVMProbe(t testing.TB, situation string) vmm.Probe {
	t.Helper()
	dir := t.TempDir()
	p := vmm.Probe{DevKVM: filepath.Join(dir, "kvm"), SysModule: filepath.Join(dir, "module"), CPUInfo: filepath.Join(dir, "cpuinfo")}
	mods, ok := map[string][]string{"intel": {"kvm", "kvm_intel"}, "pvm": {"kvm", "kvm_pvm"}, "pvm-nodev": {"kvm", "kvm_pvm"}, "none": nil}[situation]
	if !ok {
		t.Fatalf("vmtest: unknown KVM situation %q", situation)
	}
	for _, m := range mods {
		if err := os.MkdirAll(filepath.Join(p.SysModule, m), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if situation == "intel" || situation == "pvm" {
		if err := os.WriteFile(p.DevKVM, nil, 0o600); err != nil { // a regular file opens read-write like a working device
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(p.CPUInfo, []byte("flags\t: fpu vmx constant_tsc\ncpu MHz\t: 2000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
