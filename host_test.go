package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestDefaultDataDir(t *testing.T) {
	t.Setenv(DataDirEnv, "/tmp/x")
	if d := DefaultDataDir(); d != "/tmp/x" {
		t.Fatalf("with env: %s", d)
	}
	t.Setenv(DataDirEnv, "")
	want := "/var/lib/smolvm"
	if os.Geteuid() != 0 {
		t.Setenv("XDG_STATE_HOME", "/tmp/state")
		want = "/tmp/state/smolvm"
	}
	if d := DefaultDataDir(); d != want {
		t.Fatalf("DefaultDataDir = %s, want %s", d, want)
	}
}

// bootFiles returns cfg with explicit kernel, initrd and root disk files, so
// Create records a VM without needing a built image (these tests boot nothing).
func bootFiles(t *testing.T, cfg VMConfig) VMConfig {
	t.Helper()
	d := t.TempDir()
	for _, p := range []*string{&cfg.KernelPath, &cfg.InitrdPath, &cfg.RootfsPath} {
		f, err := os.CreateTemp(d, "boot")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("not booted by this test")
		f.Close()
		*p = f.Name()
	}
	return cfg
}

func TestCreateInfoListDelete(t *testing.T) {
	ctx := context.Background()
	h := testHost(t, t.TempDir())
	vm, err := h.Create(ctx, bootFiles(t, VMConfig{VMID: "web", EnvVars: map[string]string{"A": "1"}, SSHHostPort: SSHPortAuto}))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Release()
	inf := vm.Info()
	if inf.Status != StateCreated || inf.Network == nil || inf.Network.GuestIP() != "172.16.0.2" ||
		inf.Network.TapDevice() != "smol0" || inf.Network.GuestMAC() != "AA:FC:00:00:00:01" || inf.Network.SSHHostPort() < 2200 {
		t.Fatalf("info = %+v network %v", inf, inf.Network)
	}
	if vm.GetIP() != "172.16.0.2" || inf.Config.SSHHostPort != inf.Network.SSHHostPort() {
		t.Fatalf("GetIP %s, config port %d", vm.GetIP(), inf.Config.SSHHostPort)
	}

	// Mutating what Info returned changes nothing recorded.
	inf.Config.EnvVars["A"] = "changed"
	inf.Config.VCPUCount = 9
	inf.Status = StateRunning
	other, err := h.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	oi := other.Info()
	other.Release()
	if oi.Config.EnvVars["A"] != "1" || oi.Config.VCPUCount != 2 || oi.Status != StateCreated {
		t.Fatalf("stored VM changed: %+v", oi)
	}
	if vm.Info().Config.EnvVars["A"] != "1" {
		t.Fatal("the handle's own info changed")
	}

	// A second VM gets the next lease; a VM without network gets none.
	vm2, err := h.Create(ctx, bootFiles(t, VMConfig{VMID: "db"}))
	if err != nil {
		t.Fatal(err)
	}
	if vm2.GetIP() != "172.16.0.3" || vm2.Info().Network.SSHHostPort() != 0 {
		t.Fatalf("second VM: %v", vm2.Info().Network)
	}
	vm2.Release()
	vm3, err := h.Create(ctx, bootFiles(t, VMConfig{VMID: "offline", NoNetwork: true}))
	if err != nil {
		t.Fatal(err)
	}
	if vm3.Info().Network != nil || vm3.GetIP() != "" {
		t.Fatalf("offline VM has network %v", vm3.Info().Network)
	}
	vm3.Release()

	// Duplicate ids, bad configs: typed errors, nothing recorded.
	if _, err := h.Create(ctx, bootFiles(t, VMConfig{VMID: "web"})); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	_, err = h.Create(ctx, bootFiles(t, VMConfig{VMID: "bad", MemSizeMiB: 1}))
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "mem_size_mib" {
		t.Fatalf("bad memory: %v", err)
	}
	if _, err := h.Create(ctx, bootFiles(t, VMConfig{VMID: "bad2", SSHHostPort: 2300, NoNetwork: true})); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("ssh without network: %v", err)
	}

	all, err := h.List(ctx, ListOptions{})
	if err != nil || len(all) != 3 || all[0].VMID != "web" || all[1].VMID != "db" || all[2].VMID != "offline" {
		t.Fatalf("list = %+v, %v", all, err)
	}
	none, _ := h.List(ctx, ListOptions{Status: StateRunning})
	if len(none) != 0 {
		t.Fatalf("running = %+v", none)
	}

	// Info JSON uses snake_case and embeds the network.
	b, _ := json.Marshal(all[0])
	var m map[string]any
	json.Unmarshal(b, &m)
	if m["vm_id"] != "web" || m["status"] != "created" || m["network"].(map[string]any)["tap_device"] != "smol0" {
		t.Fatalf("info json: %s", b)
	}

	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Get(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := h.Get(ctx, "Not Valid"); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("invalid id: %v", err)
	}
	// The freed lease is reused.
	vm4, err := h.Create(ctx, bootFiles(t, VMConfig{VMID: "again"}))
	if err != nil {
		t.Fatal(err)
	}
	defer vm4.Release()
	if vm4.GetIP() != "172.16.0.2" {
		t.Fatalf("lease not reused: %s", vm4.GetIP())
	}
	if _, err := os.Stat(filepath.Join(vm4.h.dir, "smolvm.db")); err != nil {
		t.Fatal(err)
	}
}
