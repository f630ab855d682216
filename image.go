package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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

// BuildImage builds the image name ("default" or "minimal") into the
// host's image cache; an image whose inputs did not change is not rebuilt.
func (h *Host) BuildImage(ctx context.Context, name string, bo ImageBuildOptions) (ImageInfo, error) {
	img, err := h.buildImage(ctx, name, bo)
	if err != nil {
		return ImageInfo{}, err
	}
	return imageInfo(img), nil
}

func (h *Host) buildImage(ctx context.Context, name string, bo ImageBuildOptions) (*image.Image, error) {
	agent, err := findAgent()
	if err != nil {
		return nil, err
	}
	img, err := image.Build(ctx, image.BuildOptions{
		Name: name, CacheDir: h.imageDir, KernelPath: bo.KernelPath, AgentPath: agent, Force: bo.Force, Progress: bo.Progress,
	})
	if err != nil {
		return nil, wrapErr("build image", name, ErrImage, err)
	}
	return img, nil
}

// Images returns the built images.
func (h *Host) Images(ctx context.Context) ([]ImageInfo, error) {
	imgs, err := image.List(h.imageDir)
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
func (h *Host) RemoveImage(ctx context.Context, name string) error {
	if err := image.Remove(ctx, h.imageDir, name); err != nil {
		return wrapErr("remove image", name, ErrImage, err)
	}
	return nil
}

// AgentEnv names the environment variable that points at the smolvm-agent binary.
const AgentEnv = "SMOLVM_AGENT"

// findAgent returns the static guest agent binary that goes into images:
// $SMOLVM_AGENT, else smolvm-agent beside the running executable, else in PATH.
func findAgent() (string, error) {
	if p := os.Getenv(AgentEnv); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "smolvm-agent")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("smolvm-agent"); err == nil {
		return p, nil
	}
	return "", wrapErr("find agent", "", ErrUnavailable, errors.New("smolvm-agent not found beside smolvm, in PATH or in $SMOLVM_AGENT: build it with `make build` (or `CGO_ENABLED=0 go install github.com/smolvm-go/smolvm/cmd/...@latest`)"))
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
