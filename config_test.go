package smolvm

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestVMConfigDefaults(t *testing.T) {
	c := VMConfig{}.WithDefaults()
	if !regexp.MustCompile(`^vm-[0-9a-f]{8}$`).MatchString(c.VMID) {
		t.Fatalf("generated id %q", c.VMID)
	}
	if c.VCPUCount != 2 || c.MemSizeMiB != 512 || c.DiskMode != DiskIsolated || c.Backend != BackendAuto {
		t.Fatalf("defaults = %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if a, b := NewVMID(), NewVMID(); a == b {
		t.Fatalf("two generated ids are equal: %s", a)
	}
}

func TestVMConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     VMConfig
		field string
	}{
		{"ok", VMConfig{VMID: "web-1"}, ""},
		{"id upper", VMConfig{VMID: "Web"}, "vm_id"},
		{"id leading dash", VMConfig{VMID: "-web"}, "vm_id"},
		{"id trailing underscore", VMConfig{VMID: "web_"}, "vm_id"},
		{"id one char ok", VMConfig{VMID: "a"}, ""},
		{"id 64 ok", VMConfig{VMID: strings.Repeat("a", 64)}, ""},
		{"id 65", VMConfig{VMID: strings.Repeat("a", 65)}, "vm_id"},
		{"id dot", VMConfig{VMID: "a.b"}, "vm_id"},
		{"id slash", VMConfig{VMID: "a/b"}, "vm_id"},
		{"vcpu 0 defaults", VMConfig{VCPUCount: 0}, ""},
		{"vcpu negative", VMConfig{VCPUCount: -1}, "vcpu_count"},
		{"vcpu 33", VMConfig{VCPUCount: 33}, "vcpu_count"},
		{"vcpu 32 ok", VMConfig{VCPUCount: 32}, ""},
		{"mem 127", VMConfig{MemSizeMiB: 127}, "mem_size_mib"},
		{"mem 128 ok", VMConfig{MemSizeMiB: 128}, ""},
		{"mem 16385", VMConfig{MemSizeMiB: 16385}, "mem_size_mib"},
		{"disk mode bad", VMConfig{DiskMode: "copy"}, "disk_mode"},
		{"disk mode shared ok", VMConfig{DiskMode: DiskShared}, ""},
		{"disk size negative", VMConfig{DiskSizeMiB: -5}, "disk_size_mib"},
		{"disk size shared", VMConfig{DiskSizeMiB: 1024, DiskMode: DiskShared}, "disk_size_mib"},
		{"backend bad", VMConfig{Backend: "kvmtool"}, "backend"},
		{"backend firecracker ok", VMConfig{Backend: BackendFirecracker}, ""},
		{"env key digit", VMConfig{EnvVars: map[string]string{"1X": "v"}}, "env_vars"},
		{"env key dash", VMConfig{EnvVars: map[string]string{"A-B": "v"}}, "env_vars"},
		{"env key empty", VMConfig{EnvVars: map[string]string{"": "v"}}, "env_vars"},
		{"env ok", VMConfig{EnvVars: map[string]string{"_A1": "it's $x\n"}}, ""},
		{"ssh port bad", VMConfig{SSHHostPort: 70000}, "ssh_host_port"},
		{"ssh port -2", VMConfig{SSHHostPort: -2}, "ssh_host_port"},
		{"ssh port auto ok", VMConfig{SSHHostPort: SSHPortAuto}, ""},
		{"kernel relative", VMConfig{KernelPath: "vmlinux"}, "kernel_path"},
		{"rootfs relative", VMConfig{RootfsPath: "./r.ext4"}, "rootfs_path"},
		{"boot args newline", VMConfig{BootArgs: "a\nb"}, "boot_args"},
		{"dns ok", VMConfig{DNSServers: []string{"192.0.2.53"}}, ""},
		{"dns not ip", VMConfig{DNSServers: []string{"dns.example"}}, "dns_servers"},
		{"dns ipv6", VMConfig{DNSServers: []string{"::1"}}, "dns_servers"},
		{"dns too many", VMConfig{DNSServers: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"}}, "dns_servers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v, want a ConfigError on %s", err, tc.field)
			}
		})
	}
}

func TestVMConfigJSONNames(t *testing.T) {
	c := VMConfig{VMID: "a", VCPUCount: 1, MemSizeMiB: 256, KernelPath: "/k", InitrdPath: "/i", RootfsPath: "/r",
		BootArgs: "quiet", DiskMode: DiskIsolated, DiskSizeMiB: 1024, Backend: BackendQEMU, EnvVars: map[string]string{"A": "1"}, SSHHostPort: 2200}
	b, _ := json.Marshal(c)
	for _, k := range []string{"vm_id", "vcpu_count", "mem_size_mib", "kernel_path", "initrd_path", "rootfs_path", "boot_args", "disk_mode", "disk_size_mib", "backend", "env_vars", "ssh_host_port"} {
		if !strings.Contains(string(b), `"`+k+`":`) {
			t.Errorf("json %s lacks %s", b, k)
		}
	}
	var back VMConfig
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(back)
	if string(b) != string(b2) {
		t.Fatalf("round trip:\n%s\n%s", b, b2)
	}
}

func TestCommandResult(t *testing.T) {
	r := CommandResult{ExitCode: 0, Stdout: "hello\n"}
	if !r.OK() || r.Output() != "hello" {
		t.Fatalf("%+v: OK %v Output %q", r, r.OK(), r.Output())
	}
	r = CommandResult{ExitCode: 3, Stdout: "a\n\n"}
	if r.OK() || r.Output() != "a\n" {
		t.Fatalf("%+v: OK %v Output %q", r, r.OK(), r.Output())
	}
	b, _ := json.Marshal(r)
	if string(b) != `{"exit_code":3,"stdout":"a\n\n","stderr":"","truncated":false}` {
		t.Fatalf("json %s", b)
	}
}

func TestParseVMState(t *testing.T) {
	for _, s := range []string{"created", "running", "paused", "stopped", "error"} {
		if st, err := ParseVMState(s); err != nil || string(st) != s {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if _, err := ParseVMState("zombie"); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("bad state: %v", err)
	}
}
