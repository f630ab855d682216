package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// want is an expected API call; body nil means none.
type want struct {
	method, path string
	body         any
}

// checkCalls asserts that got is exactly want, bodies compared as decoded
// JSON, and that every call succeeded.
func checkCalls(t *testing.T, got []call, want []want) {
	t.Helper()
	for i := 0; i < len(got) || i < len(want); i++ {
		if i >= len(got) {
			t.Errorf("call %d: missing %s %s", i, want[i].method, want[i].path)
			continue
		}
		g := got[i]
		if i >= len(want) {
			t.Errorf("call %d: unexpected %s %s %s", i, g.Method, g.Path, g.Body)
			continue
		}
		w := want[i]
		if g.Method != w.method || g.Path != w.path {
			t.Errorf("call %d: got %s %s, want %s %s", i, g.Method, g.Path, w.method, w.path)
			continue
		}
		if g.Status/100 != 2 {
			t.Errorf("call %d: %s %s answered %d: %s", i, g.Method, g.Path, g.Status, g.Fault)
		}
		if w.body == nil {
			if len(g.Body) != 0 {
				t.Errorf("call %d: %s %s: unexpected body %s", i, g.Method, g.Path, g.Body)
			}
			continue
		}
		var gv, wv any
		if err := json.Unmarshal(g.Body, &gv); err != nil {
			t.Errorf("call %d: %s %s: body %q: %v", i, g.Method, g.Path, g.Body, err)
			continue
		}
		wb, _ := json.Marshal(w.body)
		json.Unmarshal(wb, &wv)
		if !reflect.DeepEqual(gv, wv) {
			t.Errorf("call %d: %s %s body:\n got  %s\n want %s", i, g.Method, g.Path, g.Body, wb)
		}
	}
}

type obj = map[string]any

// TestContractSequence runs a VM's whole life against a fake firecracker
// that validates every request against Firecracker's API specification,
// and checks the exact requests.
func TestContractSequence(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	ctx := testCtx(t)
	s := e.spec

	inst, err := b.Launch(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	wantInst := vmm.Instance{PID: inst.PID, PIDStart: inst.PIDStart, Control: filepath.Join(s.Dir, "fc.sock"),
		Agent: filepath.Join(s.Dir, "agent.sock"), Accel: vmm.AccelKVM}
	if inst != wantInst || inst.PID <= 0 || inst.PIDStart == 0 {
		t.Errorf("instance = %+v, want %+v", inst, wantInst)
	}
	if err := b.WaitReady(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := b.Pause(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Status(ctx, inst); err != nil || st != vmm.StatePaused {
		t.Fatalf("status after pause = %q, %v", st, err)
	}
	snap, mem := filepath.Join(e.dir, "vm.snap"), filepath.Join(e.dir, "vm.mem")
	if err := b.CreateSnapshot(ctx, inst, SnapshotOptions{SnapshotPath: snap, MemFilePath: mem, Type: SnapshotFull}); err != nil {
		t.Fatal(err)
	}
	if err := b.Resume(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Status(ctx, inst); err != nil || st != vmm.StateRunning {
		t.Fatalf("status after resume = %q, %v", st, err)
	}
	// The hybrid vsock socket the agent is reached through exists.
	if c, err := net.Dial("unix", inst.Agent); err != nil {
		t.Errorf("agent socket: %v", err)
	} else {
		c.Close()
	}
	if err := b.Stop(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Status(ctx, inst); err != nil || st != vmm.StateGone {
		t.Errorf("status after stop = %q, %v", st, err)
	}

	checkCalls(t, e.calls(t), []want{
		{"PUT", "/logger", obj{"log_path": filepath.Join(s.Dir, "firecracker.log"), "level": "Warning", "show_level": true}},
		{"PUT", "/metrics", obj{"metrics_path": filepath.Join(s.Dir, "firecracker.metrics")}},
		{"PUT", "/machine-config", obj{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}},
		{"PUT", "/boot-source", obj{"kernel_image_path": s.Kernel, "initrd_path": s.Initrd,
			"boot_args": "console=ttyS0 reboot=k panic=1 pci=off quiet smolvm.id=vm-1 quiet"}},
		{"PUT", "/drives/rootfs", obj{"drive_id": "rootfs", "path_on_host": s.Disks[0].Path, "is_root_device": true, "is_read_only": false}},
		{"PUT", "/drives/drive1", obj{"drive_id": "drive1", "path_on_host": s.Disks[1].Path, "is_root_device": false, "is_read_only": true}},
		{"PUT", "/network-interfaces/eth0", obj{"iface_id": "eth0", "host_dev_name": "smol3", "guest_mac": "06:00:ac:10:00:02"}},
		{"PUT", "/vsock", obj{"guest_cid": 3, "uds_path": filepath.Join(s.Dir, "agent.sock")}},
		{"PUT", "/actions", obj{"action_type": "InstanceStart"}},
		{"GET", "/", nil}, // WaitReady
		{"PATCH", "/vm", obj{"state": "Paused"}},
		{"GET", "/", nil}, // Status
		{"PUT", "/snapshot/create", obj{"snapshot_path": snap, "mem_file_path": mem, "snapshot_type": "Full"}},
		{"PATCH", "/vm", obj{"state": "Resumed"}},
		{"GET", "/", nil}, // Status
		{"PUT", "/actions", obj{"action_type": "SendCtrlAltDel"}},
	})
	if got, want := readArgs(t, e.args), []string{"--api-sock", inst.Control, "--id", "vm-1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("firecracker argv = %q, want %q", got, want)
	}
	console, _ := os.ReadFile(s.ConsoleLog)
	if !bytes.Contains(console, []byte("fake guest console: vm-1 booted")) {
		t.Errorf("console log lacks the guest's output: %q", console)
	}
	if _, err := os.Stat(snap); err != nil {
		t.Errorf("snapshot: %v", err)
	}
}

// TestContractRejectsInvalid proves the validator can fail: a request our
// own checks would have stopped (vcpu_count 0) reaches the wire, the fake
// answers 400 with a fault_message, and the backend's error carries it and
// the process is killed.
func TestContractRejectsInvalid(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	s := e.spec
	s.VCPUs = 0

	// Launch's own check stops it before anything starts.
	if _, err := b.Launch(testCtx(t), s); err == nil || !strings.Contains(err.Error(), "1 to 32 vCPUs") {
		t.Fatalf("Launch with 0 vCPUs: %v", err)
	}
	if _, err := os.Stat(e.args); err == nil {
		t.Fatal("Launch started firecracker for an invalid spec")
	}

	_, err := b.launch(testCtx(t), s)
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("launch with vcpu_count 0: got %v, want an APIError", err)
	}
	if apiErr.Status != http.StatusBadRequest || apiErr.Method != "PUT" || apiErr.Path != "/machine-config" {
		t.Errorf("APIError = %+v", apiErr)
	}
	if !strings.Contains(err.Error(), "firecracker PUT /machine-config: 400: validation: ") || !strings.Contains(err.Error(), "vcpu_count") {
		t.Errorf("error does not carry the fault message: %v", err)
	}
	if testing.Verbose() {
		t.Logf("error: %v", err)
	}
	calls := e.calls(t)
	last := calls[len(calls)-1]
	if last.Path != "/machine-config" || last.Status != 400 || !strings.Contains(err.Error(), last.Fault) {
		t.Errorf("last call = %+v; error %v", last, err)
	}
	pidArgs := readArgs(t, e.args)
	if len(pidArgs) == 0 {
		t.Fatal("no argv")
	}
	// The undo killed the process: its API socket is gone.
	if _, err := os.Stat(filepath.Join(s.Dir, "fc.sock")); !os.IsNotExist(err) {
		t.Errorf("API socket left behind: %v", err)
	}
}

// TestValidatorStrict checks the validating fake itself on bodies that
// Firecracker refuses: a wrong enum, an unknown field, a missing required
// field, an unknown path, a wrong method.
func TestValidatorStrict(t *testing.T) {
	router, err := loadRouter(specFile)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	vm := newFakeVMM(router, "x", "", &bytes.Buffer{}, "")
	srv := &http.Server{Handler: vm}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close(); vm.close() })
	c := newClient(sock)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name, method, path string
		body               any
		fault              string
	}{
		{"enum", "PUT", "/actions", obj{"action_type": "Reboot"}, "action_type"},
		{"unknown field", "PUT", "/drives/rootfs", obj{"drive_id": "rootfs", "is_root_device": true, "path": "/x"}, "path"},
		{"missing field", "PUT", "/vsock", obj{"uds_path": "/x"}, "guest_cid"},
		{"cid too small", "PUT", "/vsock", obj{"guest_cid": 2, "uds_path": "/x"}, "guest_cid"},
		{"vm state", "PATCH", "/vm", obj{"state": "Stopped"}, "state"},
		{"path", "PUT", "/nope", obj{}, "Invalid request"},
		{"method", "POST", "/machine-config", obj{"vcpu_count": 1, "mem_size_mib": 128}, "Invalid request"},
	} {
		err := c.do(ctx, tc.method, tc.path, tc.body, nil)
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.FaultMessage, tc.fault) {
			t.Errorf("%s: %s %s: got %v, want 400 mentioning %q", tc.name, tc.method, tc.path, err, tc.fault)
		}
	}
	// And a valid request passes.
	if err := c.put(ctx, "/machine-config", machineConfig{VCPUCount: 1, MemSizeMiB: 128}); err != nil {
		t.Errorf("valid machine-config: %v", err)
	}
}

// TestContractSnapshotLoad restores into a fresh process: Start configures
// only logger and metrics, then PUT /snapshot/load.
func TestContractSnapshotLoad(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "firecracker", nil)
	ctx := testCtx(t)
	snap, mem := filepath.Join(e.dir, "vm.snap"), filepath.Join(e.dir, "vm.mem")
	for _, f := range []string{snap, mem} {
		os.WriteFile(f, []byte("state"), 0o600)
	}
	inst, err := b.Start(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	if st, err := b.Status(ctx, inst); err != nil || st != vmm.StatePaused {
		t.Errorf("status of a fresh process = %q, %v; want paused (not started)", st, err)
	}
	agent := filepath.Join(e.spec.Dir, "agent2.sock")
	opts := LoadOptions{SnapshotPath: snap, MemFilePath: mem, ResumeVM: true, TAP: "smol9", AgentSocket: agent}
	if err := b.LoadSnapshot(ctx, inst, opts); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Status(ctx, inst); err != nil || st != vmm.StateRunning {
		t.Errorf("status after load = %q, %v", st, err)
	}
	// A second load is refused, and the fault surfaces.
	err = b.LoadSnapshot(ctx, inst, opts)
	if err == nil || !strings.Contains(err.Error(), "firecracker PUT /snapshot/load: 400: Loading a microVM snapshot not allowed") {
		t.Errorf("second load: %v", err)
	}
	calls := e.calls(t)
	checkCalls(t, calls[:len(calls)-1], []want{
		{"PUT", "/logger", obj{"log_path": filepath.Join(e.spec.Dir, "firecracker.log"), "level": "Warning", "show_level": true}},
		{"PUT", "/metrics", obj{"metrics_path": filepath.Join(e.spec.Dir, "firecracker.metrics")}},
		{"GET", "/", nil},
		{"PUT", "/snapshot/load", obj{
			"snapshot_path":     snap,
			"mem_backend":       obj{"backend_type": "File", "backend_path": mem},
			"resume_vm":         true,
			"network_overrides": []any{obj{"iface_id": "eth0", "host_dev_name": "smol9"}},
			"vsock_override":    obj{"uds_path": agent},
		}},
		{"GET", "/", nil},
	})
}

// TestVendoredSpecMatchesShared checks that testdata/firecracker.yaml is
// the project's shared specification plus an attribution header, when the
// shared directory sits beside the repository.
func TestVendoredSpecMatchesShared(t *testing.T) {
	shared, err := os.ReadFile("../../../../shared/firecracker/firecracker.yaml")
	if err != nil {
		t.Skipf("no shared/ beside the repository (%v): the vendored copy is used as is", err)
	}
	vendored, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	for bytes.HasPrefix(vendored, []byte("#")) {
		_, vendored, _ = bytes.Cut(vendored, []byte("\n"))
	}
	if !bytes.Equal(vendored, shared) {
		t.Errorf("%s differs from shared/firecracker/firecracker.yaml: copy the shared file below the header", specFile)
	}
}
