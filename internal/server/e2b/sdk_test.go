package e2b_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// sdkVersion is the e2b npm package the compatibility suite runs.
const sdkVersion = "2.51.0"

// sdkDirEnv passes the installed SDK's directory to the test binary that
// vmtest re-executes inside the namespace (which has no network).
const sdkDirEnv = "SMOLVM_TEST_E2B_SDK"

func TestMain(m *testing.M) {
	if vmtest.Netns() == "" && os.Geteuid() == 0 && os.Getenv(sdkDirEnv) == "" {
		dir, err := installSDK()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2b test: cannot install the e2b SDK:", err)
			os.Exit(1)
		}
		os.Setenv(sdkDirEnv, dir)
	}
	vmtest.MainWith(m, "default")
}

// installSDK installs e2b@sdkVersion with npm into the shared test cache
// (once) and returns the directory holding node_modules.
func installSDK() (string, error) {
	dir := filepath.Join(vmtest.CacheDir(), "npm-e2b-"+sdkVersion)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b", "package.json")); err == nil {
		return dir, nil
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return "", fmt.Errorf("npm not found (install Node.js and npm)")
	}
	tmp, err := os.MkdirTemp(vmtest.CacheDir(), "npm-e2b-tmp-")
	if err != nil {
		if err := os.MkdirAll(vmtest.CacheDir(), 0o755); err != nil {
			return "", err
		}
		if tmp, err = os.MkdirTemp(vmtest.CacheDir(), "npm-e2b-tmp-"); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "package.json"), []byte(`{"name":"smolvm-e2b-test","private":true,"type":"module"}`), 0o644); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "e2b@"+sdkVersion)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("npm install e2b@%s: %v: %s", sdkVersion, err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, "node_modules", "e2b")); serr == nil {
			return dir, nil // another run won
		}
		return "", err
	}
	return dir, nil
}

// freePort returns a loopback TCP port nobody listens on now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestSDK runs testdata/sdk.mjs, the unmodified e2b SDK, against a real
// `smolvm serve` whose sandboxes are real VMs of the default image.
func TestSDK(t *testing.T) {
	vmtest.Require(t)
	sdk := os.Getenv(sdkDirEnv)
	if sdk == "" {
		t.Skip("the e2b SDK is installed by TestMain as root")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("node not found")
	}
	bin := vmtest.Setup(t)
	script, err := os.ReadFile("testdata/sdk.mjs")
	if err != nil {
		t.Fatal(err)
	}
	// ESM resolves "e2b" from the script's own directory.
	scriptPath := filepath.Join(sdk, fmt.Sprintf("sdk-%d.mjs", os.Getpid()))
	if err := os.WriteFile(scriptPath, script, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(scriptPath)

	data := t.TempDir()
	const key = "smolvm-test-key-0123456789abcdef0123456789abcdef"
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := exec.Command(filepath.Join(bin, "smolvm"), "serve", "--listen", addr, "--data-dir", data)
	srv.Env = append(os.Environ(), "SMOLVM_API_KEY="+key)
	logPath := filepath.Join(t.TempDir(), "serve.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			srv.Process.Kill()
			<-done
		}
		logf.Close()
		// Nothing of the suite's sandboxes may be left.
		out, _ := exec.Command(filepath.Join(bin, "smolvm"), "--data-dir", data, "list", "--all", "--json").Output()
		if s := strings.TrimSpace(string(out)); s != "[]" {
			t.Errorf("sandboxes left after the suite: %s", s)
			exec.Command(filepath.Join(bin, "smolvm"), "--data-dir", data, "cleanup", "--all").Run()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("server log:\n%s", b)
		}
	}()
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not answer /health: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	node := exec.CommandContext(ctx, "node", scriptPath)
	node.Dir = sdk
	node.Env = append(os.Environ(), "E2B_API_URL="+base, "E2B_SANDBOX_URL="+base, "E2B_API_KEY="+key,
		"E2B_TEST_RUN="+t.Name())
	out, err := node.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	node.Stderr = os.Stderr
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	done := false
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "done":
			done = true
		case strings.HasPrefix(line, "ok "):
			name, detail, _ := strings.Cut(strings.TrimPrefix(line, "ok "), " {")
			seen[name] = true
			t.Run(name, func(t *testing.T) {
				if detail != "" {
					t.Logf("{%s", detail)
				}
			})
		case strings.HasPrefix(line, "FAIL "):
			name, msg, _ := strings.Cut(strings.TrimPrefix(line, "FAIL "), ": ")
			seen[name] = true
			t.Run(name, func(t *testing.T) { t.Error(msg) })
		default:
			t.Log(line)
		}
	}
	if err := node.Wait(); err != nil {
		t.Errorf("node: %v", err)
	}
	if !done {
		t.Error("the SDK script stopped before its end")
	}
	for _, want := range []string{"create", "run stdout stderr exit", "run nonzero raises", "run envs cwd user", "run streaming callbacks",
		"run timeoutMs", "background server list connect kill", "sendStdin closeStdin", "files text", "files binary 256",
		"files list exists makeDir rename remove getInfo", "watchDir", "pty input resize", "list connect setTimeout", "kill"} {
		if !seen[want] {
			t.Errorf("check %q did not run", want)
		}
	}
}
