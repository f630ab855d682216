package image

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// testCacheDir is the image cache shared by test runs and packages, so the
// Debian kernel is downloaded once: $SMOLVM_TEST_CACHE, or
// <os.TempDir()>/smolvm-test-cache.
func testCacheDir(t testing.TB) string {
	d := os.Getenv("SMOLVM_TEST_CACHE")
	if d == "" {
		d = filepath.Join(os.TempDir(), "smolvm-test-cache")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
	agentDir  string
)

// buildAgent builds cmd/smolvm-agent with go build (default cgo setting)
// into a temporary directory, checks it has no PT_INTERP, and returns its
// path. It is built once per test binary.
func buildAgent(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		agentDir, agentErr = os.MkdirTemp("", "smolvm-agent-")
		if agentErr != nil {
			return
		}
		agentPath = filepath.Join(agentDir, "smolvm-agent")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "../..")
		cmd := exec.Command("go", "build", "-trimpath", "-o", agentPath, "./cmd/smolvm-agent")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			agentErr = &buildError{string(out), err}
		}
	})
	if agentErr != nil {
		t.Fatalf("build agent: %v", agentErr)
	}
	f, err := elf.Open(agentPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("agent %s has PT_INTERP: not static", agentPath)
		}
	}
	return agentPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		buildHelper()
		return
	}
	code := m.Run()
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

// buildMinimal builds (or finds) the minimal image in the shared test
// cache. It skips the test only when apt cannot fetch packages.
func buildMinimal(t testing.TB) *Image {
	t.Helper()
	agent := buildAgent(t)
	img, err := Build(context.Background(), BuildOptions{Name: NameMinimal, CacheDir: testCacheDir(t), AgentPath: agent})
	if err != nil {
		if strings.Contains(err.Error(), "apt-get download") || strings.Contains(err.Error(), "apt-cache") {
			t.Skipf("apt cannot fetch the Debian kernel here: %v", err)
		}
		t.Fatalf("build minimal image: %v", err)
	}
	return img
}

// tscKHz returns the host TSC frequency for tsc_early_khz (see vmm.TSCkHz).
func tscKHz() int { return vmm.TSCkHz() }
