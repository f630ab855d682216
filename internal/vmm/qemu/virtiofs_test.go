package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

func TestShareArgs(t *testing.T) {
	spec := vmm.Spec{ID: "v", Dir: "/run/v", Kernel: "/k", MemoryMiB: 256, VCPUs: 1}
	if a := strings.Join(Args(spec, vmm.AccelTCG), " "); strings.Contains(a, "vhost-user-fs") || strings.Contains(a, "memfd") {
		t.Fatalf("no shares, yet: %s", a)
	}
	spec.Shares = []vmm.Share{{Tag: "smolvm0", Source: "/srv/a"}, {Tag: "smolvm1", Source: "/srv/b", ReadOnly: true}}
	a := strings.Join(Args(spec, vmm.AccelTCG), " ")
	for _, want := range []string{
		"-object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem",
		"-global virtio-mmio.force-legacy=false",
		"-chardev socket,id=fs0,path=/run/v/fs-smolvm0.sock -device vhost-user-fs-device,chardev=fs0,tag=smolvm0",
		"-chardev socket,id=fs1,path=/run/v/fs-smolvm1.sock -device vhost-user-fs-device,chardev=fs1,tag=smolvm1",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("args lack %q: %s", want, a)
		}
	}
	spec.Machine = "q35"
	if a := strings.Join(Args(spec, vmm.AccelTCG), " "); !strings.Contains(a, "vhost-user-fs-pci,chardev=fs0") || strings.Contains(a, "force-legacy") {
		t.Errorf("q35: %s", a)
	}
}

func TestStartSharesWithoutDaemon(t *testing.T) {
	t.Setenv("SMOLVM_VIRTIOFSD", filepath.Join(t.TempDir(), "missing-virtiofsd"))
	dir := t.TempDir()
	stop, err := startShares(vmm.Spec{Dir: dir, Shares: []vmm.Share{{Tag: "smolvm0", Source: dir}}})
	defer stop()
	if err == nil || !strings.Contains(err.Error(), "virtiofsd") {
		t.Fatalf("a daemon that cannot start: %v", err)
	}
	if _, serr := os.Stat(shareSocket(dir, "smolvm0")); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("socket left: %v", serr)
	}
}
