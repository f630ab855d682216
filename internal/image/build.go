// Package image builds and caches guest images: a kernel (bzImage for QEMU
// and an ELF vmlinux for Firecracker), an initramfs holding the static
// agent as /init and the kernel modules it loads, and an ext4 root
// filesystem, all made from Debian packages with the host's apt. It also
// clones root disks for individual VMs.
//
// A cache directory holds one directory per image, <cacheDir>/<name>/, with
// a manifest.json written last. Builds are keyed by a fingerprint of their
// inputs, serialised per image with a lock file, and built in a temporary
// directory that is renamed into place, so an interrupted build never
// leaves an image that looks complete.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// builderVersion changes whenever the build recipe changes in a way that
// must invalidate cached images.
const builderVersion = 2

// File names inside an image directory.
const (
	manifestFile = "manifest.json"
	kernelFile   = "vmlinuz"
	vmlinuxFile  = "vmlinux"
	initrdFile   = "initrd.img"
	rootfsFile   = "rootfs.ext4"
)

// BuildOptions says which image to build and from what.
type BuildOptions struct {
	// Name is the image to build: NameMinimal or NameDefault.
	Name string
	// CacheDir is the directory holding built images; it is created if needed.
	CacheDir string
	// KernelPath is a kernel of the user's own (bzImage or ELF vmlinux);
	// empty means Debian's linux-image-cloud-amd64.
	KernelPath string
	// ModulesDir is the /lib/modules/<version> directory matching KernelPath;
	// empty means the user's kernel has its drivers built in.
	ModulesDir string
	// AgentPath is the static smolvm-agent binary to install (required).
	AgentPath string
	// Compression is the initramfs compression; empty means DefaultCompression.
	Compression Compression
	// Force rebuilds even when a cached image has the same fingerprint.
	Force bool
	// Progress, if set, is called as the build advances: stage names what is
	// happening; done and total count steps or bytes (total 0: unknown).
	Progress func(stage string, done, total int64)
}

// Image is a complete, cached image.
type Image struct {
	// Name is the image's name.
	Name string
	// Dir is the image's directory in the cache.
	Dir string
	// Kernel is the kernel QEMU boots: a bzImage, or an ELF vmlinux with a
	// PVH note; empty if the user's ELF kernel has no PVH note.
	Kernel string
	// Vmlinux is the ELF kernel Firecracker boots.
	Vmlinux string
	// Initrd is the initramfs (agent as /init, modules).
	Initrd string
	// Rootfs is the ext4 root filesystem; clone it with CloneDisk.
	Rootfs string
	// Manifest describes how the image was built.
	Manifest Manifest
}

// Manifest is the image's manifest.json: what went in, what came out.
type Manifest struct {
	// Name is the image's name.
	Name string `json:"name"`
	// Fingerprint is the SHA-256 of Inputs; equal fingerprints mean an
	// equal build.
	Fingerprint string `json:"fingerprint"`
	// Inputs are the build's inputs.
	Inputs Inputs `json:"inputs"`
	// Files lists the image's files with sizes and checksums.
	Files []FileInfo `json:"files"`
	// KernelVersion is the kernel release, e.g. 6.1.0-56-cloud-amd64
	// (empty for a user kernel without modules).
	KernelVersion string `json:"kernel_version,omitempty"`
	// KernelKind says what the kernel file is.
	KernelKind KernelKind `json:"kernel_kind"`
	// Modules are the modules in the initramfs, in load order.
	Modules []string `json:"modules"`
	// BuiltAt is when the build finished.
	BuiltAt time.Time `json:"built_at"`
	// BuildSeconds is how long the build took.
	BuildSeconds float64 `json:"build_seconds"`
}

// Inputs are everything a build depends on.
type Inputs struct {
	// Builder is the build recipe's version.
	Builder int `json:"builder"`
	// Name is the image name.
	Name string `json:"name"`
	// Kernel is the Debian kernel package, when no user kernel is given.
	Kernel *debPackage `json:"kernel,omitempty"`
	// KernelSHA256 is the checksum of the user's kernel file.
	KernelSHA256 string `json:"kernel_sha256,omitempty"`
	// ModulesSHA256 is a checksum over the user's modules directory listing.
	ModulesSHA256 string `json:"modules_sha256,omitempty"`
	// AgentSHA256 is the agent binary's checksum.
	AgentSHA256 string `json:"agent_sha256"`
	// Busybox is the busybox-static package (minimal image).
	Busybox *debPackage `json:"busybox,omitempty"`
	// Suite, Sources and Packages define the default image's mmdebstrap run.
	Suite    string   `json:"suite,omitempty"`
	Sources  []string `json:"sources,omitempty"`
	Packages []string `json:"packages,omitempty"`
	// Modules are the module names asked for.
	Modules []string `json:"modules"`
	// Compression is the initramfs compression.
	Compression Compression `json:"compression"`
}

// FileInfo is one file of an image.
type FileInfo struct {
	// Name is the file's name in the image directory.
	Name string `json:"name"`
	// Size is its size in bytes.
	Size int64 `json:"size"`
	// SHA256 is its checksum.
	SHA256 string `json:"sha256"`
}

// Build returns the named image, building it unless the cache already holds
// one with the same inputs. Concurrent builds of one image wait for each
// other; the later one then finds the cache hit.
func Build(ctx context.Context, opts BuildOptions) (img *Image, retErr error) {
	start := time.Now()
	if opts.Name != NameMinimal && opts.Name != NameDefault {
		return nil, fmt.Errorf("unknown image %q (want %s or %s)", opts.Name, NameMinimal, NameDefault)
	}
	if opts.CacheDir == "" {
		return nil, errors.New("image cache directory not set")
	}
	if opts.Compression == "" {
		opts.Compression = DefaultCompression
	}
	if _, err := compress(opts.Compression, nil); err != nil {
		return nil, err
	}
	progress := func(stage string, done, total int64) {
		if opts.Progress != nil {
			opts.Progress(stage, done, total)
		}
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("image cache %s: %w", opts.CacheDir, err)
	}
	if err := unix.Access(opts.CacheDir, unix.W_OK); err != nil {
		return nil, fmt.Errorf("image cache %s is not writable: %w", opts.CacheDir, err)
	}
	agent, err := readAgent(opts.AgentPath)
	if err != nil {
		return nil, err
	}

	progress("lock", 0, 1)
	unlock, err := lockImage(ctx, opts.CacheDir, opts.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	progress("lock", 1, 1)
	cleanStale(opts.CacheDir, opts.Name)

	progress("resolve inputs", 0, 1)
	a := &apt{progress: opts.Progress}
	in := Inputs{
		Builder:     builderVersion,
		Name:        opts.Name,
		AgentSHA256: sha256Hex(agent),
		Modules:     GuestModules,
		Compression: opts.Compression,
	}
	var userKernel []byte
	if opts.KernelPath != "" {
		userKernel, err = os.ReadFile(opts.KernelPath)
		if err != nil {
			return nil, fmt.Errorf("%w: read %s: %w", ErrInvalidKernel, opts.KernelPath, err)
		}
		if _, err := kernelKind(userKernel); err != nil {
			return nil, fmt.Errorf("kernel %s: %w", opts.KernelPath, err)
		}
		in.KernelSHA256 = sha256Hex(userKernel)
		if opts.ModulesDir != "" {
			if in.ModulesSHA256, err = treeSum(opts.ModulesDir); err != nil {
				return nil, fmt.Errorf("modules %s: %w", opts.ModulesDir, err)
			}
		}
	} else {
		k, err := a.kernelPackage(ctx)
		if err != nil {
			return nil, fmt.Errorf("resolve kernel package: %w", err)
		}
		in.Kernel = &k
	}
	switch opts.Name {
	case NameMinimal:
		bb, err := a.show(ctx, "busybox-static")
		if err != nil {
			return nil, fmt.Errorf("resolve busybox: %w", err)
		}
		in.Busybox = &bb
	case NameDefault:
		if _, err := LookTool("mmdebstrap"); err != nil {
			return nil, err
		}
		in.Suite = debianSuite
		if in.Sources, err = debianSources("/", debianSuite); err != nil {
			return nil, err
		}
		in.Packages = DefaultPackages
	}
	fp := fingerprint(in)
	progress("resolve inputs", 1, 1)

	final := filepath.Join(opts.CacheDir, opts.Name)
	if !opts.Force {
		if cur, err := Get(opts.CacheDir, opts.Name); err == nil && cur.Manifest.Fingerprint == fp {
			progress("cached", 1, 1)
			return cur, nil
		}
	}
	for _, t := range []string{"mkfs.ext4", "dpkg-deb"} {
		if _, err := LookTool(t); err != nil {
			return nil, err
		}
	}

	tmp, err := os.MkdirTemp(opts.CacheDir, tmpPrefix(opts.Name))
	if err != nil {
		return nil, fmt.Errorf("image cache %s: %w", opts.CacheDir, err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		return nil, err
	}

	m := Manifest{Name: opts.Name, Fingerprint: fp, Inputs: in}

	// Kernel and modules.
	var modDir string
	if opts.KernelPath == "" {
		progress("download "+in.Kernel.Name, 0, 1)
		deb, err := a.cachedDownload(ctx, opts.CacheDir, *in.Kernel)
		if err != nil {
			return nil, err
		}
		progress("download "+in.Kernel.Name, 1, 1)
		progress("unpack kernel", 0, 1)
		kroot := filepath.Join(work, "kernel")
		if err := unpack(ctx, deb, kroot); err != nil {
			return nil, err
		}
		vmlinuz, _ := filepath.Glob(filepath.Join(kroot, "boot/vmlinuz-*"))
		if len(vmlinuz) != 1 {
			return nil, fmt.Errorf("%w: %s has %d /boot/vmlinuz-* files, want 1", ErrInvalidKernel, in.Kernel.Name, len(vmlinuz))
		}
		m.KernelVersion = strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
		modDir = filepath.Join(kroot, "lib/modules", m.KernelVersion)
		if userKernel, err = os.ReadFile(vmlinuz[0]); err != nil {
			return nil, err
		}
		progress("unpack kernel", 1, 1)
	} else if opts.ModulesDir != "" {
		modDir = opts.ModulesDir
		m.KernelVersion = filepath.Base(filepath.Clean(modDir))
	}
	progress("kernel", 0, 1)
	if m.KernelKind, err = kernelKind(userKernel); err != nil {
		return nil, err
	}
	switch m.KernelKind {
	case KernelBzImage:
		vmlinux, err := ExtractVmlinux(userKernel)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(tmp, kernelFile), userKernel, 0o644); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(tmp, vmlinuxFile), vmlinux, 0o644); err != nil {
			return nil, err
		}
	default:
		if err := os.WriteFile(filepath.Join(tmp, vmlinuxFile), userKernel, 0o644); err != nil {
			return nil, err
		}
	}
	userKernel = nil
	progress("kernel", 1, 1)

	// Initramfs.
	progress("initramfs", 0, 1)
	spec := initramfsSpec{Agent: agent, ModulesDir: modDir, Version: m.KernelVersion}
	if modDir != "" {
		set, err := ReadModules(modDir)
		if err != nil {
			return nil, err
		}
		if spec.Modules, err = set.Resolve(GuestModules); err != nil {
			return nil, fmt.Errorf("kernel %s: %w", m.KernelVersion, err)
		}
		spec.Set = set
	}
	m.Modules = spec.Modules
	initrd, err := buildInitramfs(spec, opts.Compression)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, initrdFile), initrd, 0o644); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	progress("initramfs", 1, 1)

	// Root filesystem.
	rootDir := filepath.Join(work, "rootfs")
	switch opts.Name {
	case NameMinimal:
		progress("rootfs: busybox", 0, 1)
		deb, err := a.cachedDownload(ctx, opts.CacheDir, *in.Busybox)
		if err != nil {
			return nil, err
		}
		bbRoot := filepath.Join(work, "busybox")
		if err := unpack(ctx, deb, bbRoot); err != nil {
			return nil, err
		}
		if err := minimalRootfs(ctx, rootDir, filepath.Join(bbRoot, "bin/busybox"), agent); err != nil {
			return nil, fmt.Errorf("minimal rootfs: %w", err)
		}
		progress("rootfs: busybox", 1, 1)
	case NameDefault:
		progress("rootfs: mmdebstrap "+debianSuite, 0, 1)
		if err := defaultRootfs(ctx, rootDir, in.Sources, agent); err != nil {
			return nil, fmt.Errorf("default rootfs: %w", err)
		}
		progress("rootfs: mmdebstrap "+debianSuite, 1, 1)
	}
	progress("mkfs.ext4", 0, 1)
	if err := makeExt4(ctx, rootDir, filepath.Join(tmp, rootfsFile), fp); err != nil {
		return nil, err
	}
	progress("mkfs.ext4", 1, 1)
	if err := os.RemoveAll(work); err != nil {
		return nil, fmt.Errorf("remove build files: %w", err)
	}

	// Manifest, then the atomic switch.
	progress("checksum", 0, 1)
	names := []string{kernelFile, vmlinuxFile, initrdFile, rootfsFile}
	for _, n := range names {
		fi, err := fileInfo(filepath.Join(tmp, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m.Files = append(m.Files, fi)
	}
	progress("checksum", 1, 1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.BuiltAt = time.Now().UTC().Truncate(time.Second)
	m.BuildSeconds = time.Since(start).Round(time.Millisecond).Seconds()
	if err := writeManifest(tmp, &m); err != nil {
		return nil, err
	}
	if err := syncDir(tmp); err != nil {
		return nil, err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err == nil {
		// tmp now holds the old image.
		os.RemoveAll(tmp)
	} else if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("install image: %w", err)
	}
	_ = syncDir(opts.CacheDir)
	progress("done", 1, 1)
	return Get(opts.CacheDir, opts.Name)
}

// fingerprint is the SHA-256 of the inputs' JSON encoding.
func fingerprint(in Inputs) string {
	b, _ := json.Marshal(in)
	return sha256Hex(b)
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// treeSum fingerprints a directory by its files' names, sizes and times.
func treeSum(dir string) (string, error) {
	h := sha256.New()
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s %d %d\n", rel, info.Size(), info.ModTime().UnixNano())
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// fileInfo checksums one file.
func fileInfo(path string) (FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileInfo{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return FileInfo{}, fmt.Errorf("checksum %s: %w", path, err)
	}
	return FileInfo{Name: filepath.Base(path), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func writeManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, manifestFile))
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	return f.Close()
}

// syncDir flushes a directory's entries (and, for a build dir, its files).
func syncDir(dir string) error {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type().IsRegular() {
			if f, err := os.Open(filepath.Join(dir, e.Name())); err == nil {
				err = f.Sync()
				f.Close()
				if err != nil {
					return fmt.Errorf("sync %s: %w", e.Name(), err)
				}
			}
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// tmpPrefix names the temporary build directories of one image.
func tmpPrefix(name string) string { return ".tmp-" + name + "-" }

// cleanStale removes build directories left by killed builds; the caller
// holds the image lock, so none of them is in use.
func cleanStale(cacheDir, name string) {
	m, _ := filepath.Glob(filepath.Join(cacheDir, tmpPrefix(name)+"*"))
	for _, d := range m {
		os.RemoveAll(d)
	}
}

// lockImage takes the image's lock file, waiting until ctx is done.
func lockImage(ctx context.Context, cacheDir, name string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(cacheDir, "."+name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("image lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for image lock: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Get returns a complete image from the cache: its manifest parses and every
// file it lists exists with the recorded size. Otherwise the error wraps
// ErrNotFound.
func Get(cacheDir, name string) (*Image, error) {
	dir := filepath.Join(cacheDir, name)
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s in %s", ErrNotFound, name, cacheDir)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Name != name || m.Fingerprint == "" {
		return nil, fmt.Errorf("%w: %s in %s (bad manifest)", ErrNotFound, name, cacheDir)
	}
	img := &Image{Name: name, Dir: dir, Manifest: m}
	for _, f := range m.Files {
		p := filepath.Join(dir, f.Name)
		st, err := os.Stat(p)
		if err != nil || st.Size() != f.Size {
			return nil, fmt.Errorf("%w: %s in %s (file %s missing or changed)", ErrNotFound, name, cacheDir, f.Name)
		}
		switch f.Name {
		case kernelFile:
			img.Kernel = p
		case vmlinuxFile:
			img.Vmlinux = p
		case initrdFile:
			img.Initrd = p
		case rootfsFile:
			img.Rootfs = p
		}
	}
	if img.Kernel == "" && m.KernelKind == KernelELFPVH {
		img.Kernel = img.Vmlinux
	}
	if img.Vmlinux == "" || img.Initrd == "" || img.Rootfs == "" {
		return nil, fmt.Errorf("%w: %s in %s (incomplete)", ErrNotFound, name, cacheDir)
	}
	return img, nil
}

// List returns the complete images in the cache, sorted by name.
func List(cacheDir string) ([]*Image, error) {
	entries, err := os.ReadDir(cacheDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []*Image
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if img, err := Get(cacheDir, e.Name()); err == nil {
			out = append(out, img)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes an image from the cache. It waits for a build of the same
// image to finish first. Removing an image that is not there wraps ErrNotFound.
func Remove(ctx context.Context, cacheDir, name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("%w: bad image name %q", ErrNotFound, name)
	}
	dir := filepath.Join(cacheDir, name)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s in %s", ErrNotFound, name, cacheDir)
	}
	unlock, err := lockImage(ctx, cacheDir, name)
	if err != nil {
		return err
	}
	defer unlock()
	// Drop the manifest first so a half-removed image never looks complete.
	if err := os.Remove(filepath.Join(dir, manifestFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove image %s: %w", name, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove image %s: %w", name, err)
	}
	cleanStale(cacheDir, name)
	return nil
}

// cachedDownload returns a .deb from <cacheDir>/.debs, downloading it with
// apt when it is missing or its checksum differs from apt's. Older
// versions of the same package are removed.
func (a *apt) cachedDownload(ctx context.Context, cacheDir string, p debPackage) (string, error) {
	dir := filepath.Join(cacheDir, ".debs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	want := filepath.Join(dir, p.Name+"_"+strings.ReplaceAll(p.Version, ":", "%3a")+"_amd64.deb")
	if fi, err := fileInfo(want); err == nil && (p.SHA256 == "" || fi.SHA256 == p.SHA256) {
		return want, nil
	}
	tmp, err := os.MkdirTemp(dir, ".dl-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	deb, err := a.download(ctx, p, tmp)
	if err != nil {
		return "", err
	}
	if p.SHA256 != "" {
		fi, err := fileInfo(deb)
		if err != nil {
			return "", err
		}
		if fi.SHA256 != p.SHA256 {
			return "", fmt.Errorf("download %s: checksum %s, apt says %s", p.Name, fi.SHA256, p.SHA256)
		}
	}
	old, _ := filepath.Glob(filepath.Join(dir, p.Name+"_*.deb"))
	for _, o := range old {
		if o != want {
			os.Remove(o)
		}
	}
	if err := os.Rename(deb, want); err != nil {
		return "", err
	}
	return want, nil
}
