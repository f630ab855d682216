package smolvm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm"
)

// TestPublicAPI builds against the public API only, as a program in
// another module would.
func TestPublicAPI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: dir, HostDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.DataDir() != dir {
		t.Errorf("DataDir = %s", h.DataDir())
	}
	vms, err := h.List(ctx, smolvm.ListOptions{})
	if err != nil || len(vms) != 0 {
		t.Fatalf("List = %v, %v", vms, err)
	}
	// Each error kind, through errors.Is, from real calls.
	if _, err := h.Get(ctx, "nope"); !errors.Is(err, smolvm.ErrNotFound) || errors.Is(err, smolvm.ErrBackend) {
		t.Errorf("Get of a missing VM: %v", err)
	}
	if _, err := h.Get(ctx, "Not Valid"); !errors.Is(err, smolvm.ErrInvalidConfig) {
		t.Errorf("Get of a bad id: %v", err)
	}
	_, err = h.Create(ctx, smolvm.VMConfig{MemSizeMiB: 1})
	var ce *smolvm.ConfigError
	if !errors.Is(err, smolvm.ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != "mem_size_mib" {
		t.Errorf("Create with 1 MiB: %v", err)
	}
	_, err = h.Create(ctx, smolvm.VMConfig{Image: "no-such-image", NoNetwork: true})
	if !errors.Is(err, smolvm.ErrNotFound) || errors.Is(err, smolvm.ErrBackend) || errors.Is(err, smolvm.ErrImage) || !strings.Contains(err.Error(), "no-such-image") {
		t.Errorf("Create from a missing image: %v", err)
	}
	_, err = h.Create(ctx, smolvm.VMConfig{Backend: "kvmtool"})
	if !errors.Is(err, smolvm.ErrInvalidConfig) || !strings.Contains(err.Error(), "backend") {
		t.Errorf("unknown backend: %v", err)
	}
	// Exactly one kind per error.
	for _, k := range []error{smolvm.ErrNotFound, smolvm.ErrAlreadyExists, smolvm.ErrInvalidConfig, smolvm.ErrNetwork, smolvm.ErrBackend,
		smolvm.ErrTimeout, smolvm.ErrCommandUnavailable, smolvm.ErrImage, smolvm.ErrState, smolvm.ErrUnavailable} {
		if k == smolvm.ErrNotFound {
			continue
		}
		if _, err := h.Get(ctx, "nope"); errors.Is(err, k) {
			t.Errorf("a missing VM also matches %v", k)
		}
	}
}

// TestJSONOfExportedTypes: every exported type marshals the same from a
// value and from a pointer, and NetworkConfig prints its fields, not Go's.
func TestJSONOfExportedTypes(t *testing.T) {
	n, err := smolvm.NewNetworkConfig(smolvm.NetworkSpec{GuestIP: "172.16.0.2", TapDevice: "smol0", GuestMAC: "AA:FC:00:00:00:01", SSHHostPort: 2222})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"guest_ip":"172.16.0.2","gateway_ip":"172.16.0.1","netmask":"255.255.255.0","tap_device":"smol0","guest_mac":"AA:FC:00:00:00:01","ssh_host_port":2222}`
	for name, v := range map[string]any{"value": *n, "pointer": n} {
		b, err := json.Marshal(v)
		if err != nil || string(b) != want {
			t.Errorf("json of a NetworkConfig %s = %s, %v", name, b, err)
		}
	}
	for name, s := range map[string]string{"value": fmt.Sprint(*n), "pointer": fmt.Sprint(n)} {
		if !strings.Contains(s, "172.16.0.2/24 via 172.16.0.1 on smol0") || strings.Contains(s, "{") {
			t.Errorf("String of a %s = %q", name, s)
		}
	}
	cfg := smolvm.VMConfig{VMID: "x", Accel: smolvm.AccelTCG, NoNetwork: true}.WithDefaults()
	inf := smolvm.VMInfo{VMID: "x", Status: smolvm.StateRunning, Config: cfg, Network: n}
	for _, v := range []any{
		cfg, inf, smolvm.CommandResult{ExitCode: 3, Stdout: "o"}, smolvm.ExitStatus{ExitCode: 1},
		smolvm.Check{Name: "kvm", Status: smolvm.CheckOK, Detail: "d"}, smolvm.CleanupReport{Removed: []string{}},
		smolvm.ImageInfo{Name: "minimal"}, smolvm.PortInfo{HostPort: 2200, GuestPort: 22, Kind: "ssh"},
		smolvm.SocketPaths{Agent: "/a"},
	} {
		bv, err1 := json.Marshal(v)
		p := any(&v)
		bp, err2 := json.Marshal(p)
		if err1 != nil || err2 != nil || string(bv) != string(bp) || string(bv) == "{}" {
			t.Errorf("%T: value %s, pointer %s (%v %v)", v, bv, bp, err1, err2)
		}
	}
	b, _ := json.Marshal(inf)
	var back smolvm.VMInfo
	if err := json.Unmarshal(b, &back); err != nil || back.Network.GuestIP() != "172.16.0.2" || back.Config.Accel != smolvm.AccelTCG || !back.Config.NoNetwork {
		t.Errorf("VMInfo round trip: %s -> %+v %v", b, back, err)
	}
}
