package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/smolvm-go/smolvm/internal/imagecfg"
)

// stepHeadroom is the room a build VM's disk gets for the run: steps; the
// disk is shrunk back to its content plus the usual headroom afterwards.
const stepHeadroom = 4 << 30

// runStep runs a spec's run: steps through opts.RunSteps in a VM booted
// from the build directory's files, then writes the image's final run
// configuration into the disk and shrinks it.
func (b *builder) runStep(ctx context.Context) error {
	if b.opts.Spec == nil || len(b.opts.Spec.Run) == 0 {
		return nil
	}
	disk := filepath.Join(b.tmp, rootfsFile)
	if err := resizeExt4(ctx, disk, stepHeadroom); err != nil {
		return fmt.Errorf("grow the build disk: %w", err)
	}
	stage := &Image{Name: b.opts.Name, Dir: b.tmp, Vmlinux: filepath.Join(b.tmp, vmlinuxFile),
		Initrd: filepath.Join(b.tmp, initrdFile), Rootfs: disk, Manifest: b.m}
	stage.Kernel = filepath.Join(b.tmp, kernelFile)
	if _, err := os.Stat(stage.Kernel); err != nil {
		stage.Kernel = stage.Vmlinux
	}
	if err := b.opts.RunSteps(ctx, stage, b.opts.Spec.Steps()); err != nil {
		return err
	}
	b.progress("finish rootfs", 0, 1)
	if err := writeGuestConfig(ctx, disk, b.m.Config.Guest()); err != nil {
		return err
	}
	if err := shrinkExt4(ctx, disk); err != nil {
		return fmt.Errorf("shrink the disk: %w", err)
	}
	b.progress("finish rootfs", 1, 1)
	return nil
}

// writeGuestConfig replaces imagecfg.File in an ext4 image with cfg, with
// debugfs (no mount needed).
func writeGuestConfig(ctx context.Context, disk string, cfg imagecfg.Config) error {
	j, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	src := disk + ".image.json"
	if err := os.WriteFile(src, append(j, '\n'), 0o644); err != nil {
		return err
	}
	defer os.Remove(src)
	f := imagecfg.File
	script := fmt.Sprintf("mkdir %s\nrm %s\nwrite %s %s\nsif %s uid 0\nsif %s gid 0\nsif %s mode 0100644\n",
		filepath.Dir(f), f, src, f, f, f, f)
	sf := disk + ".debugfs"
	if err := os.WriteFile(sf, []byte(script), 0o600); err != nil {
		return err
	}
	defer os.Remove(sf)
	if _, err := runTool(ctx, "", "debugfs", "-w", "-f", sf, disk); err != nil {
		return fmt.Errorf("write %s: %w", f, err)
	}
	// debugfs goes on after a failed command: check the result.
	out, err := runTool(ctx, "", "debugfs", "-R", "cat "+f, disk)
	if err != nil || strings.TrimSpace(string(out)) != strings.TrimSpace(string(j)) {
		return fmt.Errorf("write %s: not in the disk after debugfs (%v)", f, err)
	}
	return nil
}

// fsck checks and repairs an ext4 image; exit status 1 (errors fixed) is
// success.
func fsck(ctx context.Context, disk string) error {
	p, err := LookTool("e2fsck")
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, p, "-f", "-y", disk).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("e2fsck %s: %w: %s", disk, err, tail(string(out), 800))
	}
	return nil
}

// resizeExt4 grows an ext4 image by add bytes (sparse).
func resizeExt4(ctx context.Context, disk string, add int64) error {
	st, err := os.Stat(disk)
	if err != nil {
		return err
	}
	if err := os.Truncate(disk, st.Size()+add); err != nil {
		return err
	}
	if err := fsck(ctx, disk); err != nil {
		return err
	}
	_, err = runTool(ctx, "", "resize2fs", "-f", disk)
	return err
}

// shrinkExt4 shrinks an ext4 image to its content plus the headroom
// makeExt4 gives.
func shrinkExt4(ctx context.Context, disk string) error {
	if err := fsck(ctx, disk); err != nil {
		return err
	}
	if _, err := runTool(ctx, "", "resize2fs", "-M", disk); err != nil {
		return err
	}
	out, err := runTool(ctx, "", "dumpe2fs", "-h", disk)
	if err != nil {
		return err
	}
	var blocks, bsize int64
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch strings.TrimSpace(k) {
		case "Block count":
			fmt.Sscan(strings.TrimSpace(v), &blocks)
		case "Block size":
			fmt.Sscan(strings.TrimSpace(v), &bsize)
		}
	}
	if blocks == 0 || bsize == 0 {
		return fmt.Errorf("dumpe2fs %s: no block count", disk)
	}
	used := blocks * bsize
	size := used + max(used/3, 32<<20)
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	if err := os.Truncate(disk, size); err != nil {
		return err
	}
	_, err = runTool(ctx, "", "resize2fs", "-f", disk)
	return err
}
