package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm"
)

// recordVM records a VM that is never booted (explicit placeholder boot
// files) with env vars.
func recordVM(t *testing.T, dir, id string, env map[string]string) {
	t.Helper()
	ctx := context.Background()
	cfg := smolvm.VMConfig{VMID: id, EnvVars: env, NoNetwork: true}
	for _, p := range []*string{&cfg.KernelPath, &cfg.InitrdPath, &cfg.RootfsPath} {
		*p = filepath.Join(dir, "boot-file")
		os.WriteFile(*p, []byte("not booted"), 0o644)
	}
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vm, err := h.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	vm.Release()
}

// info and list show env var names, never values, unless --show-values.
func TestCLISecretsHidden(t *testing.T) {
	dir := t.TempDir()
	const secret = "sk-very-secret-123"
	recordVM(t, dir, "sec", map[string]string{"API_KEY": secret})
	for _, argv := range [][]string{{"info", "sec", "--json"}, {"list", "--json"}, {"info", "sec"}, {"list"}} {
		r := cli(t, dir, argv...)
		if r.code != 0 || strings.Contains(r.stdout, secret) {
			t.Errorf("%v shows the secret: %+v", argv, r)
		}
		if argv[0] == "info" && !strings.Contains(r.stdout, "API_KEY") {
			t.Errorf("%v hides the name too: %s", argv, r.stdout)
		}
	}
	r := cli(t, dir, "info", "sec", "--json")
	var inf smolvm.VMInfo
	if err := json.Unmarshal([]byte(r.stdout), &inf); err != nil || inf.Config.EnvVars["API_KEY"] != smolvm.RedactedValue {
		t.Fatalf("info --json env %v (%v)", inf.Config.EnvVars, err)
	}
	for _, argv := range [][]string{{"info", "sec", "--json", "--show-values"}, {"list", "--json", "--show-values"}} {
		if r := cli(t, dir, argv...); r.code != 0 || !strings.Contains(r.stdout, secret) {
			t.Errorf("%v does not show the value: %+v", argv, r)
		}
	}
}

// logs removes the terminal control sequences a guest printed, unless
// --raw; --tail reads the last lines, across the rotated half.
func TestCLILogsSanitisedAndTail(t *testing.T) {
	dir := t.TempDir()
	recordVM(t, dir, "lg", nil)
	logs := filepath.Join(dir, "logs")
	os.MkdirAll(logs, 0o700)
	os.WriteFile(filepath.Join(logs, "lg.log.1"), []byte("older line\n"), 0o600)
	os.WriteFile(filepath.Join(logs, "lg.log"), []byte("boot \x1b]0;pwned\x07ok\r\n\x1b[2Jcleared\nlast line\n"), 0o600)
	r := cli(t, dir, "logs", "lg")
	if r.code != 0 || strings.ContainsRune(r.stdout, 0x1b) || strings.ContainsRune(r.stdout, 0x07) ||
		!strings.HasPrefix(r.stdout, "older line\nboot ok") || !strings.HasSuffix(r.stdout, "cleared\nlast line\n") {
		t.Fatalf("logs: %q (%+v)", r.stdout, r)
	}
	if r := cli(t, dir, "logs", "--raw", "lg"); !strings.Contains(r.stdout, "\x1b]0;pwned\x07") {
		t.Fatalf("logs --raw: %q", r.stdout)
	}
	if r := cli(t, dir, "logs", "--tail", "2", "lg"); r.stdout != "cleared\nlast line\n" {
		t.Fatalf("logs --tail 2: %q", r.stdout)
	}
	if r := cli(t, dir, "logs", "-n", "5", "lg"); !strings.HasPrefix(r.stdout, "older line\n") {
		t.Fatalf("logs -n 5 does not reach the rotated half: %q", r.stdout)
	}
}

// A console cap out of range is a usage error naming the field.
func TestCLIConsoleLogSizeRange(t *testing.T) {
	dir := t.TempDir()
	r := cli(t, dir, "create", "--console-log-size", "4096", "--network", "off")
	if r.code != 2 || !strings.Contains(r.stderr, "console_log_max_bytes") {
		t.Fatalf("create --console-log-size 4096: %+v", r)
	}
}
