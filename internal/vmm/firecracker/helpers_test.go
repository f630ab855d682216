package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// env is a test VM's files and a fake firecracker to run it.
type env struct {
	dir    string   // scratch directory
	spec   vmm.Spec // a VM whose files exist
	record string   // where the fake records API calls
	args   string   // where the fake records its command line
}

// newEnv makes the files of a VM with two disks, a NIC and vsock.
func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinux", "initrd.img", "rootfs.ext4", "data.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("fake "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &env{
		dir:    dir,
		record: filepath.Join(dir, "calls.jsonl"),
		args:   filepath.Join(dir, "args.json"),
		spec: vmm.Spec{
			ID:        "vm-1",
			Dir:       run,
			Kernel:    filepath.Join(dir, "vmlinux"),
			Initrd:    filepath.Join(dir, "initrd.img"),
			Cmdline:   "smolvm.id=vm-1 quiet",
			VCPUs:     2,
			MemoryMiB: 256,
			Disks: []vmm.Disk{
				{Path: filepath.Join(dir, "rootfs.ext4")},
				{Path: filepath.Join(dir, "data.img"), ReadOnly: true},
			},
			NIC:        &vmm.NIC{TAP: "smol3", MAC: "06:00:ac:10:00:02"},
			VsockCID:   3,
			ConsoleLog: filepath.Join(dir, "console.log"),
			Accel:      vmm.AccelKVM, // Firecracker's fake needs no KVM
		},
	}
}

// backend returns a Backend running a fake firecracker of mode with extra
// environment.
func (e *env) backend(t *testing.T, mode string, extra map[string]string) *Backend {
	t.Helper()
	vars := map[string]string{envRecord: e.record, envArgs: e.args}
	for k, v := range extra {
		vars[k] = v
	}
	return &Backend{Binary: fake(t, e.dir, "firecracker", mode, vars)}
}

// ctx returns a context that ends with the test or after 20s.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// killAtEnd kills inst's process when the test ends.
func killAtEnd(t *testing.T, b *Backend, inst vmm.Instance) {
	t.Cleanup(func() { b.Kill(inst) })
}

// calls reads the API calls the fake recorded.
func (e *env) calls(t *testing.T) []call {
	t.Helper()
	c, err := readCalls(e.record)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return c
}

// errorContains reports whether err's text contains s.
func errorContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
