package smolvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/image"
)

// Disk guards (issue 13). A cached image's root disk is what every
// isolated VM clones, so no guest may ever write it: a shared-mode VM
// boots a separate shared copy per image (<data dir>/shared/<image>-<fp>.ext4),
// made once, and an image's disk is checked against its manifest's SHA-256
// before it is cloned. A verified file is remembered by its identity
// (device, inode, size, mtime, ctime) in <data dir>/verified/, so each
// version of an image is hashed once, not at every create.

// imageDisk returns the cached image that supplied cfg's root disk, or nil
// when the disk is the caller's own file (rootfs_path).
func (c *createOp) imageDisk() (*image.Image, error) {
	if c.cfg.RootfsPath != "" {
		return nil, nil
	}
	img, err := image.Get(c.h.imageDir, c.cfg.Image)
	if err != nil {
		return nil, err
	}
	if img.Rootfs != c.boot.Disk {
		return nil, nil
	}
	return img, nil
}

// sharedDiskPath is the disk a shared-mode VM of image img boots.
func (h *Host) sharedDiskPath(img *image.Image) string {
	fp := img.Manifest.Fingerprint
	if len(fp) > 16 {
		fp = fp[:16]
	}
	return filepath.Join(h.dir, "shared", img.Name+"-"+fp+".ext4")
}

// recordedDisk is the disk a new VM's record names.
func (c *createOp) recordedDisk() string {
	switch c.cfg.DiskMode {
	case DiskIsolated:
		// Recorded before it exists: an interrupted create must never
		// boot the image's own disk.
		return c.h.diskPath(c.cfg.VMID)
	case DiskShared:
		if img, err := c.imageDisk(); err == nil && img != nil {
			return c.h.sharedDiskPath(img)
		}
	}
	return c.boot.Disk
}

// makeDisk is the create step "disk": it verifies an image's disk and
// clones it, for an isolated VM into the VM's directory, for a shared one
// into the image's shared copy if that does not exist yet.
func (c *createOp) makeDisk(ctx context.Context) error {
	img, err := c.imageDisk()
	if err != nil {
		return err
	}
	if img != nil {
		if err := c.h.verifyImageDisk(img); err != nil {
			return err
		}
	}
	switch {
	case c.cfg.DiskMode == DiskIsolated:
		if err := checkDiskSpace(c.h.vmDir(c.cfg.VMID), c.cfg.DiskSizeMiB); err != nil {
			return err
		}
		if err := image.CloneDisk(ctx, c.boot.Disk, c.h.diskPath(c.cfg.VMID), int64(c.cfg.DiskSizeMiB)); err != nil {
			return fmt.Errorf("copy disk: %w", err)
		}
	case img != nil:
		return c.h.ensureSharedDisk(ctx, img)
	}
	return nil
}

// ensureSharedDisk makes the shared copy of img's disk once, atomically.
func (h *Host) ensureSharedDisk(ctx context.Context, img *image.Image) error {
	dst := h.sharedDiskPath(img)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	lf, err := os.OpenFile(dst+".lock", os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	tmp := dst + ".tmp"
	os.Remove(tmp)
	if err := image.CloneDisk(ctx, img.Rootfs, tmp, 0); err != nil {
		return fmt.Errorf("shared copy of image %s: %w", img.Name, err)
	}
	return os.Rename(tmp, dst)
}

// verifyImageDisk checks img's root disk against the SHA-256 in its
// manifest, unless this very version of the file was verified before.
func (h *Host) verifyImageDisk(img *image.Image) error {
	var want string
	for _, f := range img.Manifest.Files {
		if f.Name == filepath.Base(img.Rootfs) {
			want = f.SHA256
		}
	}
	if want == "" {
		return fmt.Errorf("image %s: its manifest has no checksum of %s", img.Name, filepath.Base(img.Rootfs))
	}
	id, err := fileIdentity(img.Rootfs)
	if err != nil {
		return err
	}
	stamp := filepath.Join(h.dir, "verified", img.Name+"-"+want[:min(16, len(want))])
	if b, err := os.ReadFile(stamp); err == nil && string(b) == id+" "+want {
		return nil
	}
	got, err := sha256File(img.Rootfs)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("image %s: %s has SHA-256 %s, its manifest says %s: the image was modified; rebuild it (smolvm image build %s --force)",
			img.Name, img.Rootfs, got, want, img.Name)
	}
	if err := os.MkdirAll(filepath.Dir(stamp), 0o700); err == nil {
		os.WriteFile(stamp, []byte(id+" "+want), 0o600)
	}
	return nil
}

// fileIdentity names one version of a file: any write changes its ctime,
// which no unprivileged process can set back.
func fileIdentity(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	return strings.Join([]string{fmt.Sprint(st.Dev), fmt.Sprint(st.Ino), fmt.Sprint(st.Size),
		fmt.Sprint(st.Mtim.Nano()), fmt.Sprint(st.Ctim.Nano())}, ":"), nil
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("checksum %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
