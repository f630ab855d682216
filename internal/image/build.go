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
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// builderVersion changes whenever the build recipe changes in a way that
// must invalidate cached images.
const builderVersion = 3 // 3: the minimal image's wget wrapper and nsswitch.conf

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
	// Name is the image to build: NameMinimal or NameDefault, or with
	// Spec a user image's name (see CheckName).
	Name string
	// Spec, when set, builds the user image Name from it: its base, files,
	// environment and run configuration. Its run: steps are not executed
	// here; they are recorded in the manifest for the SDK (Manifest.Config).
	Spec *Spec
	// Import bounds the import of an oci: or tar: base.
	Import ImportOptions
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
	// RunSteps runs a spec's run: steps in a VM booted from stage, whose
	// root disk it may write (the build directory's own); required when
	// the spec has steps. The image is installed only if it succeeds.
	RunSteps func(ctx context.Context, stage *Image, steps []string) error
	// KeepFailed keeps a failed build's directory (renamed to
	// .failed-<name>-<time> in the cache, see FailedBuildError) instead of
	// removing it.
	KeepFailed bool
}

// FailedBuildError is a failed build whose directory was kept (KeepFailed).
type FailedBuildError struct {
	// Dir holds what the build had made: rootfs.ext4 is the disk as the
	// failing step left it.
	Dir string
	// Err is why the build failed.
	Err error
}

func (e *FailedBuildError) Error() string {
	return fmt.Sprintf("%v (build directory kept for inspection: %s)", e.Err, e.Dir)
}

func (e *FailedBuildError) Unwrap() error { return e.Err }

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
	// Config says how to run a user image; nil for built-in images.
	Config *RunConfig `json:"config,omitempty"`
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
	// Users are the non-root users the default image has (uid 1000 up).
	Users []string `json:"users,omitempty"`
	// Modules are the module names asked for.
	Modules []string `json:"modules"`
	// Compression is the initramfs compression.
	Compression Compression `json:"compression"`
	// Spec is a user image's spec.
	Spec *Spec `json:"spec,omitempty"`
	// SpecFilesSHA256 covers the names, sizes and times of the spec's files.
	SpecFilesSHA256 string `json:"spec_files_sha256,omitempty"`
	// BaseDigest identifies a user image's base: the imported archive's or
	// layout's digest, or the base image's fingerprint.
	BaseDigest string `json:"base_digest,omitempty"`
	// PackageVersions are the spec's packages with the versions apt chose.
	PackageVersions []debPackage `json:"package_versions,omitempty"`
	// SpecSHA256 is the checksum of the spec (as JSON).
	SpecSHA256 string `json:"spec_sha256,omitempty"`
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
func Build(ctx context.Context, opts BuildOptions) (*Image, error) {
	b, err := newBuilder(opts)
	if err != nil {
		return nil, err
	}
	b.progress("lock", 0, 1)
	unlock, err := lockImage(ctx, b.opts.CacheDir, b.opts.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	b.progress("lock", 1, 1)
	cleanStale(b.opts.CacheDir, b.opts.Name)

	b.progress("resolve inputs", 0, 1)
	if err := b.resolveInputs(ctx); err != nil {
		return nil, err
	}
	b.progress("resolve inputs", 1, 1)
	if !b.opts.Force {
		if cur, err := Get(b.opts.CacheDir, b.opts.Name); err == nil && cur.Manifest.Fingerprint == b.m.Fingerprint {
			b.progress("cached", 1, 1)
			return cur, nil
		}
	}
	for _, t := range []string{"mkfs.ext4", "dpkg-deb"} {
		if _, err := LookTool(t); err != nil {
			return nil, err
		}
	}
	return b.build(ctx)
}

// builder carries one build's state from step to step.
type builder struct {
	opts  BuildOptions
	start time.Time
	apt   *apt
	agent []byte // the agent binary
	// kernel is the kernel file's bytes: the user's, or the one unpacked
	// from the Debian package; dropped once written.
	kernel []byte
	// modDir is the /lib/modules/<version> directory the initramfs takes
	// modules from; empty for a kernel without modules.
	modDir string
	tmp    string // the build directory, renamed into place at the end
	work   string // scratch space inside tmp, removed before install
	m      Manifest
}

// newBuilder checks opts, fills defaults, makes sure the cache is writable
// and reads the agent.
func newBuilder(opts BuildOptions) (*builder, error) {
	if err := checkBuildName(opts); err != nil {
		return nil, err
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
	return &builder{opts: opts, start: time.Now(), apt: &apt{progress: opts.Progress, memoDir: filepath.Join(opts.CacheDir, ".apt-memo")}, agent: agent}, nil
}

// checkBuildName checks the image name (and the spec of a user image).
func checkBuildName(opts BuildOptions) error {
	if opts.Spec != nil {
		if err := CheckName(opts.Name); err != nil {
			return err
		}
		if err := opts.Spec.Validate(); err != nil {
			return err
		}
		if len(opts.Spec.Run) > 0 && opts.RunSteps == nil {
			return fmt.Errorf("%w: run: steps need a build VM (build through the SDK or the smolvm CLI)", ErrInvalidSpec)
		}
		return nil
	}
	if opts.Name != NameMinimal && opts.Name != NameDefault {
		return fmt.Errorf("unknown image %q (want %s or %s, or a spec)", opts.Name, NameMinimal, NameDefault)
	}
	return nil
}

// progress reports a stage to opts.Progress, if set.
func (b *builder) progress(stage string, done, total int64) {
	if b.opts.Progress != nil {
		b.opts.Progress(stage, done, total)
	}
}

// build makes the image in a temporary directory, step by step, and renames
// it into place. On error the directory is removed.
func (b *builder) build(ctx context.Context) (img *Image, retErr error) {
	tmp, err := os.MkdirTemp(b.opts.CacheDir, tmpPrefix(b.opts.Name))
	if err != nil {
		return nil, fmt.Errorf("image cache %s: %w", b.opts.CacheDir, err)
	}
	defer func() {
		if retErr == nil {
			return
		}
		if b.opts.KeepFailed {
			kept := filepath.Join(b.opts.CacheDir, ".failed-"+b.opts.Name+"-"+time.Now().UTC().Format("20060102T150405"))
			if err := os.Rename(tmp, kept); err == nil {
				retErr = &FailedBuildError{Dir: kept, Err: retErr}
				return
			}
		}
		os.RemoveAll(tmp)
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	b.tmp, b.work = tmp, filepath.Join(tmp, "work")
	if err := os.Mkdir(b.work, 0o755); err != nil {
		return nil, err
	}
	steps := []func(context.Context) error{b.kernelStep, b.initramfsStep, b.rootfsStep, b.runStep, b.manifestStep}
	if b.reuseBootFiles(ctx) {
		steps = steps[2:]
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	if err := installImage(tmp, b.opts.CacheDir, b.opts.Name); err != nil {
		return nil, err
	}
	b.progress("done", 1, 1)
	return Get(b.opts.CacheDir, b.opts.Name)
}
