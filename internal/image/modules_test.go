package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestResolveSynthetic(t *testing.T) {
	const dep = `kernel/a.ko: kernel/b.ko kernel/c.ko
kernel/b.ko: kernel/c.ko
kernel/c.ko:
kernel/d-e.ko: kernel/a.ko kernel/b.ko kernel/c.ko
kernel/x.ko: kernel/y.ko
kernel/y.ko: kernel/x.ko
kernel/needs-ghost.ko: kernel/ghost.ko
kernel/uses-builtin.ko: kernel/fs/ext4.ko
`
	ms, err := ParseModulesDep(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	ms.Builtin["ext4"] = true
	tests := []struct {
		name    string
		want    []string
		order   []string
		wantErr error
	}{
		{"leaf", []string{"c"}, []string{"c"}, nil},
		{"chain", []string{"a"}, []string{"c", "b", "a"}, nil},
		{"dash name, shared deps once", []string{"d-e", "a"}, []string{"c", "b", "a", "d_e"}, nil},
		{"builtin skipped", []string{"uses_builtin", "ext4"}, []string{"uses_builtin"}, nil},
		{"cycle", []string{"x"}, nil, errModuleCycle},
		{"missing", []string{"nope"}, nil, errModuleMissing},
		{"missing dependency", []string{"needs_ghost"}, nil, errModuleMissing},
		{"nothing", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ms.Resolve(tt.want)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.order) {
				t.Fatalf("order = %v, want %v", got, tt.order)
			}
		})
	}
	if _, err := ParseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Error("malformed modules.dep accepted")
	}
}

// TestResolveDebianModules resolves the guest modules of the real Debian
// kernel, from the modules' .modinfo (what Build uses) and, when depmod is
// installed, from a real modules.dep, and checks both agree.
func TestResolveDebianModules(t *testing.T) {
	img := buildMinimal(t)
	k := img.Manifest.Inputs.Kernel
	debs, _ := filepath.Glob(filepath.Join(testCacheDir(t), ".debs", k.Name+"_*.deb"))
	if len(debs) == 0 {
		t.Skip("kernel .deb not in the test cache")
	}
	root := t.TempDir()
	if err := unpack(context.Background(), debs[0], root); err != nil {
		t.Fatal(err)
	}
	modDir := filepath.Join(root, "lib/modules", img.Manifest.KernelVersion)
	fromInfo, err := ReadModules(modDir)
	if err != nil {
		t.Fatal(err)
	}
	order, err := fromInfo.Resolve(GuestModules)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, img.Manifest.Modules) {
		t.Errorf("resolved %v, image has %v", order, img.Manifest.Modules)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	for _, m := range order {
		for _, d := range fromInfo.Deps[m] {
			if pos[d] >= pos[m] {
				t.Errorf("%s loads before its dependency %s", m, d)
			}
		}
	}
	if !fromInfo.Builtin["ext4"] {
		t.Error("ext4 not built in? modules.builtin not read")
	}
	for _, m := range []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "vsock", "vmw_vsock_virtio_transport", "vmw_vsock_virtio_transport_common", "virtio", "virtio_ring"} {
		if _, ok := pos[m]; !ok {
			t.Errorf("%s missing from %v", m, order)
		}
	}

	depmod, err := exec.LookPath("depmod")
	if err != nil {
		t.Skip("depmod not installed (apt-get install kmod): cannot compare with a real modules.dep")
	}
	if out, err := exec.Command(depmod, "-b", root, img.Manifest.KernelVersion).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v: %s", err, out)
	}
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fromDep, err := ParseModulesDep(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(fromDep.Path) != len(fromInfo.Path) {
		t.Errorf("modules.dep lists %d modules, .modinfo scan %d", len(fromDep.Path), len(fromInfo.Path))
	}
	for name := range fromDep.Path {
		a, err1 := fromDep.Resolve([]string{name})
		b, err2 := fromInfo.Resolve([]string{name})
		slices.Sort(a)
		slices.Sort(b)
		if err1 != nil || err2 != nil || !slices.Equal(a, b) {
			t.Errorf("%s: modules.dep closure %v (%v), .modinfo closure %v (%v)", name, a, err1, b, err2)
		}
	}
	// And ReadModules prefers the real modules.dep now that it exists.
	viaDep, err := ReadModules(modDir)
	if err != nil {
		t.Fatal(err)
	}
	order2, err := viaDep.Resolve(GuestModules)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(order2)
	sorted := slices.Clone(order)
	slices.Sort(sorted)
	if !slices.Equal(order2, sorted) {
		t.Errorf("via modules.dep: %v, via .modinfo: %v", order2, sorted)
	}
}
