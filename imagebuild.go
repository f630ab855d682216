package smolvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/network"
)

// userImage reports whether bo describes a user image (a spec or a base).
func (bo ImageBuildOptions) userImage() bool {
	return bo.SpecFile != "" || bo.From != "" || len(bo.Packages) > 0 || len(bo.Run) > 0
}

// loadSpec reads bo's spec file (if any) and applies the shortcut fields
// on top: From replaces from:, Packages and Run are appended.
func (bo ImageBuildOptions) loadSpec() (*image.Spec, error) {
	var s *image.Spec
	var err error
	if bo.SpecFile != "" {
		if s, err = image.LoadSpec(bo.SpecFile); err != nil {
			return nil, err
		}
	} else {
		wd, _ := os.Getwd()
		from := bo.From
		if from == "" {
			from = ImageDefault
		}
		j, _ := json.Marshal(map[string]string{"from": from})
		if s, err = image.ParseSpec(j, wd); err != nil {
			return nil, err
		}
	}
	if bo.From != "" {
		s.From = bo.From
	}
	s.Packages = append(s.Packages, bo.Packages...)
	s.Run = append(s.Run, bo.Run...)
	return s, s.Validate()
}

// buildUserImage builds the user image name from a spec, running its run:
// steps in a build VM.
func (h *Host) buildUserImage(ctx context.Context, name string, bo ImageBuildOptions) (*image.Image, error) {
	spec, err := bo.loadSpec()
	if err != nil {
		return nil, wrapErr("build image", name, ErrInvalidConfig, err)
	}
	agent, err := findAgent()
	if err != nil {
		return nil, err
	}
	img, err := image.Build(ctx, image.BuildOptions{
		Name: name, Spec: spec, CacheDir: h.imageDir, KernelPath: bo.KernelPath, AgentPath: agent, Force: bo.Force,
		Progress: bo.Progress, KeepFailed: bo.KeepFailed,
		RunSteps: func(ctx context.Context, stage *image.Image, steps []string) error {
			return h.runBuildSteps(ctx, stage, steps, bo)
		},
	})
	if err != nil {
		return nil, wrapErr("build image", name, ErrImage, err)
	}
	return img, nil
}

// buildVMMemory is the build VM's memory: package managers need room.
const buildVMMemory = 1024

// runBuildSteps boots a VM from the build directory's files, writing into
// its root disk, runs each step as root with `sh -lc`, streaming output to
// bo.Output, and powers the VM off cleanly so the disk is complete. The VM
// is deleted whatever happens. A failing step's error names it.
func (h *Host) runBuildSteps(ctx context.Context, stage *image.Image, steps []string, bo ImageBuildOptions) (retErr error) {
	progress := func(stage string, done, total int64) {
		if bo.Progress != nil {
			bo.Progress(stage, done, total)
		}
	}
	var rb [4]byte
	rand.Read(rb[:])
	cfg := VMConfig{
		VMID:       "build-" + hex.EncodeToString(rb[:]),
		KernelPath: stage.Kernel, InitrdPath: stage.Initrd, RootfsPath: stage.Rootfs,
		DiskMode: DiskShared, MemSizeMiB: buildVMMemory,
		// Steps that download need the network; without a usable one
		// (no TAP support) they run offline.
		NoNetwork: network.Check() != nil,
	}
	progress("build VM: boot", 0, 1)
	vm, err := h.Create(ctx, cfg)
	if err != nil {
		return fmt.Errorf("build VM: %w", err)
	}
	defer func() {
		if err := vm.Delete(context.WithoutCancel(ctx)); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("delete build VM: %w", err))
		}
	}()
	if err := vm.Start(ctx); err != nil {
		return fmt.Errorf("build VM: %w", err)
	}
	progress("build VM: boot", 1, 1)
	out := bo.Output
	if out == nil {
		out = io.Discard
	}
	for i, step := range steps {
		label := fmt.Sprintf("run[%d] %s", i, oneLine(step))
		progress(label, 0, 1)
		st, err := vm.Exec(ctx, ExecOptions{Shell: step, User: "root", Dir: "/", Stdout: out, Stderr: out})
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		if st.ExitCode != 0 {
			return fmt.Errorf("%s: failed with exit code %d", label, st.ExitCode)
		}
		progress(label, 1, 1)
	}
	// Flush and power off cleanly: the disk must be complete.
	progress("build VM: stop", 0, 1)
	if _, err := vm.Exec(ctx, ExecOptions{Argv: []string{"sync"}, User: "root"}); err != nil {
		return fmt.Errorf("build VM: sync: %w", err)
	}
	if err := vm.Stop(ctx); err != nil {
		return fmt.Errorf("build VM: stop: %w", err)
	}
	progress("build VM: stop", 1, 1)
	return nil
}

// oneLine shortens a step for progress lines and errors.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// ImportImage makes the image name from file: an archive written by
// ExportImage (installed as it was, checksums checked), a root filesystem
// tarball (docker export), an OCI image layout (directory or tar) or a
// docker save archive (flattened, with this host's kernel and agent
// initramfs; the OCI config's env, workdir and user become the defaults of
// every command, its entrypoint and cmd the start command).
func (h *Host) ImportImage(ctx context.Context, name, file string, bo ImageBuildOptions) (ImageInfo, error) {
	if err := image.CheckName(name); err != nil {
		return ImageInfo{}, wrapErr("import image", name, ErrInvalidConfig, err)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return ImageInfo{}, wrapErr("import image", name, ErrInvalidConfig, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return ImageInfo{}, wrapErr("import image", name, ErrInvalidConfig, configErr("file", file, err.Error()))
	}
	if !st.IsDir() && image.IsExport(abs) {
		stage := "import " + filepath.Base(abs) + " (check checksums)"
		if bo.Progress != nil {
			bo.Progress(stage, 0, 1)
		}
		img, err := image.ImportExport(ctx, h.imageDir, name, abs)
		if err != nil {
			return ImageInfo{}, wrapErr("import image", name, ErrImage, err)
		}
		if bo.Progress != nil {
			bo.Progress(stage, 1, 1)
		}
		return imageInfo(img), nil
	}
	bo.From = "tar:" + abs
	if st.IsDir() {
		bo.From = "oci:" + abs
	}
	bo.SpecFile, bo.Packages, bo.Run = "", nil, nil
	img, err := h.buildUserImage(ctx, name, bo)
	if err != nil {
		return ImageInfo{}, err
	}
	return imageInfo(img), nil
}

// ExportImage writes the image name to file as a self-describing tar
// archive (manifest with checksums, then the files) that ImportImage
// installs unchanged on another host.
func (h *Host) ExportImage(ctx context.Context, name, file string) error {
	if err := image.Export(ctx, h.imageDir, name, file); err != nil {
		return wrapErr("export image", name, ErrImage, err)
	}
	return nil
}

// imageUsers names the VMs (and snapshots of them) that use the image
// name: created from it, or booting its files.
func (h *Host) imageUsers(ctx context.Context, name string) ([]string, error) {
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(h.imageDir, name) + string(filepath.Separator)
	users := map[string]bool{}
	var out []string
	for _, r := range rows {
		var rec record
		if json.Unmarshal(r.Config, &rec) != nil {
			continue
		}
		uses := rec.Config.Image == name
		for _, p := range []string{rec.Boot.Kernel, rec.Boot.Vmlinux, rec.Boot.Initrd, rec.Boot.Disk} {
			uses = uses || (p != "" && strings.HasPrefix(p, dir))
		}
		if uses {
			users[r.ID] = true
			out = append(out, "VM "+r.ID)
		}
	}
	snaps, err := h.st.Snapshots(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, sn := range snaps {
		if users[sn.VMID] {
			out = append(out, "snapshot "+sn.ID)
		}
	}
	return out, nil
}

// ForceRemoveImage deletes an image even while VMs or snapshots use it.
func (h *Host) ForceRemoveImage(ctx context.Context, name string) error {
	if err := image.Remove(ctx, h.imageDir, name); err != nil {
		return wrapErr("remove image", name, ErrImage, err)
	}
	h.dropImageTemplates(ctx, name) // warm.go
	return nil
}

// PruneImages removes the user images no VM or snapshot uses, and the
// directories of failed builds kept for inspection; it returns what it
// removed. The built-in images stay (they are rebuilt on demand anyway).
func (h *Host) PruneImages(ctx context.Context) ([]string, error) {
	imgs, err := image.List(h.imageDir)
	if err != nil {
		return nil, wrapErr("prune images", "", ErrImage, err)
	}
	removed := []string{}
	for _, img := range imgs {
		if img.Name == ImageDefault || img.Name == ImageMinimal {
			continue
		}
		users, err := h.imageUsers(ctx, img.Name)
		if err != nil {
			return removed, wrapErr("prune images", "", ErrBackend, err)
		}
		if len(users) > 0 {
			continue
		}
		if err := image.Remove(ctx, h.imageDir, img.Name); err != nil {
			return removed, wrapErr("prune images", img.Name, ErrImage, err)
		}
		h.dropImageTemplates(ctx, img.Name) // warm.go
		removed = append(removed, img.Name)
	}
	removed = append(removed, h.pruneTemplates(ctx)...) // warm.go
	failed, _ := filepath.Glob(filepath.Join(h.imageDir, ".failed-*"))
	for _, d := range failed {
		if err := os.RemoveAll(d); err != nil {
			return removed, wrapErr("prune images", "", ErrImage, err)
		}
		removed = append(removed, filepath.Base(d))
	}
	return removed, nil
}
