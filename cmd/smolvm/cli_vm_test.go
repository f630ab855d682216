package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestCLIVMLifecycle drives a real VM through the CLI as a user would.
func TestCLIVMLifecycle(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	t.Cleanup(func() {
		if t.Failed() {
			cli(t, dir, "cleanup", "--all") // do not leak VMs into later tests
		}
	})
	small := []string{"--image", "minimal", "--memory", "256", "--vcpus", "1"}

	// Bad input: exit 2, the field named, nothing created.
	if r := cli(t, dir, "create", "--memory", "5"); r.code != 2 || !strings.Contains(r.stderr, "mem_size_mib") {
		t.Fatalf("bad memory: %+v", r)
	}
	if r := cli(t, dir, "create", "--network", "maybe"); r.code != 2 || !strings.Contains(r.stderr, "--network") {
		t.Fatalf("bad network: %+v", r)
	}
	if r := cli(t, dir, "create", "--name", "Bad_Name!"); r.code != 2 || !strings.Contains(r.stderr, "vm_id") {
		t.Fatalf("bad name: %+v", r)
	}
	if r := cli(t, dir, "list", "--all", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("bad input created something: %s", r.stdout)
	}

	r := cli(t, dir, append([]string{"create", "--name", "c1", "--start", "--json", "-e", "GREETING=hi there"}, small...)...)
	var inf smolvm.VMInfo
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &inf) != nil || inf.Status != smolvm.StateRunning || inf.PID == 0 {
		t.Fatalf("create --start: %+v", r)
	}
	r = cli(t, dir, "exec", "c1", "--", "echo out; echo err >&2; exit 4")
	if r.code != 4 || r.stdout != "out\n" || r.stderr != "err\n" {
		t.Fatalf("exec exit 4: %+v", r)
	}
	if r := cli(t, dir, "exec", "c1", "--", "echo", "$GREETING"); r.stdout != "$GREETING\n" {
		t.Fatalf("argv words are quoted: %+v", r)
	}
	if r := cli(t, dir, "exec", "c1", "--", `echo "$GREETING"`); r.stdout != "hi there\n" {
		t.Fatalf("--env at create: %+v", r)
	}
	if r := cliIn(t, dir, "piped input\n", "exec", "-i", "c1", "--", "cat"); r.stdout != "piped input\n" {
		t.Fatalf("exec -i: %+v", r)
	}
	if r := cli(t, dir, "exec", "c1", "--timeout", "300ms", "--", "sleep 20"); r.code != 137 || !strings.Contains(r.stderr, "timed out") {
		t.Fatalf("exec --timeout: %+v", r)
	}
	if r := cli(t, dir, "exec", "c1", "-w", "/tmp", "-e", "X=1", "--", "pwd; echo $X"); r.stdout != "/tmp\n1\n" {
		t.Fatalf("exec -w -e: %+v", r)
	}
	// Files.
	local := filepath.Join(t.TempDir(), "in.sh")
	os.WriteFile(local, []byte("#!/bin/sh\necho script ran\n"), 0o755)
	if r := cli(t, dir, "file", "upload", "c1", local, "/root/bin/in.sh"); r.code != 0 {
		t.Fatalf("upload: %+v", r)
	}
	if r := cli(t, dir, "exec", "c1", "--", "/root/bin/in.sh"); r.stdout != "script ran\n" {
		t.Fatalf("uploaded script: %+v", r)
	}
	back := filepath.Join(t.TempDir(), "back.sh")
	if r := cli(t, dir, "file", "download", "c1", "/root/bin/in.sh", back); r.code != 0 {
		t.Fatalf("download: %+v", r)
	}
	if b, _ := os.ReadFile(back); string(b) != "#!/bin/sh\necho script ran\n" {
		t.Fatalf("downloaded %q", b)
	}
	if fi, _ := os.Stat(back); fi == nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode not kept: %v", fi)
	}
	if r := cli(t, dir, "file", "download", "c1", "/nope", back); r.code != 3 || !strings.Contains(r.stderr, "no such file") {
		t.Fatalf("download missing: %+v", r)
	}
	// Env vars.
	if r := cli(t, dir, "env", "set", "c1", "K1=a b", `K2=it's`); r.code != 0 {
		t.Fatalf("env set: %+v", r)
	}
	if r := cli(t, dir, "env", "list", "c1"); r.stdout != "GREETING\nK1\nK2\n" {
		t.Fatalf("env list: %+v", r)
	}
	if r := cli(t, dir, "env", "unset", "c1", "K1"); r.code != 0 {
		t.Fatalf("env unset: %+v", r)
	}
	r = cli(t, dir, "env", "list", "c1", "--show-values", "--json")
	var env map[string]string
	if json.Unmarshal([]byte(r.stdout), &env) != nil || env["K2"] != "it's" || len(env) != 2 {
		t.Fatalf("env list --json: %+v", r)
	}
	if r := cli(t, dir, "env", "set", "c1", "1X=y"); r.code != 2 {
		t.Fatalf("bad env key: %+v", r)
	}
	// Pause and resume.
	if r := cli(t, dir, "pause", "c1"); r.code != 0 || r.stdout != "paused c1\n" {
		t.Fatalf("pause: %+v", r)
	}
	if r := cli(t, dir, "list", "--status", "paused"); !strings.Contains(r.stdout, "c1") {
		t.Fatalf("list --status paused: %s", r.stdout)
	}
	if r := cli(t, dir, "resume", "c1"); r.code != 0 || r.stdout != "resumed c1\n" {
		t.Fatalf("resume: %+v", r)
	}
	if r := cli(t, dir, "exec", "c1", "--", "echo back"); r.stdout != "back\n" {
		t.Fatalf("exec after resume: %+v", r)
	}
	// Stop and start: the disk persists.
	cli(t, dir, "exec", "c1", "--", "echo kept > /root/kept")
	if r := cli(t, dir, "stop", "c1"); r.code != 0 || r.stdout != "stopped c1\n" {
		t.Fatalf("stop: %+v", r)
	}
	if r := cli(t, dir, "list"); strings.Contains(r.stdout, "c1") {
		t.Fatalf("plain list shows a stopped VM: %s", r.stdout)
	}
	if r := cli(t, dir, "list", "--all"); !strings.Contains(r.stdout, "stopped") {
		t.Fatalf("list --all: %s", r.stdout)
	}
	if r := cli(t, dir, "exec", "c1", "--", "true"); r.code != 4 || !strings.Contains(r.stderr, "not running") {
		t.Fatalf("exec on stopped: %+v", r)
	}
	if r := cli(t, dir, "start", "c1"); r.code != 0 || !strings.HasPrefix(r.stdout, "started c1") {
		t.Fatalf("start: %+v", r)
	}
	if r := cli(t, dir, "exec", "c1", "--", "cat /root/kept"); r.stdout != "kept\n" {
		t.Fatalf("after restart: %+v", r)
	}
	if r := cli(t, dir, "logs", "c1"); !strings.Contains(r.stdout, "SMOLVM_READY") {
		t.Fatalf("logs: %d bytes, no ready marker", len(r.stdout))
	}
	if r := cli(t, dir, "info", "c1"); !strings.Contains(r.stdout, "tcg") && !strings.Contains(r.stdout, "kvm") {
		t.Fatalf("info shows no acceleration: %s", r.stdout)
	}
	if r := cli(t, dir, "delete", "c1"); r.code != 0 {
		t.Fatalf("delete: %+v", r)
	}
	// run: create, run, delete; the exit code passes through.
	r = cli(t, dir, append(append([]string{"run"}, small...), "--", "echo ran; exit 3")...)
	if r.code != 3 || r.stdout != "ran\n" {
		t.Fatalf("run: %+v", r)
	}
	if r := cli(t, dir, "list", "--all", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("run left a VM: %s", r.stdout)
	}
	if pids := vmtest.ProcessesOf(dir); len(pids) > 0 {
		t.Fatalf("processes left: %v", pids)
	}
	for _, sub := range []string{"vms", "logs"} {
		if ents, _ := os.ReadDir(filepath.Join(dir, sub)); len(ents) > 0 {
			t.Fatalf("%s left: %v", sub, ents)
		}
	}
}
