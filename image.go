package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/image"
)

// Image names.
const (
	// ImageDefault is Debian bookworm with openssh-server, python3 and friends.
	ImageDefault = "default"
	// ImageMinimal is busybox plus the agent: small and fast to boot.
	ImageMinimal = "minimal"
)

// ImageInfo describes a built image.
type ImageInfo struct {
	Name          string    `json:"name"`
	Dir           string    `json:"dir"`
	Kernel        string    `json:"kernel"`
	Vmlinux       string    `json:"vmlinux"`
	Initrd        string    `json:"initrd"`
	Rootfs        string    `json:"rootfs"`
	KernelVersion string    `json:"kernel_version,omitempty"`
	Fingerprint   string    `json:"fingerprint"`
	SizeBytes     int64     `json:"size_bytes"`
	BuiltAt       time.Time `json:"built_at"`
	BuildSeconds  float64   `json:"build_seconds"`
}

func imageInfo(img *image.Image) ImageInfo {
	var size int64
	for _, f := range img.Manifest.Files {
		size += f.Size
	}
	return ImageInfo{
		Name: img.Name, Dir: img.Dir, Kernel: img.Kernel, Vmlinux: img.Vmlinux, Initrd: img.Initrd, Rootfs: img.Rootfs,
		KernelVersion: img.Manifest.KernelVersion, Fingerprint: img.Manifest.Fingerprint, SizeBytes: size,
		BuiltAt: img.Manifest.BuiltAt, BuildSeconds: img.Manifest.BuildSeconds,
	}
}

// ImageBuildOptions tunes BuildImage.
type ImageBuildOptions struct {
	// KernelPath uses this kernel (bzImage or ELF vmlinux) instead of Debian's.
	KernelPath string
	// Force rebuilds even when the cached image's inputs are unchanged.
	Force bool
	// Progress, if set, is called as the build advances.
	Progress func(stage string, done, total int64)
}

// BuildImage builds the image name ("default" or "minimal") into the data
// directory's image cache; an image whose inputs did not change is not rebuilt.
func BuildImage(ctx context.Context, name string, bo ImageBuildOptions, opts ...Option) (ImageInfo, error) {
	o := buildOptions(opts)
	h := &host{dir: o.dataDir}
	img, err := h.buildImage(ctx, name, bo)
	if err != nil {
		return ImageInfo{}, err
	}
	return imageInfo(img), nil
}

func (h *host) buildImage(ctx context.Context, name string, bo ImageBuildOptions) (*image.Image, error) {
	agent, err := findAgent()
	if err != nil {
		return nil, err
	}
	img, err := image.Build(ctx, image.BuildOptions{
		Name: name, CacheDir: h.imagesDir(), KernelPath: bo.KernelPath, AgentPath: agent, Force: bo.Force, Progress: bo.Progress,
	})
	if err != nil {
		return nil, imageErr("build image", name, err)
	}
	return img, nil
}

func imageErr(op, name string, err error) error {
	if errors.Is(err, image.ErrNotFound) {
		return wrapErr(op, name, ErrNotFound, kindErr{ErrImage, err})
	}
	return wrapErr(op, name, ErrImage, err)
}

// ListImages returns the built images.
func ListImages(ctx context.Context, opts ...Option) ([]ImageInfo, error) {
	h := &host{dir: buildOptions(opts).dataDir}
	imgs, err := image.List(h.imagesDir())
	if err != nil {
		return nil, wrapErr("list images", "", ErrImage, err)
	}
	out := make([]ImageInfo, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, imageInfo(img))
	}
	return out, nil
}

// RemoveImage deletes a built image. VMs with isolated disks keep running;
// VMs sharing its disk, or booting from it later, fail.
func RemoveImage(ctx context.Context, name string, opts ...Option) error {
	h := &host{dir: buildOptions(opts).dataDir}
	if err := image.Remove(ctx, h.imagesDir(), name); err != nil {
		return imageErr("remove image", name, err)
	}
	return nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// ProgressWriter returns a progress function (for WithProgress or
// ImageBuildOptions) that prints each stage of long work to w with the time
// since it started.
func ProgressWriter(w io.Writer) func(stage string, done, total int64) {
	start := time.Now()
	return func(stage string, done, total int64) {
		if done == 0 {
			fmt.Fprintf(w, "[%6.1fs] %s ...\n", time.Since(start).Seconds(), stage)
		}
	}
}

// stderrProgress is what the SDK shows on a terminal when it builds an
// image on first use.
func stderrProgress(name string) func(stage string, done, total int64) {
	fmt.Fprintf(os.Stderr, "smolvm: building the %s image on first use (once; later VMs reuse it)\n", name)
	return ProgressWriter(os.Stderr)
}
