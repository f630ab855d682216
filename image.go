package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

	// User images and provenance:

	// Size is SizeBytes again, under the name `image list --json` promises.
	Size int64 `json:"size"`
	// Created is BuiltAt again, under the name `image list --json` promises.
	Created time.Time `json:"created"`
	// Base is what the image was made from: default or minimal for the
	// built-in images, a spec's from: value, or the imported file.
	Base string `json:"base"`
	// BaseDigest identifies the base (imported archive's digest, base
	// image's fingerprint).
	BaseDigest string `json:"base_digest,omitempty"`
	// Packages are the spec's extra Debian packages as name=version.
	Packages []string `json:"packages,omitempty"`
	// SpecSHA256 is the checksum of the spec the image was built from.
	SpecSHA256 string `json:"spec_sha256,omitempty"`
	// Env, User, Workdir are the defaults of every command in its VMs.
	Env     map[string]string `json:"env,omitempty"`
	User    string            `json:"user,omitempty"`
	Workdir string            `json:"workdir,omitempty"`
	// Start is started on every boot; Ready must succeed before a start
	// counts as done.
	Start string `json:"start,omitempty"`
	Ready string `json:"ready,omitempty"`
	// Steps are the run: steps the build ran.
	Steps []string `json:"steps,omitempty"`
}

func imageInfo(img *image.Image) ImageInfo {
	var size int64
	for _, f := range img.Manifest.Files {
		size += f.Size
	}
	m := img.Manifest
	inf := ImageInfo{
		Name: img.Name, Dir: img.Dir, Kernel: img.Kernel, Vmlinux: img.Vmlinux, Initrd: img.Initrd, Rootfs: img.Rootfs,
		KernelVersion: m.KernelVersion, Fingerprint: m.Fingerprint, SizeBytes: size,
		BuiltAt: m.BuiltAt, BuildSeconds: m.BuildSeconds,
		Size: size, Created: m.BuiltAt, Base: m.Inputs.Name, BaseDigest: m.Inputs.BaseDigest, SpecSHA256: m.Inputs.SpecSHA256,
	}
	if c := m.Config; c != nil {
		inf.Base = c.Source
		inf.Env, inf.User, inf.Workdir, inf.Start, inf.Ready, inf.Steps = c.Env, c.User, c.Workdir, c.Start, c.Ready, c.Steps
	}
	for _, p := range m.Inputs.PackageVersions {
		inf.Packages = append(inf.Packages, p.Name+"="+p.Version)
	}
	return inf
}

// ImageBuildOptions tunes BuildImage.
type ImageBuildOptions struct {
	// KernelPath uses this kernel (bzImage or ELF vmlinux) instead of Debian's.
	KernelPath string
	// Force rebuilds even when the cached image's inputs are unchanged.
	Force bool
	// Progress, if set, is called as the build advances.
	Progress func(stage string, done, total int64)

	// User images (a spec, or the shortcut fields):

	// SpecFile is a user image's spec (YAML, see the README).
	SpecFile string
	// From replaces the spec's from: (default, minimal, an image,
	// oci:PATH, tar:PATH); without SpecFile it alone makes a spec.
	From string
	// Packages and Run are appended to the spec's packages: and run:.
	Packages []string
	Run      []string
	// KeepFailed keeps a failed build's directory for inspection.
	KeepFailed bool
	// Output receives the output of the run: steps; nil discards it.
	Output io.Writer
}

// BuildImage builds the image name into the host's image cache: "default"
// or "minimal", or a user image from bo's spec file or shortcut fields
// (whose run: steps run in a build VM). An image whose inputs did not
// change is not rebuilt. A failed build leaves no image.
func (h *Host) BuildImage(ctx context.Context, name string, bo ImageBuildOptions) (ImageInfo, error) {
	build := h.buildImage
	if bo.userImage() {
		build = h.buildUserImage
	}
	img, err := build(ctx, name, bo)
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

// RemoveImage deletes a built image; while a VM or a snapshot uses it, it
// refuses with ErrState (ForceRemoveImage does not).
func (h *Host) RemoveImage(ctx context.Context, name string) error {
	users, err := h.imageUsers(ctx, name)
	if err != nil {
		return wrapErr("remove image", name, ErrBackend, err)
	}
	if len(users) > 0 {
		return wrapErr("remove image", name, ErrState, fmt.Errorf("in use by %s (remove them first, or force)", strings.Join(users, ", ")))
	}
	if err := image.Remove(ctx, h.imageDir, name); err != nil {
		return wrapErr("remove image", name, ErrImage, err)
	}
	h.dropImageTemplates(ctx, name) // warm.go
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
