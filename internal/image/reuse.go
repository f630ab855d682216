package image

import (
	"context"
	"os"
	"path/filepath"
	"slices"
)

// bootFiles are the files an image's kernel and initramfs steps make.
var bootFiles = []string{kernelFile, vmlinuxFile, initrdFile}

// reuseBootFiles links the kernel and initramfs of a cached image built
// from the same kernel package, agent, modules and compression into the
// build directory, instead of unpacking and packing them again. Images are
// never changed in place (a rebuild replaces the directory), so sharing
// the files is safe. It reports whether it did.
func (b *builder) reuseBootFiles(ctx context.Context) bool {
	want := b.m.Inputs
	if b.opts.KernelPath != "" || want.Kernel == nil {
		return false
	}
	imgs, _ := List(b.opts.CacheDir)
	for _, img := range imgs {
		in := img.Manifest.Inputs
		if in.Builder != want.Builder || in.Kernel == nil || *in.Kernel != *want.Kernel || in.AgentSHA256 != want.AgentSHA256 ||
			in.Compression != want.Compression || !slices.Equal(in.Modules, want.Modules) || in.KernelSHA256 != "" {
			continue
		}
		if b.linkBootFiles(img) {
			b.m.KernelVersion, b.m.KernelKind, b.m.Modules = img.Manifest.KernelVersion, img.Manifest.KernelKind, img.Manifest.Modules
			stage := "kernel and initramfs: reuse " + img.Name + "'s"
			b.progress(stage, 0, 1)
			b.progress(stage, 1, 1)
			return ctx.Err() == nil
		}
	}
	return false
}

// linkBootFiles hard-links (or copies) img's boot files into the build
// directory; on failure it removes what it made.
func (b *builder) linkBootFiles(img *Image) bool {
	var made []string
	for _, n := range bootFiles {
		src, dst := filepath.Join(img.Dir, n), filepath.Join(b.tmp, n)
		if _, err := os.Stat(src); os.IsNotExist(err) && n == kernelFile {
			continue // an ELF kernel has no bzImage
		}
		if err := os.Link(src, dst); err != nil {
			data, rerr := os.ReadFile(src)
			if rerr != nil || os.WriteFile(dst, data, 0o644) != nil {
				for _, m := range made {
					os.Remove(m)
				}
				return false
			}
		}
		made = append(made, dst)
	}
	return true
}
