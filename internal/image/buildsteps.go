package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// resolveInputs fills the manifest's inputs and fingerprint: checksums of
// the agent and the user's kernel, and the Debian packages apt would fetch.
func (b *builder) resolveInputs(ctx context.Context) error {
	in := Inputs{
		Builder:     builderVersion,
		Name:        b.opts.Name,
		AgentSHA256: sha256Hex(b.agent),
		Modules:     GuestModules,
		Compression: b.opts.Compression,
	}
	if err := b.resolveKernel(ctx, &in); err != nil {
		return err
	}
	if err := b.resolveRootfs(ctx, &in); err != nil {
		return err
	}
	b.m = Manifest{Name: b.opts.Name, Fingerprint: fingerprint(in), Inputs: in}
	return nil
}

// resolveKernel reads and checks the user's kernel, or asks apt which
// Debian kernel package to use.
func (b *builder) resolveKernel(ctx context.Context, in *Inputs) error {
	if b.opts.KernelPath == "" {
		k, err := b.apt.kernelPackage(ctx)
		if err != nil {
			return fmt.Errorf("resolve kernel package: %w", err)
		}
		in.Kernel = &k
		return nil
	}
	var err error
	if b.kernel, err = os.ReadFile(b.opts.KernelPath); err != nil {
		return fmt.Errorf("%w: read %s: %w", ErrInvalidKernel, b.opts.KernelPath, err)
	}
	if _, err := kernelKind(b.kernel); err != nil {
		return fmt.Errorf("kernel %s: %w", b.opts.KernelPath, err)
	}
	in.KernelSHA256 = sha256Hex(b.kernel)
	if b.opts.ModulesDir != "" {
		if in.ModulesSHA256, err = treeSum(b.opts.ModulesDir); err != nil {
			return fmt.Errorf("modules %s: %w", b.opts.ModulesDir, err)
		}
	}
	return nil
}

// resolveRootfs records what the root filesystem is made from.
func (b *builder) resolveRootfs(ctx context.Context, in *Inputs) error {
	if b.opts.Spec != nil {
		return b.resolveUser(ctx, in)
	}
	return b.resolveBuiltin(ctx, in, b.opts.Name)
}

// resolveBuiltin records the packages a built-in root filesystem (or a
// user image's built-in base) is made from.
func (b *builder) resolveBuiltin(ctx context.Context, in *Inputs, name string) error {
	switch name {
	case NameMinimal:
		bb, err := b.apt.show(ctx, "busybox-static")
		if err != nil {
			return fmt.Errorf("resolve busybox: %w", err)
		}
		in.Busybox = &bb
	case NameDefault:
		if _, err := LookTool("mmdebstrap"); err != nil {
			return err
		}
		sources, err := debianSources("/", debianSuite)
		if err != nil {
			return err
		}
		in.Suite, in.Sources, in.Packages, in.Users = debianSuite, sources, DefaultPackages, DefaultUsers
	}
	return nil
}

// kernelStep writes the kernel files: the bzImage and the vmlinux extracted
// from it, or the user's ELF vmlinux alone.
func (b *builder) kernelStep(ctx context.Context) error {
	if b.opts.KernelPath == "" {
		if err := b.unpackDebianKernel(ctx); err != nil {
			return err
		}
	} else if b.opts.ModulesDir != "" {
		b.modDir = b.opts.ModulesDir
		b.m.KernelVersion = filepath.Base(filepath.Clean(b.modDir))
	}
	b.progress("kernel", 0, 1)
	kind, err := kernelKind(b.kernel)
	if err != nil {
		return err
	}
	b.m.KernelKind = kind
	files := map[string][]byte{vmlinuxFile: b.kernel}
	if kind == KernelBzImage {
		vmlinux, err := ExtractVmlinux(b.kernel)
		if err != nil {
			return err
		}
		files = map[string][]byte{kernelFile: b.kernel, vmlinuxFile: vmlinux}
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(b.tmp, name), data, 0o644); err != nil {
			return err
		}
	}
	b.kernel = nil
	b.progress("kernel", 1, 1)
	return nil
}

// unpackDebianKernel downloads (or finds) the kernel package and reads its
// bzImage and modules directory.
func (b *builder) unpackDebianKernel(ctx context.Context) error {
	pkg := *b.m.Inputs.Kernel
	b.progress("download "+pkg.Name, 0, 1)
	deb, err := b.apt.cachedDownload(ctx, b.opts.CacheDir, pkg)
	if err != nil {
		return err
	}
	b.progress("download "+pkg.Name, 1, 1)
	b.progress("unpack kernel", 0, 1)
	kroot := filepath.Join(b.work, "kernel")
	if err := unpack(ctx, deb, kroot); err != nil {
		return err
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(kroot, "boot/vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return fmt.Errorf("%w: %s has %d /boot/vmlinuz-* files, want 1", ErrInvalidKernel, pkg.Name, len(vmlinuz))
	}
	b.m.KernelVersion = strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	b.modDir = filepath.Join(kroot, "lib/modules", b.m.KernelVersion)
	if b.kernel, err = os.ReadFile(vmlinuz[0]); err != nil {
		return err
	}
	b.progress("unpack kernel", 1, 1)
	return nil
}

// initramfsStep writes the initramfs: the agent as /init and the guest
// modules with their load order.
func (b *builder) initramfsStep(ctx context.Context) error {
	b.progress("initramfs", 0, 1)
	spec := initramfsSpec{Agent: b.agent, ModulesDir: b.modDir, Version: b.m.KernelVersion}
	if b.modDir != "" {
		set, err := ReadModules(b.modDir)
		if err != nil {
			return err
		}
		if spec.Modules, err = set.Resolve(GuestModules); err != nil {
			return fmt.Errorf("kernel %s: %w", b.m.KernelVersion, err)
		}
		spec.Set = set
	}
	b.m.Modules = spec.Modules
	initrd, err := buildInitramfs(spec, b.opts.Compression)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.tmp, initrdFile), initrd, 0o644); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	b.progress("initramfs", 1, 1)
	return ctx.Err()
}

// rootfsStep fills a directory tree for the image and turns it into ext4.
func (b *builder) rootfsStep(ctx context.Context) error {
	rootDir := filepath.Join(b.work, "rootfs")
	var err error
	switch {
	case b.opts.Spec != nil:
		err = b.userTree(ctx, rootDir)
	case b.opts.Name == NameMinimal:
		err = b.minimalTree(ctx, rootDir)
	case b.opts.Name == NameDefault:
		err = b.defaultTree(ctx, rootDir)
	}
	if err != nil {
		return err
	}
	b.progress("mkfs.ext4", 0, 1)
	if err := makeExt4(ctx, rootDir, filepath.Join(b.tmp, rootfsFile), b.m.Fingerprint); err != nil {
		return err
	}
	b.progress("mkfs.ext4", 1, 1)
	if err := os.RemoveAll(b.work); err != nil {
		return fmt.Errorf("remove build files: %w", err)
	}
	return nil
}

// minimalTree fills rootDir with busybox from the Debian package.
func (b *builder) minimalTree(ctx context.Context, rootDir string) error {
	b.progress("rootfs: busybox", 0, 1)
	deb, err := b.apt.cachedDownload(ctx, b.opts.CacheDir, *b.m.Inputs.Busybox)
	if err != nil {
		return err
	}
	bbRoot := filepath.Join(b.work, "busybox")
	if err := unpack(ctx, deb, bbRoot); err != nil {
		return err
	}
	if err := minimalRootfs(ctx, rootDir, filepath.Join(bbRoot, "bin/busybox"), b.agent); err != nil {
		return fmt.Errorf("minimal rootfs: %w", err)
	}
	b.progress("rootfs: busybox", 1, 1)
	return nil
}

// defaultTree fills rootDir with Debian by mmdebstrap.
func (b *builder) defaultTree(ctx context.Context, rootDir string) error {
	b.progress("rootfs: mmdebstrap "+debianSuite, 0, 1)
	if err := defaultRootfs(ctx, rootDir, b.m.Inputs.Sources, b.m.Inputs.Packages, b.m.Inputs.Users, b.agent); err != nil {
		return fmt.Errorf("default rootfs: %w", err)
	}
	b.progress("rootfs: mmdebstrap "+debianSuite, 1, 1)
	return nil
}

// manifestStep checksums the image's files and writes the manifest.
func (b *builder) manifestStep(ctx context.Context) error {
	b.progress("checksum", 0, 1)
	for _, n := range []string{kernelFile, vmlinuxFile, initrdFile, rootfsFile} {
		fi, err := fileInfo(filepath.Join(b.tmp, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		b.m.Files = append(b.m.Files, fi)
	}
	b.progress("checksum", 1, 1)
	if err := ctx.Err(); err != nil {
		return err
	}
	b.m.BuiltAt = time.Now().UTC().Truncate(time.Second)
	b.m.BuildSeconds = time.Since(b.start).Round(time.Millisecond).Seconds()
	if err := writeManifest(b.tmp, &b.m); err != nil {
		return err
	}
	return syncDir(b.tmp)
}
