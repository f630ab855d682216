package image

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "SMOLVM_IMAGE_TEST_HELPER"

// buildHelper runs in a child test process: it builds into the cache named
// by the environment and blocks forever at the initramfs stage, after
// touching a marker file, so the parent can kill it mid-build.
func buildHelper() {
	signal.Ignore(syscall.SIGTERM)
	_, err := Build(context.Background(), BuildOptions{
		Name: NameMinimal, CacheDir: os.Getenv("CACHE"), AgentPath: os.Getenv("AGENT"), KernelPath: os.Getenv("KERNEL"),
		Progress: func(stage string, done, total int64) {
			if stage == "initramfs" {
				os.WriteFile(os.Getenv("MARKER"), nil, 0o644)
				select {}
			}
		},
	})
	if err != nil {
		os.Stderr.WriteString(err.Error())
		os.Exit(2)
	}
}

// privateCache returns an empty cache dir that shares the test cache's
// downloaded packages.
func privateCache(t *testing.T) string {
	t.Helper()
	shared := testCacheDir(t)
	if err := os.MkdirAll(filepath.Join(shared, ".debs"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(shared, ".debs"), filepath.Join(dir, ".debs")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fastOptions returns build options for cache tests: the minimal image with
// the test cache's extracted vmlinux as a user kernel, which skips the
// kernel download and decompression (slow under -race) but keeps every
// cache code path.
func fastOptions(t *testing.T, cache string) BuildOptions {
	t.Helper()
	base := buildMinimal(t)
	return BuildOptions{Name: NameMinimal, CacheDir: cache, AgentPath: buildAgent(t), KernelPath: base.Vmlinux}
}

func TestBuildMinimal(t *testing.T) {
	img := buildMinimal(t)
	m := img.Manifest
	if m.KernelKind != KernelBzImage || m.KernelVersion == "" || len(m.Modules) == 0 {
		t.Fatalf("manifest: kind %q version %q modules %v", m.KernelKind, m.KernelVersion, m.Modules)
	}
	for _, p := range []string{img.Kernel, img.Vmlinux, img.Initrd, img.Rootfs} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("kernel %s, modules %v, built in %.1fs", m.KernelVersion, m.Modules, m.BuildSeconds)
	for _, f := range m.Files {
		t.Logf("  %-12s %10d bytes", f.Name, f.Size)
	}
	st, err := os.Stat(img.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used >= st.Size() {
		t.Errorf("rootfs not sparse: %d bytes allocated of %d", used, st.Size())
	}
	imgs, err := List(testCacheDir(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, i := range imgs {
		found = found || i.Name == NameMinimal
	}
	if !found {
		t.Errorf("List does not show %s", NameMinimal)
	}
}

func TestVmlinuxFromDebianKernel(t *testing.T) {
	img := buildMinimal(t)
	bz, err := os.ReadFile(img.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(v))
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC || f.Entry == 0 {
		t.Fatalf("vmlinux: class %v machine %v type %v entry %#x", f.Class, f.Machine, f.Type, f.Entry)
	}
	loads := 0
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			loads++
		}
	}
	if loads == 0 {
		t.Fatal("vmlinux has no PT_LOAD")
	}
	cached, err := os.ReadFile(img.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cached, v) {
		t.Error("cached vmlinux differs from a fresh extraction")
	}
	kind, err := kernelKind(v)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("vmlinux: %d bytes, entry %#x, %d PT_LOAD, kind %s", len(v), f.Entry, loads, kind)
	if kind != KernelELFPVH {
		t.Errorf("Debian's vmlinux (CONFIG_PVH=y) classified as %s, want %s", kind, KernelELFPVH)
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty": nil,
		"text":  []byte(strings.Repeat("not a kernel\n", 100)),
	} {
		if _, err := ExtractVmlinux(data); !errors.Is(err, ErrInvalidKernel) {
			t.Errorf("%s: err = %v, want ErrInvalidKernel", name, err)
		}
	}
}

func TestCacheHitAndMiss(t *testing.T) {
	cache := privateCache(t)
	opts := fastOptions(t, cache)
	agent := opts.AgentPath
	ctx := context.Background()
	first, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	var stages []string
	o := opts
	o.Progress = func(s string, _, _ int64) { stages = append(stages, s) }
	second, err := Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if second.Manifest.Fingerprint != first.Manifest.Fingerprint || !second.Manifest.BuiltAt.Equal(first.Manifest.BuiltAt) ||
		!strings.Contains(strings.Join(stages, ","), "cached") {
		t.Fatalf("second build was not a cache hit: stages %v", stages)
	}

	// A changed agent is a different input.
	b, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	agent2 := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent2, append(b, "changed"...), 0o755); err != nil {
		t.Fatal(err)
	}
	o = opts
	o.AgentPath = agent2
	third, err := Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if third.Manifest.Fingerprint == first.Manifest.Fingerprint {
		t.Fatal("changed agent gave the same fingerprint")
	}
	// The same initramfs inputs give the same bytes, apart from the agent.
	if third.Manifest.Inputs.AgentSHA256 == first.Manifest.Inputs.AgentSHA256 {
		t.Fatal("agent checksum unchanged")
	}
	// Force rebuilds even on a hit.
	o.Force = true
	forced, err := Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if forced.Manifest.Fingerprint != third.Manifest.Fingerprint {
		t.Fatal("forced rebuild changed the fingerprint")
	}
	initrd1, _ := os.ReadFile(third.Initrd)
	initrd2, _ := os.ReadFile(forced.Initrd)
	if !bytes.Equal(initrd1, initrd2) {
		t.Error("rebuilding with the same inputs gave a different initramfs")
	}
	if err := Remove(ctx, cache, NameMinimal); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(cache, NameMinimal); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after Remove: %v", err)
	}
	if err := Remove(ctx, cache, NameMinimal); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestConcurrentBuildsWait(t *testing.T) {
	opts := fastOptions(t, privateCache(t))
	var wg sync.WaitGroup
	imgs := make([]*Image, 2)
	errs := make([]error, 2)
	for i := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imgs[i], errs[i] = Build(context.Background(), opts)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !imgs[0].Manifest.BuiltAt.Equal(imgs[1].Manifest.BuiltAt) || imgs[0].Manifest.BuildSeconds != imgs[1].Manifest.BuildSeconds {
		t.Error("both concurrent builds built: the second should have found the first's image")
	}
}

func TestCancelledBuildLeavesNothing(t *testing.T) {
	cache := privateCache(t)
	opts := fastOptions(t, cache)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts.Progress = func(s string, _, _ int64) {
		if s == "rootfs: busybox" {
			cancel()
		}
	}
	_, err := Build(ctx, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled build: err = %v, want context.Canceled", err)
	}
	assertNoImage(t, cache)
	if left, _ := filepath.Glob(filepath.Join(cache, ".tmp-*")); len(left) != 0 {
		t.Errorf("cancelled build left %v", left)
	}
}

func TestKilledBuildIsCleanedUp(t *testing.T) {
	cache := privateCache(t)
	opts := fastOptions(t, cache)
	marker := filepath.Join(t.TempDir(), "marker")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "CACHE="+cache, "AGENT="+opts.AgentPath, "KERNEL="+opts.KernelPath, "MARKER="+marker)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper build never reached the initramfs stage: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	left, _ := filepath.Glob(filepath.Join(cache, ".tmp-minimal-*"))
	if len(left) == 0 {
		t.Fatal("expected the killed build's temp dir to remain (to test its cleanup)")
	}
	assertNoImage(t, cache)
	if _, err := Build(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, ".tmp-*")); len(left) != 0 {
		t.Errorf("next build did not clean %v", left)
	}
}

func assertNoImage(t *testing.T, cache string) {
	t.Helper()
	imgs, err := List(cache)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 0 {
		t.Fatalf("List shows %d images after a failed build", len(imgs))
	}
	if _, err := Get(cache, NameMinimal); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after a failed build: %v", err)
	}
}

func TestBuildErrors(t *testing.T) {
	agent := buildAgent(t)
	ctx := context.Background()
	t.Run("dynamic agent", func(t *testing.T) {
		_, err := Build(ctx, BuildOptions{Name: NameMinimal, CacheDir: t.TempDir(), AgentPath: "/bin/true"})
		if !errors.Is(err, ErrInvalidAgent) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("not a kernel", func(t *testing.T) {
		cache := t.TempDir()
		k := filepath.Join(t.TempDir(), "vmlinuz")
		os.WriteFile(k, []byte("hello"), 0o644)
		_, err := Build(ctx, BuildOptions{Name: NameMinimal, CacheDir: cache, AgentPath: agent, KernelPath: k})
		if !errors.Is(err, ErrInvalidKernel) {
			t.Fatalf("err = %v", err)
		}
		assertNoImage(t, cache)
	})
	t.Run("cache is a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		os.WriteFile(f, nil, 0o644)
		_, err := Build(ctx, BuildOptions{Name: NameMinimal, CacheDir: filepath.Join(f, "cache"), AgentPath: agent})
		if err == nil || !strings.Contains(err.Error(), "image cache") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown image", func(t *testing.T) {
		if _, err := Build(ctx, BuildOptions{Name: "nope", CacheDir: t.TempDir(), AgentPath: agent}); err == nil {
			t.Fatal("no error")
		}
	})
	t.Run("missing tool", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := Build(ctx, BuildOptions{Name: NameMinimal, CacheDir: t.TempDir(), AgentPath: agent})
		if !errors.Is(err, ErrToolMissing) || !strings.Contains(err.Error(), `"apt"`) {
			t.Fatalf("err = %v", err)
		}
	})
}
