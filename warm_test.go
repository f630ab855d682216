package smolvm

import (
	"bytes"
	"encoding/pem"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// TestTemplateFits lists which configurations may start from a warm
// template: only those that change nothing of the guest's devices, boot
// or disk.
func TestTemplateFits(t *testing.T) {
	base := VMConfig{Image: "minimal"}.WithDefaults()
	for _, tc := range []struct {
		name string
		edit func(*VMConfig)
		want bool
	}{
		{"image", func(*VMConfig) {}, true},
		{"env, egress, ssh port, limits", func(c *VMConfig) {
			c.EnvVars = map[string]string{"A": "1"}
			c.DenyOut = []string{"10.0.0.0/8"}
			c.SSHHostPort = 2222
			c.CPUQuota = 0.5
			c.DNSServers = []string{"1.1.1.1"}
		}, true},
		{"cold", func(c *VMConfig) { c.Cold = true }, false},
		{"from snapshot", func(c *VMConfig) { c.FromSnapshot = "s" }, false},
		{"mounts", func(c *VMConfig) { c.Mounts = []Mount{{HostPath: "/tmp", GuestPath: "/mnt"}} }, false},
		{"boot args", func(c *VMConfig) { c.BootArgs = "quiet" }, false},
		{"kernel", func(c *VMConfig) { c.KernelPath = "/k" }, false},
		{"initrd", func(c *VMConfig) { c.InitrdPath = "/i" }, false},
		{"rootfs", func(c *VMConfig) { c.RootfsPath = "/r" }, false},
		{"shared disk", func(c *VMConfig) { c.DiskMode = DiskShared }, false},
		{"grown disk", func(c *VMConfig) { c.DiskSizeMiB = 2048 }, false},
		{"attached interface", func(c *VMConfig) { c.AttachInterface = "eth0" }, false},
	} {
		c := base.WithDefaults()
		tc.edit(&c)
		if got := templateFits(c); got != tc.want {
			t.Errorf("%s: templateFits = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestTemplateKey checks that every input of a template's key changes it.
func TestTemplateKey(t *testing.T) {
	cfg := VMConfig{Image: "minimal"}.WithDefaults()
	b := boot{}
	k0 := templateKey("img1", cfg, b, "qemu", "QEMU 7.2", vmm.AccelTCG)
	if k0 != templateKey("img1", cfg, b, "qemu", "QEMU 7.2", vmm.AccelTCG) {
		t.Fatal("the key is not stable")
	}
	mem, cpus, net := cfg, cfg, cfg
	mem.MemSizeMiB = 1024
	cpus.VCPUCount = 1
	net.NoNetwork = true
	for name, k := range map[string]string{
		"image build": templateKey("img2", cfg, b, "qemu", "QEMU 7.2", vmm.AccelTCG),
		"backend":     templateKey("img1", cfg, b, "firecracker", "QEMU 7.2", vmm.AccelTCG),
		"vmm version": templateKey("img1", cfg, b, "qemu", "QEMU 8.0", vmm.AccelTCG),
		"accel":       templateKey("img1", cfg, b, "qemu", "QEMU 7.2", vmm.AccelKVM),
		"memory":      templateKey("img1", mem, b, "qemu", "QEMU 7.2", vmm.AccelTCG),
		"vcpus":       templateKey("img1", cpus, b, "qemu", "QEMU 7.2", vmm.AccelTCG),
		"network":     templateKey("img1", net, b, "qemu", "QEMU 7.2", vmm.AccelTCG),
		"ready check": templateKey("img1", cfg, boot{Ready: "test -e /x"}, "qemu", "QEMU 7.2", vmm.AccelTCG),
	} {
		if k == k0 {
			t.Errorf("changing the %s keeps the key", name)
		}
	}
	// Env vars and the like do not.
	env := cfg
	env.EnvVars = map[string]string{"A": "1"}
	if templateKey("img1", env, b, "qemu", "QEMU 7.2", vmm.AccelTCG) != k0 {
		t.Error("env vars change the key")
	}
	if !isTemplate(templatePrefix+"x.y") || isTemplate("warm-x") || validateSnapshotName(templatePrefix+"x.y") == nil {
		t.Error("template names must be a form users cannot create")
	}
}

// TestHostKeyTypes checks that every key type warm VMs renew is written in
// a form sshd reads back (OpenSSH private key).
func TestHostKeyTypes(t *testing.T) {
	for typ, gen := range hostKeyTypes {
		k, err := gen()
		if err != nil {
			t.Fatal(typ, err)
		}
		block, err := ssh.MarshalPrivateKey(k, "root@x")
		if err != nil {
			t.Fatal(typ, err)
		}
		back, err := ssh.ParsePrivateKey(pem.EncodeToMemory(block))
		if err != nil {
			t.Fatal(typ, err)
		}
		want, _ := ssh.NewPublicKey(k.Public())
		if !bytes.Equal(back.PublicKey().Marshal(), want.Marshal()) {
			t.Errorf("%s: the key read back differs", typ)
		}
	}
}
