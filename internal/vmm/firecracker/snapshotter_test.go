package firecracker

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// TestContractSnapshotter drives the vmm.Snapshotter methods the SDK uses
// against the fake firecracker that validates every request against the
// vendored API specification: Save pauses and writes a Full snapshot;
// Launch with Incoming starts a bare process that Load fills, with the
// clone's TAP and vsock socket.
func TestContractSnapshotter(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	ctx := testCtx(t)
	inst, err := b.Launch(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	if err := b.WaitReady(ctx, inst); err != nil {
		t.Fatal(err)
	}
	state, err := os.Create(filepath.Join(e.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	mem := filepath.Join(e.dir, "mem")
	between := false
	res, err := b.Save(ctx, inst, vmm.SaveOptions{State: state, MemFile: mem, Between: func(ctx context.Context) error { between = true; return nil }})
	if err != nil || !res.MemFile || res.Format != FormatFull || !between {
		t.Fatalf("save = %+v, %v (between ran: %v)", res, err, between)
	}
	if st, err := b.Status(ctx, inst); err != nil || st != vmm.StatePaused {
		t.Errorf("after save: %q, %v; want paused", st, err)
	}
	b.Kill(inst)

	spec := e.spec
	spec.Incoming = true
	spec.NIC = &vmm.NIC{TAP: "smol7", MAC: "06:00:ac:10:00:07"}
	inst2, err := b.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst2)
	if err := b.Load(ctx, inst2, vmm.LoadOptions{State: state, Format: FormatFull, MemFile: mem, TAP: "smol7"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Load(ctx, inst2, vmm.LoadOptions{State: state, Format: "qemu-migration", MemFile: mem}); err == nil {
		t.Error("a QEMU state loaded into firecracker")
	}
	bodies := map[string]any{}
	for _, c := range e.calls(t) {
		if c.Path == "/snapshot/create" || c.Path == "/snapshot/load" || (c.Path == "/vm" && c.Method == "PATCH") {
			var v any
			json.Unmarshal(c.Body, &v)
			bodies[c.Method+" "+c.Path] = v
			if c.Status >= 300 {
				t.Errorf("%s %s: %d %s", c.Method, c.Path, c.Status, c.Fault)
			}
		}
		if c.Path == "/machine-config" && c.Method == "PUT" && len(bodies) > 1 {
			t.Error("the restore configured a machine before loading")
		}
	}
	want := map[string]any{
		"PATCH /vm":            obj{"state": "Paused"},
		"PUT /snapshot/create": obj{"snapshot_path": state.Name(), "mem_file_path": mem, "snapshot_type": "Full"},
		"PUT /snapshot/load": obj{"snapshot_path": state.Name(), "mem_backend": obj{"backend_type": "File", "backend_path": mem},
			"network_overrides": []any{obj{"iface_id": "eth0", "host_dev_name": "smol7"}},
			"vsock_override":    obj{"uds_path": inst2.Agent}, "resume_vm": false},
	}
	if !reflect.DeepEqual(bodies, want) {
		t.Errorf("requests:\n got %v\nwant %v", bodies, want)
	}
	// Jailed VMs are refused, not half-done.
	jb := *b
	jb.Jailer = &JailerConfig{}
	if _, err := jb.Save(ctx, inst2, vmm.SaveOptions{State: state, MemFile: mem}); err == nil {
		t.Error("save of a jailed VM")
	}
}
