package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/imagecfg"
)

// debugfsCat returns a file of an ext4 image, read with debugfs.
func debugfsCat(t *testing.T, img, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", p, err)
	}
	return string(out)
}

func TestBuildUserImageFromOCI(t *testing.T) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("debugfs not installed (e2fsprogs)")
	}
	cache := privateCache(t)
	opts := fastOptions(t, cache)
	dir := t.TempDir()
	writeOCILayout(t, filepath.Join(dir, "img"), testLayers(t))
	os.MkdirAll(filepath.Join(dir, "app/static"), 0o755)
	os.WriteFile(filepath.Join(dir, "app/serve"), []byte("#!/bin/sh\necho serving\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "app/static/index.html"), []byte("<p>hi</p>"), 0o644)
	spec := `from: oci:img
files:
  - {src: app, dest: /opt/app, mode: "0750"}
  - {src: app/serve, dest: /usr/local/bin/serve, mode: "0755"}
env: {GREETING: "it's me", MODE: prod}
run: [echo built > /etc/built]
workdir: /opt/app
start: serve
ready: test -e /tmp/up
`
	os.WriteFile(filepath.Join(dir, "smolvm.yaml"), []byte(spec), 0o644)
	s, err := LoadSpec(filepath.Join(dir, "smolvm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Name, opts.Spec = "web", s
	var ranSteps []string
	opts.RunSteps = func(ctx context.Context, stage *Image, steps []string) error {
		// The SDK boots a VM here; the stage's files must be complete and
		// the build-time config must start nothing.
		for _, f := range []string{stage.Kernel, stage.Initrd, stage.Rootfs} {
			if _, err := os.Stat(f); err != nil {
				return err
			}
		}
		if got := debugfsCat(t, stage.Rootfs, imagecfg.File); strings.Contains(got, "start") {
			return fmt.Errorf("build VM config starts something: %s", got)
		}
		ranSteps = steps
		return nil
	}
	img, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ranSteps, s.Run) {
		t.Errorf("RunSteps got %q, want %q", ranSteps, s.Run)
	}
	if got := debugfsCat(t, img.Rootfs, imagecfg.File); !strings.Contains(got, `"start": "serve"`) || !strings.Contains(got, `"workdir": "/opt/app"`) {
		t.Errorf("final %s = %s", imagecfg.File, got)
	}
	c := img.Manifest.Config
	if c == nil || c.Format != FormatOCI || !digestRE.MatchString(c.Digest) || c.Start != "serve" || c.Workdir != "/opt/app" ||
		c.User != "1000" || c.Env["GREETING"] != "it's me" || c.Env["PATH"] != "/usr/bin:/bin" || !slices.Equal(c.Steps, s.Run) {
		t.Fatalf("manifest config %+v", c)
	}
	if img.Manifest.Inputs.BaseDigest == "" || img.Manifest.Inputs.Spec == nil {
		t.Errorf("inputs lack the base digest or spec: %+v", img.Manifest.Inputs)
	}
	fs := img.Rootfs
	for p, want := range map[string]string{
		"/etc/os-release":                   "v2\n",
		"/opt/app/static/index.html":        "<p>hi</p>",
		"/usr/local/bin/serve":              "#!/bin/sh\necho serving\n",
		"/etc/profile.d/zz-smolvm-image.sh": "[ -n \"${GREETING+x}\" ] || export GREETING='it'\\''s me'\n",
		"/etc/resolv.conf":                  "nameserver " + gatewayPlaceholder + "\n",
	} {
		if got := debugfsCat(t, fs, p); !strings.Contains(got, want) {
			t.Errorf("%s in the ext4 = %q, want %q", p, got, want)
		}
	}
	agent, _ := os.ReadFile(opts.AgentPath)
	if got := debugfsCat(t, fs, AgentInstallPath); got != string(agent) {
		t.Errorf("agent in the ext4 differs (%d bytes, want %d)", len(got), len(agent))
	}
	out, _ := exec.Command("debugfs", "-R", "stat /opt/app", fs).Output()
	if !strings.Contains(string(out), "Mode:  0750") || !strings.Contains(string(out), "User:     0") {
		t.Errorf("/opt/app: want mode 0750 owned by root:\n%s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "ls /opt/lower", fs).Output()
	if strings.Contains(string(out), "old") || !strings.Contains(string(out), "new") {
		t.Errorf("/opt/lower after the opaque whiteout:\n%s", out)
	}

	// The same inputs hit the cache; a changed file does not.
	again, err := Build(context.Background(), opts)
	if err != nil || again.Manifest.Fingerprint != img.Manifest.Fingerprint || !again.Manifest.BuiltAt.Equal(img.Manifest.BuiltAt) {
		t.Fatalf("rebuild with the same spec was not a cache hit: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "app/static/index.html"), []byte("<p>changed</p>"), 0o644)
	changed, err := Build(context.Background(), opts)
	if err != nil || changed.Manifest.Fingerprint == img.Manifest.Fingerprint {
		t.Fatalf("a changed spec file gave the same fingerprint (%v)", err)
	}
}

func TestBuildUserImageRefusesBadBase(t *testing.T) {
	cache := privateCache(t)
	opts := fastOptions(t, cache)
	dir := t.TempDir()
	writeOCILayout(t, filepath.Join(dir, "img"), [][]byte{makeTar(t, []tarEntry{{name: "../../escape", body: "x"}})})
	s, err := ParseSpec([]byte("from: oci:img\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	opts.Name, opts.Spec = "evil", s
	if _, err := Build(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "climbs out of the root") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Get(cache, "evil"); err == nil {
		t.Error("a refused image is in the cache")
	}
	if left, _ := filepath.Glob(filepath.Join(cache, ".tmp-*")); len(left) != 0 {
		t.Errorf("refused build left %v", left)
	}
	opts.Name = "default"
	if _, err := Build(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "built-in image") {
		t.Errorf("user image named default: %v", err)
	}
}
