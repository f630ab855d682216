package firecracker

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// TestJailerAutomatic: a VM to run as an unprivileged identity goes
// through the jailer installed beside firecracker, as that uid/gid, in a
// jail whose id keeps a_b apart from a-b; the process is placed in the
// VM's cgroup before the guest starts; the disk throttles become the
// drives' rate limiters (checked against Firecracker's API spec by the
// fake).
func TestJailerAutomatic(t *testing.T) {
	e := newEnv(t)
	bin := filepath.Join(e.dir, "bin")
	os.Mkdir(bin, 0o755)
	fc := fake(t, bin, "firecracker", "firecracker", map[string]string{envRecord: e.record, envArgs: e.args + ".fc"})
	fake(t, bin, "jailer", "jailer", map[string]string{envArgs: e.args})
	base := filepath.Join(e.dir, "jail")
	old := autoChrootBase
	autoChrootBase = base
	t.Cleanup(func() { autoChrootBase = old })

	b := &Backend{Binary: fc}
	spec := e.spec
	spec.ID = "a_b"
	uid := os.Getuid()
	if os.Geteuid() == 0 {
		uid = 4321
	}
	spec.RunAs = &vmm.Identity{UID: uint32(uid), GID: uint32(uid)}
	spec.DiskBPS, spec.DiskIOPS = 4<<20, 200
	var started []string
	spec.Start = func(cmd *exec.Cmd) error {
		started = append(started, filepath.Base(cmd.Path))
		return cmd.Start()
	}
	beforeRun := 0
	spec.BeforeRun = func() error {
		if _, err := os.Stat(spec.Dir + "/fc.sock"); err == nil {
			if c := e.calls(t); len(c) > 0 {
				t.Errorf("BeforeRun after %d API calls", len(c))
			}
		}
		beforeRun++
		return nil
	}
	ctx := testCtx(t)
	inst, err := b.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	if !reflect.DeepEqual(started, []string{"jailer"}) {
		t.Errorf("spec.Start started %q, want the jailer once", started)
	}
	if beforeRun != 1 {
		t.Errorf("BeforeRun called %d times, want once", beforeRun)
	}
	id := fcID("a_b")
	if id == fcID("a-b") {
		t.Fatalf("a_b and a-b share jail id %s", id)
	}
	u := strconv.Itoa(uid)
	want := []string{"--id", id, "--exec-file", fc, "--uid", u, "--gid", u, "--chroot-base-dir", base, "--", "--api-sock", "/fc.sock"}
	if got := readArgs(t, e.args); !reflect.DeepEqual(got, want) {
		t.Errorf("jailer argv:\n got  %q\n want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker", id, "root", "vmlinux")); err != nil {
		t.Errorf("kernel not in the jail: %v", err)
	}
	limiter := obj{"bandwidth": obj{"size": 4 << 20, "refill_time": 1000}, "ops": obj{"size": 200, "refill_time": 1000}}
	var drives int
	for _, c := range e.calls(t) {
		if c.Method == "PUT" && filepath.Dir(c.Path) == "/drives" {
			drives++
			if c.Status/100 != 2 {
				t.Errorf("%s answered %d: %s", c.Path, c.Status, c.Fault)
			}
			var body map[string]any
			json.Unmarshal(c.Body, &body)
			var wantJSON any
			wb, _ := json.Marshal(limiter)
			json.Unmarshal(wb, &wantJSON)
			if !reflect.DeepEqual(body["rate_limiter"], wantJSON) {
				t.Errorf("%s rate_limiter = %v, want %s", c.Path, body["rate_limiter"], wb)
			}
		}
	}
	if drives != 2 {
		t.Errorf("%d drive requests, want 2", drives)
	}
	b.Kill(inst)
	os.RemoveAll(base)

	// Without an identity, or without a jailer, firecracker runs as before.
	if j := b.jailer(fc, nil); j != nil {
		t.Errorf("jailer without an identity: %+v", j)
	}
	if j := (&Backend{}).jailer(filepath.Join(e.dir, "nowhere", "firecracker"), spec.RunAs); j != nil && os.Getenv("PATH") != "" {
		if _, err := j.binary(); err != nil {
			t.Errorf("jailer config with no jailer binary: %+v", j)
		}
	}
}

func TestDiskLimiter(t *testing.T) {
	if diskLimiter(0, 0) != nil {
		t.Error("a limiter without limits")
	}
	r := diskLimiter(1<<20, 0)
	if r.Bandwidth == nil || r.Bandwidth.Size != 1<<20 || r.Bandwidth.RefillTime != 1000 || r.Ops != nil {
		t.Errorf("bps only: %+v", r)
	}
	r = diskLimiter(0, 50)
	if r.Ops == nil || r.Ops.Size != 50 || r.Bandwidth != nil {
		t.Errorf("iops only: %+v", r)
	}
}
