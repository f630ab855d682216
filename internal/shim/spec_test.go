package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/smolvm-go/smolvm"
)

func ptr[T any](v T) *T { return &v }

func withNetns(s *specs.Spec) *specs.Spec {
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/pod"})
	return s
}

func TestVMConfig(t *testing.T) {
	withRes := func(mem int64, quota int64, period uint64, ann map[string]string) *specs.Spec {
		s := &specs.Spec{Process: &specs.Process{Args: []string{"true"}}, Annotations: ann, Linux: &specs.Linux{Resources: &specs.LinuxResources{}}}
		if mem != 0 {
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: ptr(mem)}
		}
		if quota != 0 {
			s.Linux.Resources.CPU = &specs.LinuxCPU{Quota: ptr(quota), Period: ptr(period)}
		}
		return s
	}
	tests := []struct {
		name      string
		spec      *specs.Spec
		vcpus     int
		mem       int
		image     string
		noNetwork bool
		err       string
	}{
		{name: "defaults", spec: withRes(0, 0, 0, nil), image: "minimal", noNetwork: true},
		{name: "memory floor", spec: withRes(64<<20, 0, 0, nil), mem: smolvm.MinMemoryMiB, image: "minimal", noNetwork: true},
		{name: "memory and cpu", spec: withRes(1<<30, 150000, 100000, nil), mem: 1024, vcpus: 2, image: "minimal", noNetwork: true},
		{name: "annotations win", spec: withRes(1<<30, 400000, 100000, map[string]string{
			AnnotationVCPUs: "1", AnnotationMemoryMiB: "256", AnnotationImage: "default"}), mem: 256, vcpus: 1, image: "default", noNetwork: true},
		{name: "nat", spec: withRes(0, 0, 0, map[string]string{AnnotationNetwork: "nat"}), image: "minimal"},
		{name: "pod netns", spec: withNetns(withRes(0, 0, 0, nil)), image: "minimal"},
		{name: "pod netns, none", spec: withNetns(withRes(0, 0, 0, map[string]string{AnnotationNetwork: "none"})), image: "minimal", noNetwork: true},
		{name: "bad vcpus", spec: withRes(0, 0, 0, map[string]string{AnnotationVCPUs: "many"}), err: AnnotationVCPUs},
		{name: "bad memory", spec: withRes(0, 0, 0, map[string]string{AnnotationMemoryMiB: "-5"}), err: AnnotationMemoryMiB},
		{name: "bad network", spec: withRes(0, 0, 0, map[string]string{AnnotationNetwork: "bridge"}), err: AnnotationNetwork},
		{name: "pod netns, pod", spec: withNetns(withRes(0, 0, 0, map[string]string{AnnotationNetwork: "pod"})), image: "minimal"},
		{name: "pod without netns", spec: withRes(0, 0, 0, map[string]string{AnnotationNetwork: "pod"}), err: "names no network namespace"},
		{name: "too much memory", spec: withRes(0, 0, 0, map[string]string{AnnotationMemoryMiB: "99999999"}), err: "mem_size_mib"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := vmConfig(tt.spec, "ctr-0123456789abcdef", "/x/rootfs.ext4")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.VCPUCount != tt.vcpus || cfg.MemSizeMiB != tt.mem || cfg.Image != tt.image || cfg.NoNetwork != tt.noNetwork {
				t.Errorf("got vcpus=%d mem=%d image=%s no_network=%v, want %d %d %s %v", cfg.VCPUCount, cfg.MemSizeMiB, cfg.Image, cfg.NoNetwork, tt.vcpus, tt.mem, tt.image, tt.noNetwork)
			}
			if cfg.RootfsPath != "/x/rootfs.ext4" || cfg.DiskMode != smolvm.DiskShared {
				t.Errorf("root disk %s (%s), want the task's own image, shared", cfg.RootfsPath, cfg.DiskMode)
			}
		})
	}
}

func TestExecRequest(t *testing.T) {
	req, err := execRequest(&specs.Process{Args: []string{"sh", "-c", "x"}, Env: []string{"PATH=/bin", "A=b=c"}, Cwd: "/work", User: specs.User{UID: 1000, GID: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	if req.Env["A"] != "b=c" || req.Env["PATH"] != "/bin" || req.Dir != "/work" || req.User != "1000" || len(req.Argv) != 3 {
		t.Errorf("request %+v", req)
	}
	for _, bad := range []*specs.Process{
		{Args: nil},
		{Args: []string{"x"}, Env: []string{"NOEQUALS"}},
		{Args: []string{"x"}, Env: []string{"BAD-KEY=1"}},
	} {
		if _, err := execRequest(bad); err == nil {
			t.Errorf("execRequest(%+v) accepted", bad)
		}
	}
}

func TestVMIDStable(t *testing.T) {
	a, b := vmID("default", "web"), vmID("k8s.io", "web")
	if a == b || a != vmID("default", "web") {
		t.Errorf("ids %s %s: want stable and namespace-dependent", a, b)
	}
	if err := smolvm.ValidateVMID(a); err != nil {
		t.Error(err)
	}
}

func TestReadSpecBounded(t *testing.T) {
	dir := t.TempDir()
	big := `{"ociVersion":"1.0.2","process":{"args":["x"]},"annotations":{"a":"` + strings.Repeat("x", maxSpecBytes) + `"}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readSpec(dir); err == nil {
		t.Error("a config.json over the bound was accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"process":{"args":[]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readSpec(dir); err == nil || !strings.Contains(err.Error(), "process.args") {
		t.Errorf("err = %v, want one naming process.args", err)
	}
}

func TestExitStatusBounded(t *testing.T) {
	for in, want := range map[int]int{0: 0, 7: 7, 143: 143, 255: 255, -1: 255, 256: 255, 1 << 40: 255} {
		if got := exitStatus(in); got != want {
			t.Errorf("exitStatus(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestSpecResolvers(t *testing.T) {
	f := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(f, []byte("search svc.cluster.local\nnameserver 10.96.0.10\nnameserver ::1\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n"), 0o600)
	s := &specs.Spec{Mounts: []specs.Mount{{Destination: "/etc/resolv.conf", Source: f}}}
	got := strings.Join(specResolvers(s), ",")
	if got != "10.96.0.10,10.0.0.2,10.0.0.3" {
		t.Errorf("resolvers %q", got)
	}
}
