package shim

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/mount"
)

// The container's root filesystem reaches the VM as a block device: an
// ext4 image built from the root directory with `mkfs.ext4 -d` when the
// task is created. Why not a 9p or virtiofs share of the directory: the
// guest is hostile, and a block device gives it its own filesystem to
// corrupt, not a file server in the VMM walking host paths on its behalf
// (QEMU's 9p server is a large attack surface, and virtiofs needs
// virtiofsd and shared memory); the agent's boot path already mounts a
// block root and switches into it; and guest file I/O runs at block speed
// with real ownership and permissions instead of 9p's slow, mapped
// semantics (painful under TCG). The cost is a copy at create time
// (measured in the README) and that writes stay in the VM: the snapshot
// directory does not see them.

// rootfsImage is the image's file name in the bundle.
const rootfsImage = "smolvm-rootfs.ext4"

// mountRootfs mounts the snapshotter's mounts on dir (the bundle's rootfs)
// and returns the undo. With no mounts (ctr run --rootfs), dir is used as it is.
func mountRootfs(mounts []*types.Mount, dir string) (func() error, error) {
	if len(mounts) == 0 {
		return func() error { return nil }, nil
	}
	ms := make([]mount.Mount, 0, len(mounts))
	for _, m := range mounts {
		ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	if err := mount.All(ms, dir); err != nil {
		return nil, fmt.Errorf("mount rootfs: %w", err)
	}
	return func() error { return mount.UnmountAll(dir, 0) }, nil
}

// buildRootfs writes dir into a new sparse ext4 image at img, sized to the
// content plus headroom for the container's writes, and reports how long
// mkfs took.
func buildRootfs(ctx context.Context, dir, img string) (time.Duration, error) {
	var used, inodes int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				used += (fi.Size() + 4095) &^ 4095
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure rootfs %s: %w", dir, err)
	}
	// Headroom for the container's own writes: the content again, at least
	// 256 MiB; sparse, so unused room costs nothing on the host.
	size := used + max(used, 256<<20) + inodes*256 + 16<<20
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(img)
		return 0, fmt.Errorf("size rootfs image: %w", err)
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-L", "smolvm-root",
		"-N", fmt.Sprint(inodes+inodes/2+4096), "-d", dir, img)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(img)
		if len(out) > 2048 {
			out = out[:2048]
		}
		return 0, fmt.Errorf("mkfs.ext4 -d %s: %w: %s", dir, err, out)
	}
	return time.Since(start), nil
}
