package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestMain runs the tests inside a private network namespace (vmtest), with
// the real smolvm binary built from this module.
func TestMain(m *testing.M) { vmtest.Main(m) }

type result struct {
	stdout, stderr string
	code           int
}

func cli(t *testing.T, dataDir string, argv ...string) result {
	t.Helper()
	return cliIn(t, dataDir, "", argv...)
}

// cliIn runs the built smolvm binary with stdin.
func cliIn(t *testing.T, dataDir, stdin string, argv ...string) result {
	t.Helper()
	binary := filepath.Join(vmtest.Binaries(t), "smolvm")
	cmd := exec.Command(binary, append([]string{"--data-dir", dataDir}, argv...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{o.String(), e.String(), code}
}

func TestCLIListInfoDelete(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if r := cli(t, dir, "list"); r.code != 0 || !strings.Contains(r.stdout, "No VMs") {
		t.Fatalf("empty list: %+v", r)
	}
	if r := cli(t, dir, "list", "--json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("empty list json: %+v", r)
	}
	for _, id := range []string{"alpha", "beta"} {
		cfg := smolvm.VMConfig{VMID: id, SSHHostPort: smolvm.SSHPortAuto}
		// Explicit boot files: this test records VMs and boots none.
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
	r := cli(t, dir, "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.HasPrefix(lines[1], "alpha") ||
		!strings.Contains(lines[1], "172.16.0.2") || !strings.Contains(lines[2], "172.16.0.3") {
		t.Fatalf("list: %+v", r)
	}
	r = cli(t, dir, "list", "--json")
	var vms []smolvm.VMInfo
	if err := json.Unmarshal([]byte(r.stdout), &vms); err != nil || len(vms) != 2 || vms[1].Network.TapDevice() != "smol1" {
		t.Fatalf("list json %q: %v", r.stdout, err)
	}
	if r := cli(t, dir, "list", "--status", "running", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("running: %+v", r)
	}
	if r := cli(t, dir, "list", "--status", "zombie"); r.code != 2 || !strings.Contains(r.stderr, "status") {
		t.Fatalf("bad status: %+v", r)
	}
	r = cli(t, dir, "info", "alpha")
	if r.code != 0 || !strings.Contains(r.stdout, "172.16.0.2/24") || !strings.Contains(r.stdout, "smolvm ssh alpha   (localhost port 22") {
		t.Fatalf("info: %+v", r)
	}
	r = cli(t, dir, "info", "beta", "--json")
	var inf map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &inf); err != nil {
		t.Fatal(err)
	}
	net := inf["network"].(map[string]any)
	if inf["vm_id"] != "beta" || net["guest_ip"] != "172.16.0.3" || net["guest_mac"] != "AA:FC:00:00:00:02" || inf["config"].(map[string]any)["mem_size_mib"] != 512.0 {
		t.Fatalf("info json: %s", r.stdout)
	}
	// Unknown ids: clear message, exit 3; bad ids: the rule; bad flags and arity: exit 2.
	if r := cli(t, dir, "info", "nope"); r.code != 3 || !strings.Contains(r.stderr, "nope") || !strings.Contains(r.stderr, "no such VM") {
		t.Fatalf("unknown id: %+v", r)
	}
	if r := cli(t, dir, "info", "NOPE"); r.code != 2 || !strings.Contains(r.stderr, "vm_id") {
		t.Fatalf("invalid id: %+v", r)
	}
	if r := cli(t, dir, "list", "--frobnicate"); r.code != 2 || !strings.Contains(r.stderr, "--frobnicate") {
		t.Fatalf("bad flag: %+v", r)
	}
	if r := cli(t, dir, "info"); r.code != 2 {
		t.Fatalf("missing arg: %+v", r)
	}
	if r := cli(t, dir, "frobnicate"); r.code != 2 {
		t.Fatalf("unknown command: %+v", r)
	}
	// Delete several; one unknown id fails the command but the others go.
	r = cli(t, dir, "delete", "alpha", "ghost")
	if r.code != 3 || !strings.Contains(r.stdout, "deleted alpha") || !strings.Contains(r.stderr, "ghost") {
		t.Fatalf("delete: %+v", r)
	}
	r = cli(t, dir, "list", "--json")
	json.Unmarshal([]byte(r.stdout), &vms)
	if len(vms) != 1 || vms[0].VMID != "beta" {
		t.Fatalf("after delete: %s", r.stdout)
	}
	if r := cli(t, dir, "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "smolvm ") {
		t.Fatalf("version: %+v", r)
	}
}

// TestDoctorJSON checks doctor's stable JSON.
func TestDoctorJSON(t *testing.T) {
	dir := t.TempDir()
	r := cli(t, dir, "doctor", "--json")
	var checks []map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, r.stdout)
	}
	byName := map[string]map[string]string{}
	for _, c := range checks {
		for _, k := range []string{"name", "status", "detail"} {
			if c[k] == "" {
				t.Fatalf("check without %s: %v", k, c)
			}
		}
		byName[c["name"]] = c
	}
	hasFail := false
	for _, c := range checks {
		hasFail = hasFail || c["status"] == "fail"
	}
	if (r.code != 0) != hasFail {
		t.Fatalf("exit %d with failures=%v", r.code, hasFail)
	}
	// The kvm finding and the acceleration agree, whatever this host has
	// (each KVM situation is a table row in the SDK's TestDoctor).
	tcg := strings.Contains(byName["acceleration"]["detail"], "tcg")
	if tcg != (byName["kvm"]["status"] == "warn") {
		t.Fatalf("kvm and acceleration disagree: %v %v", byName["acceleration"], byName["kvm"])
	}
	// --strict turns the warnings (TCG here, images not built in this data dir) into a failure.
	if r := cli(t, dir, "doctor", "--strict"); r.code == 0 {
		t.Fatalf("doctor --strict with warnings exited 0:\n%s", r.stdout)
	}
}
