package kmod

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestLoadOrderDryRun(t *testing.T) {
	root := t.TempDir()
	order := "/lib/modules/6.1/kernel/drivers/virtio/virtio.ko\n\n# comment\n/lib/modules/6.1/kernel/drivers/virtio/virtio_mmio.ko\n/lib/modules/6.1/kernel/net/vsock.ko\n"
	if err := os.WriteFile(filepath.Join(root, OrderFile), []byte(order), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmdline := "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 vsock.x=1 smolvm.id=a\n"
	if err := os.WriteFile(filepath.Join(root, "proc/cmdline"), []byte(cmdline), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &Loader{Root: root, DryRun: true}
	if err := l.LoadOrder(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/lib/modules/6.1/kernel/drivers/virtio/virtio.ko",
		"/lib/modules/6.1/kernel/drivers/virtio/virtio_mmio.ko device=512@0xfeb00e00:12 device=512@0xfeb00c00:11",
		"/lib/modules/6.1/kernel/net/vsock.ko x=1",
	}
	if !slices.Equal(l.Loaded, want) {
		t.Fatalf("loaded\n%q\nwant\n%q", l.Loaded, want)
	}
}

func TestLoadOrderMissingFile(t *testing.T) {
	l := &Loader{Root: t.TempDir(), DryRun: true, Cmdline: "x"}
	if err := l.LoadOrder(); err != nil || len(l.Loaded) != 0 {
		t.Fatalf("no order file: err %v, loaded %v", err, l.Loaded)
	}
}

func TestLoadMissingModule(t *testing.T) {
	// Not a dry run, but the file does not exist: fails before any syscall.
	l := &Loader{Root: t.TempDir(), Cmdline: "x"}
	if err := l.Load("/nope.ko"); err == nil {
		t.Fatal("loading a missing module succeeded")
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"/lib/modules/x/kernel/drivers/virtio/virtio_mmio.ko": "virtio_mmio",
		"virtio-mmio.ko": "virtio_mmio",
		"vsock":          "vsock",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}
