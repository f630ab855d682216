package main

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm"
)

// dirState lists every file under dir except the database, so a test can
// see that a command changed nothing on disk.
func dirState(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !strings.HasPrefix(filepath.Base(p), "smolvm.db") {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// TestBadInput feeds the CLI binary bad flag values, config fields and ids:
// each gets a message naming what is wrong and a non-zero exit code, and
// nothing changes.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	cfg := smolvm.VMConfig{VMID: "existing"}
	for _, p := range []*string{&cfg.KernelPath, &cfg.InitrdPath, &cfg.RootfsPath} {
		*p = filepath.Join(dir, "boot-file")
		os.WriteFile(*p, []byte("not booted"), 0o644)
	}
	h, err := smolvm.Open(context.Background(), smolvm.HostOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cfg.NoNetwork = true
	vm, err := h.Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	vm.Release()
	local := filepath.Join(t.TempDir(), "f")
	os.WriteFile(local, []byte("x"), 0o644)

	for _, tc := range []struct {
		argv []string
		code int
		want string // in stderr
	}{
		{[]string{"create", "--memory", "5"}, 2, "mem_size_mib"},
		{[]string{"create", "--memory", "99999"}, 2, "mem_size_mib"},
		{[]string{"create", "--memory", "lots"}, 2, "--memory"},
		{[]string{"create", "--memory"}, 2, "--memory"},
		{[]string{"create", "--vcpus", "0"}, 2, "vcpu_count"},
		{[]string{"create", "--vcpus", "33"}, 2, "vcpu_count"},
		{[]string{"create", "--name", "Bad Name"}, 2, "vm_id"},
		{[]string{"create", "--name", "-lead"}, 2, "vm_id"},
		{[]string{"create", "--name", strings.Repeat("a", 65)}, 2, "vm_id"},
		{[]string{"create", "--disk-mode", "copy"}, 2, "disk_mode"},
		{[]string{"create", "--disk-size", "-1"}, 2, "disk_size_mib"},
		{[]string{"create", "--disk-mode", "shared", "--disk-size", "100"}, 2, "disk_size_mib"},
		{[]string{"create", "--backend", "kvmtool"}, 2, "backend"},
		{[]string{"create", "--vcpus", "2", "--cpu-quota", "3"}, 2, "cpu_quota"},
		{[]string{"create", "--cpu-quota", "-0.5"}, 2, "cpu_quota"},
		{[]string{"create", "--cpu-quota", "half"}, 2, "--cpu-quota"},
		{[]string{"create", "--disk-bps", "100"}, 2, "disk_bps"},
		{[]string{"create", "--disk-iops", "-1"}, 2, "disk_iops"},
		{[]string{"create", "--accel", "hvf"}, 2, "--accel"},
		{[]string{"create", "--network", "maybe"}, 2, "--network"},
		{[]string{"create", "--ssh-port", "0"}, 2, "--ssh-port"},
		{[]string{"create", "--ssh-port", "70000"}, 2, "--ssh-port"},
		{[]string{"create", "--ssh-port", "ssh"}, 2, "--ssh-port"},
		{[]string{"create", "--network", "off", "--ssh-port", "2222"}, 2, "ssh_host_port"},
		{[]string{"create", "--network", "off", "--dns", "192.0.2.53"}, 2, "dns_servers"},
		{[]string{"create", "--dns", "resolver"}, 2, "dns_servers"},
		{[]string{"create", "-e", "NOEQUALS"}, 2, "KEY=VALUE"},
		{[]string{"create", "-e", "1X=y"}, 2, "env_vars"},
		{[]string{"create", "--boot-timeout", "-5s"}, 2, "--boot-timeout"},
		{[]string{"create", "stray-arg"}, 2, "stray-arg"},
		{[]string{"create", "--name", "existing", "--network", "off"}, 1, "already exists"},
		{[]string{"create", "--image", "nonexistent", "--network", "off"}, 3, "nonexistent"},
		{[]string{"info"}, 2, "accepts 1 arg"},
		{[]string{"info", "nope"}, 3, "no such VM"},
		{[]string{"info", "BAD!"}, 2, "vm_id"},
		{[]string{"delete", "nope"}, 3, "no such VM"},
		{[]string{"start", "nope"}, 3, "no such VM"},
		{[]string{"stop", "nope"}, 3, "no such VM"},
		{[]string{"stop", "existing", "--timeout", "soon"}, 2, "--timeout"},
		{[]string{"exec", "nope", "--", "true"}, 3, "no such VM"},
		{[]string{"exec", "existing", "--", "true"}, 4, "not running"},
		{[]string{"exec", "existing"}, 2, "requires at least 2 arg"},
		{[]string{"exec", "existing", "--timeout", "x", "--", "true"}, 2, "--timeout"},
		{[]string{"exec", "existing", "-e", "BAD-KEY=1", "--", "true"}, 2, "env_vars"},
		{[]string{"file", "upload", "existing", "/does/not/exist", "/root/x"}, 3, "/does/not/exist"},
		{[]string{"file", "upload", "existing", local}, 2, "accepts 3 arg"},
		{[]string{"env", "set", "existing", "NOEQ"}, 2, "KEY=VALUE"},
		{[]string{"env", "unset", "existing", "1X"}, 2, "env_vars"},
		{[]string{"port", "expose", "existing", "http"}, 2, "http"},
		{[]string{"port", "expose", "existing", "0"}, 2, "guest_port"},
		{[]string{"port", "expose", "existing", "80"}, 4, "no network"},
		{[]string{"port", "close", "existing", "abc"}, 2, "abc"},
		{[]string{"list", "--status", "zombie"}, 2, "status"},
		{[]string{"list", "--all", "--status", "running"}, 2, "--all"},
		{[]string{"image", "build", "huge"}, 2, "huge"},
		{[]string{"image", "rm", "nonexistent"}, 3, "nonexistent"},
		{[]string{"doctor", "--backend", "xen"}, 2, "--backend"},
		{[]string{"logs", "nope"}, 3, "no such VM"},
		{[]string{"logs", "existing"}, 1, "never started"},
		{[]string{"run"}, 2, "requires at least 1 arg"},
		{[]string{"ssh", "existing"}, 4, "not running"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"list", "--frobnicate"}, 2, "--frobnicate"},
	} {
		t.Run(strings.Join(tc.argv, " "), func(t *testing.T) {
			beforeList := cli(t, dir, "list", "--all", "--json").stdout
			beforeFiles := dirState(t, dir)
			r := cli(t, dir, tc.argv...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d (want %d), stderr %q (want it to name %q)", r.code, tc.code, r.stderr, tc.want)
			}
			if !strings.HasPrefix(r.stderr, "smolvm: ") || strings.Count(r.stderr, "smolvm: ") != 1 {
				t.Errorf("the error is not printed exactly once: %q", r.stderr)
			}
			if after := cli(t, dir, "list", "--all", "--json").stdout; after != beforeList {
				t.Errorf("state changed:\n%s\n->\n%s", beforeList, after)
			}
			if after := dirState(t, dir); after != beforeFiles {
				t.Errorf("files changed:\n%s\n->\n%s", beforeFiles, after)
			}
		})
	}
}
