package smolvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/vmm/vmmfake"
)

// boot_args that would override the host's keys or replace the init are
// refused at validation, naming boot_args, and Create leaves nothing.
func TestBootArgsCannotOverride(t *testing.T) {
	h, dir := fakeEnv(t, false)
	for _, args := range []string{"init=/bin/sh", "quiet rdinit=/bin/sh", "smolvm.agentport=0", "smolvm.agent=x", `"smolvm.ip=10.0.0.9/24"`} {
		cfg := fakeVM(t, "ba")
		cfg.BootArgs = args
		var ce *ConfigError
		if err := cfg.Validate(); !errors.As(err, &ce) || ce.Field != "boot_args" || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Validate(boot_args %q) = %v", args, err)
		}
		if _, err := h.Create(context.Background(), cfg); !errors.As(err, &ce) || ce.Field != "boot_args" {
			t.Errorf("Create(boot_args %q) = %v", args, err)
		}
	}
	cfg := fakeVM(t, "ok")
	cfg.BootArgs = "quiet loglevel=3"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("harmless boot_args refused: %v", err)
	}
	assertFakeNothingLeft(t, h, dir)
}

// The data dir is private whatever it was before; another user's, a
// symlink or a sticky directory is refused with an error naming data_dir.
func TestDataDirPrivate(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	loose := filepath.Join(base, "loose")
	os.Mkdir(loose, 0o755)
	os.Chmod(loose, 0o775)
	h, err := Open(ctx, HostOptions{DataDir: loose, HostDir: filepath.Join(base, "host")})
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if fi, _ := os.Stat(loose); fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v, want 0700", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(loose, "smolvm.db")); fi.Mode().Perm() != 0o600 {
		t.Errorf("database mode %v, want 0600", fi.Mode())
	}
	fresh := filepath.Join(base, "a", "fresh")
	if h, err := Open(ctx, HostOptions{DataDir: fresh, HostDir: filepath.Join(base, "host")}); err != nil {
		t.Fatal(err)
	} else {
		h.Close()
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Errorf("new data dir mode %v", fi.Mode())
	}

	sticky := filepath.Join(base, "sticky")
	os.Mkdir(sticky, 0o777)
	os.Chmod(sticky, os.ModeSticky|0o777)
	link := filepath.Join(base, "link")
	os.Symlink(loose, link)
	cases := map[string]string{sticky: "sticky", link: "symlink"}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		cases[other] = "owned by uid 65534"
	}
	for d, want := range cases {
		_, err := Open(ctx, HostOptions{DataDir: d, HostDir: filepath.Join(base, "host")})
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != "data_dir" || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%s) = %v, want a data_dir error mentioning %q", d, err, want)
		}
	}
	if fi, _ := os.Stat(sticky); fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("a refused sticky dir was changed: %v", fi.Mode())
	}
}

// fakeImage writes an image named name into imageDir with a manifest
// whose checksums match, as a build would.
func fakeImage(t *testing.T, imageDir, name string) *image.Image {
	t.Helper()
	dir := filepath.Join(imageDir, name)
	os.MkdirAll(dir, 0o755)
	m := image.Manifest{Name: name, Fingerprint: strings.Repeat("ab", 32), KernelKind: image.KernelBzImage}
	for _, f := range []string{"vmlinuz", "vmlinux", "initrd.img", "rootfs.ext4"} {
		content := []byte("content of " + f)
		os.WriteFile(filepath.Join(dir, f), content, 0o644)
		sum := sha256.Sum256(content)
		m.Files = append(m.Files, image.FileInfo{Name: f, Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])})
	}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "manifest.json"), b, 0o644)
	img, err := image.Get(imageDir, name)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// A shared-mode VM boots a shared copy of the image's disk, never the
// cached disk isolated VMs clone; a cached disk that no longer matches its
// manifest's checksum is refused before any clone.
func TestSharedDiskAndImageChecksum(t *testing.T) {
	ctx := context.Background()
	imageDir := t.TempDir()
	h, dir := fakeEnv(t, false, func(o *HostOptions) { o.ImageDir = imageDir })
	img := fakeImage(t, imageDir, "tiny")
	cfg := VMConfig{VMID: "sh1", Image: "tiny", Backend: BackendKind(vmmfake.Kind), MemSizeMiB: 128, VCPUCount: 1, DiskMode: DiskShared, NoNetwork: true}
	vm, err := h.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, rec, err := vm.load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Boot.Disk == img.Rootfs || !strings.HasPrefix(rec.Boot.Disk, filepath.Join(dir, "shared")+"/") {
		t.Fatalf("shared VM boots %s (the image's disk is %s)", rec.Boot.Disk, img.Rootfs)
	}
	if b, err := os.ReadFile(rec.Boot.Disk); err != nil || string(b) != "content of rootfs.ext4" {
		t.Fatalf("shared copy: %q, %v", b, err)
	}
	cfg.VMID = "sh2"
	vm2, err := h.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, rec2, _ := vm2.load(ctx)
	if rec2.Boot.Disk != rec.Boot.Disk {
		t.Errorf("second shared VM of the image boots %s, not the same copy %s", rec2.Boot.Disk, rec.Boot.Disk)
	}
	// Tamper with the cached image, keeping its size.
	os.WriteFile(img.Rootfs, []byte("CONTENT of rootfs.ext4"), 0o644)
	iso := cfg
	iso.VMID, iso.DiskMode = "iso", DiskIsolated
	if _, err := h.Create(ctx, iso); !errors.Is(err, ErrImage) || !strings.Contains(err.Error(), "modified") {
		t.Fatalf("create from a tampered image: %v", err)
	}
	if _, err := os.Stat(h.diskPath("iso")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a disk was cloned from the tampered image")
	}
	for _, v := range []*VM{vm, vm2} {
		if err := v.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}
	assertFakeNothingLeft(t, h, dir)
}

// Run's buffer never grows past its cap, whatever arrives.
func TestCapBuffer(t *testing.T) {
	b := newCapBuffer(10000)
	chunk := make([]byte, 4096)
	for range 100 {
		if n, err := b.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if len(b.String()) != 10000 || cap(b.b) > 10000 {
		t.Fatalf("kept %d bytes in a buffer of %d", len(b.String()), cap(b.b))
	}
	u := newCapBuffer(0)
	u.Write([]byte("abc"))
	u.Write([]byte("def"))
	if u.String() != "abcdef" {
		t.Fatalf("uncapped buffer %q", u.String())
	}
}

func TestRedactedAndSafeMode(t *testing.T) {
	inf := VMInfo{Config: VMConfig{EnvVars: map[string]string{"API_KEY": "secret"}}}
	r := inf.Redacted()
	if r.Config.EnvVars["API_KEY"] != RedactedValue || inf.Config.EnvVars["API_KEY"] != "secret" {
		t.Fatalf("Redacted: %v (original %v)", r.Config.EnvVars, inf.Config.EnvVars)
	}
	for in, want := range map[os.FileMode]os.FileMode{os.ModeSetuid | 0o777: 0o755, 0o666: 0o644, os.ModeSticky | 0o700: 0o700, os.ModeSetgid | 0o2775: 0o755} {
		if got := SafeMode(in); got != want {
			t.Errorf("SafeMode(%v) = %v, want %v", in, got, want)
		}
	}
}

// A download limit fails the write that would pass it, before it reaches
// the destination.
func TestDownloadLimitWriter(t *testing.T) {
	var got strings.Builder
	lw := &limitWriter{w: &got, left: 5}
	if n, err := lw.Write([]byte("abc")); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if _, err := lw.Write([]byte("def")); err == nil || !lw.over || !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("over the limit: %v (over %v)", err, lw.over)
	}
	if got.String() != "abc" {
		t.Fatalf("wrote %q", got.String())
	}
}
