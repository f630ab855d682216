package smolvm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// testPkgBase is a user image (default + the tree package) built by
// TestMain outside the test namespace, where apt can download.
const testPkgBase = "test-pkgbase"

// prepareUserImages builds testPkgBase into the shared test cache.
func prepareUserImages(binDir string) error {
	s, err := image.ParseSpec([]byte("from: default\npackages: [tree]\n"), "/")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	_, err = image.Build(ctx, image.BuildOptions{Name: testPkgBase, Spec: s, CacheDir: vmtest.CacheDir(), AgentPath: filepath.Join(binDir, "smolvm-agent")})
	if err != nil {
		return fmt.Errorf("build the %s image: %w", testPkgBase, err)
	}
	fmt.Fprintf(os.Stderr, "vmtest: image %s ready in %.1fs\n", testPkgBase, time.Since(start).Seconds())
	return nil
}

// imageEnv is vmEnv with a private image cache holding (hard links to) the
// shared test cache's downloaded packages and the named images.
func imageEnv(t *testing.T, images ...string) (*Host, string) {
	t.Helper()
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	imgDir := filepath.Join(dir, "images")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range append([]string{".debs"}, images...) {
		if out, err := exec.Command("cp", "-al", filepath.Join(vmtest.CacheDir(), n), imgDir+"/").CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", n, err, out)
		}
	}
	h := testHost(t, dir, func(o *HostOptions) { o.ImageDir = imgDir })
	t.Cleanup(func() {
		if t.Failed() {
			h.Cleanup(context.Background(), CleanupOptions{All: true})
			return
		}
		assertNothingLeft(t, dir)
	})
	return h, imgDir
}

// assertNoHalfImage checks the cache has no image name and no build
// directories.
func assertNoHalfImage(t *testing.T, imgDir, name string) {
	t.Helper()
	if _, err := image.Get(imgDir, name); err == nil {
		t.Errorf("image %s is in the cache", name)
	}
	for _, pat := range []string{".tmp-*", ".failed-*", name} {
		if m, _ := filepath.Glob(filepath.Join(imgDir, pat)); len(m) > 0 {
			t.Errorf("left in the cache: %v", m)
		}
	}
}

// httpGetRetry fetches url, retrying while the server comes up.
func httpGetRetry(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := c.Get(url)
		if err != nil {
			last = err
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == 200 {
			return string(b)
		}
		last = fmt.Errorf("status %d", resp.StatusCode)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

// TestUserImageSpec builds an image from a spec with a package (from the
// test's package base), files, a run step, a user, env, workdir, a start
// server and a ready check; a VM of it serves after create and start with
// no command from the test, and commands run with the image's defaults.
func TestUserImageSpec(t *testing.T) {
	h, imgDir := imageEnv(t, testPkgBase)
	ctx := context.Background()
	spec := t.TempDir()
	os.MkdirAll(filepath.Join(spec, "site"), 0o755)
	os.WriteFile(filepath.Join(spec, "site/index.html"), []byte("hello from the image\n"), 0o644)
	os.WriteFile(filepath.Join(spec, "smolvm-image.yaml"), []byte(`from: `+testPkgBase+`
files:
  - src: site
    dest: /srv/site
    mode: "0755"
env:
  APP_MSG: from-spec
run:
  - tree /srv/site > /srv/site/tree.txt && echo tree-done
user: web
workdir: /srv/site
start: python3 -m http.server 8000
ready: curl -fsS -o /dev/null http://127.0.0.1:8000/
`), 0o644)
	var out, progress bytes.Buffer
	bo := ImageBuildOptions{SpecFile: filepath.Join(spec, "smolvm-image.yaml"), Output: &out, Progress: ProgressWriter(&progress)}
	start := time.Now()
	img, err := h.BuildImage(ctx, "web", bo)
	if err != nil {
		t.Fatalf("build: %v\n%s%s", err, progress.String(), out.String())
	}
	cold := time.Since(start)
	if !strings.Contains(out.String(), "tree-done") || !strings.Contains(progress.String(), `run[0] "tree /srv/site`) {
		t.Errorf("step output or progress missing:\n%s\n%s", out.String(), progress.String())
	}
	if img.Base != testPkgBase || img.Start == "" || img.User != "web" || img.SpecSHA256 == "" || img.BaseDigest == "" || img.Size == 0 || img.Created.IsZero() {
		t.Errorf("image info %+v", img)
	}
	start = time.Now()
	again, err := h.BuildImage(ctx, "web", bo)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build: cold %.1fs, cached %.1fs", cold.Seconds(), time.Since(start).Seconds())
	if again.Fingerprint != img.Fingerprint || !again.BuiltAt.Equal(img.BuiltAt) {
		t.Errorf("unchanged rebuild was not a cache hit: %v %v", again.BuiltAt, img.BuiltAt)
	}

	vm, err := h.Create(ctx, VMConfig{VMID: "web1", Image: "web", VCPUCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Delete(context.Background())
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The ready check passed: the server answers without any command.
	if body := httpGetRetry(t, "http://"+vm.GetIP()+":8000/tree.txt"); !strings.Contains(body, "index.html") {
		t.Errorf("tree.txt from the start server = %q", body)
	}
	res, err := vm.Run(ctx, "id -un; pwd; echo $APP_MSG; tree --version")
	if err != nil || !res.OK() {
		t.Fatalf("run: %v %+v", err, res)
	}
	if lines := strings.Split(res.Stdout, "\n"); len(lines) < 4 || lines[0] != "web" || lines[1] != "/srv/site" || lines[2] != "from-spec" || !strings.HasPrefix(lines[3], "tree v") {
		t.Errorf("defaults: %q", res.Stdout)
	}
	res, err = vm.Run(ctx, "id -un; pwd; echo $APP_MSG", RunUser("root"), RunDir("/"), RunEnv(map[string]string{"APP_MSG": "mine"}))
	if err != nil || res.Stdout != "root\n/\nmine\n" {
		t.Errorf("overrides: %v %q", err, res.Stdout)
	}
	if err := h.RemoveImage(ctx, "web"); !errors.Is(err, ErrState) {
		t.Errorf("remove while a VM uses it: %v, want ErrState", err)
	}
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.RemoveImage(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	assertNoHalfImage(t, imgDir, "web")
}

// TestUserImageBadInput: a failing run step is named and leaves nothing
// (or, with KeepFailed, only the kept directory, which prune removes); a
// bad spec or a missing package is refused before anything is built.
func TestUserImageBadInput(t *testing.T) {
	h, imgDir := imageEnv(t)
	ctx := context.Background()
	var out bytes.Buffer
	_, err := h.BuildImage(ctx, "broken", ImageBuildOptions{From: "minimal", Run: []string{"echo first", "echo bad >&2; exit 7"}, Output: &out})
	if err == nil || !strings.Contains(err.Error(), `run[1] "echo bad >&2; exit 7"`) || !strings.Contains(err.Error(), "exit code 7") {
		t.Errorf("failing step: %v", err)
	}
	if !strings.Contains(out.String(), "first") || !strings.Contains(out.String(), "bad") {
		t.Errorf("step output not streamed: %q", out.String())
	}
	assertNoHalfImage(t, imgDir, "broken")
	if vms, _ := h.List(ctx, ListOptions{}); len(vms) != 0 {
		t.Errorf("build VM left: %v", vms)
	}

	_, err = h.BuildImage(ctx, "broken", ImageBuildOptions{From: "minimal", Run: []string{"echo kept > /kept; false"}, KeepFailed: true})
	var fe *image.FailedBuildError
	if !errors.As(err, &fe) {
		t.Fatalf("keep-failed: %v", err)
	}
	if got, _ := exec.Command("debugfs", "-R", "cat /kept", filepath.Join(fe.Dir, "rootfs.ext4")).Output(); string(got) != "kept\n" {
		t.Errorf("kept disk lacks the step's file: %q", got)
	}
	removed, err := h.PruneImages(ctx)
	if err != nil || len(removed) != 1 || removed[0] != filepath.Base(fe.Dir) {
		t.Errorf("prune: %v %v", removed, err)
	}
	assertNoHalfImage(t, imgDir, "broken")

	dir := t.TempDir()
	for _, tc := range []struct{ spec, want string }{
		{"from: minimal\nbogus: 1\n", `unknown field "bogus"`},
		{"from: minimal\nrun: echo\n", "line 2: run: "},
		{"from: default\npackages: [no-such-package-smolvm-test]\n", `"no-such-package-smolvm-test": no such package`},
	} {
		f := filepath.Join(dir, "spec.yaml")
		os.WriteFile(f, []byte(tc.spec), 0o644)
		_, err := h.BuildImage(ctx, "bad", ImageBuildOptions{SpecFile: f})
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spec %q: %v, want ErrInvalidConfig naming %q", tc.spec, err, tc.want)
		}
		assertNoHalfImage(t, imgDir, "bad")
	}
}

// ociEntry is one member of a test layer.
type ociEntry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid              int
}

func ociTar(t *testing.T, entries []ociEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Uid: e.uid, Gid: e.uid, ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return buf.Bytes()
}

// testBusybox returns the static busybox from the test cache's package.
func testBusybox(t *testing.T, imgDir string) []byte {
	t.Helper()
	debs, _ := filepath.Glob(filepath.Join(imgDir, ".debs", "busybox-static_*.deb"))
	if len(debs) == 0 {
		t.Skip("no busybox-static package in the test cache")
	}
	x := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v: %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(x, "bin/busybox"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeOCITar writes an OCI image layout tar with layers and config; with
// corrupt, one layer's bytes do not match its digest; with dropBlob, one
// layer blob is missing.
func writeOCITar(t *testing.T, file string, layers [][]byte, config map[string]any, corrupt, dropBlob bool) {
	t.Helper()
	blobs := map[string][]byte{}
	desc := func(mt string, b []byte) map[string]any {
		s := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(s[:])
		blobs["blobs/sha256/"+d[7:]] = b
		return map[string]any{"mediaType": mt, "digest": d, "size": len(b)}
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "config": config,
		"rootfs": map[string]any{"type": "layers"}})
	var ls []map[string]any
	for i, l := range layers {
		mt := "application/vnd.oci.image.layer.v1.tar"
		if i == 1 {
			mt += "+gzip"
		}
		d := desc(mt, l)
		if corrupt && i == 0 {
			blobs["blobs/sha256/"+d["digest"].(string)[7:]] = append(bytes.Clone(l[:len(l)-1]), 'X')
		}
		if dropBlob && i == 1 {
			delete(blobs, "blobs/sha256/"+d["digest"].(string)[7:])
		}
		ls = append(ls, d)
	}
	m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc("application/vnd.oci.image.config.v1+json", cfg), "layers": ls})
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{desc("application/vnd.oci.image.manifest.v1+json", m)}})
	var entries []ociEntry
	entries = append(entries, ociEntry{name: "oci-layout", body: `{"imageLayoutVersion":"1.0.0"}`}, ociEntry{name: "index.json", body: string(idx)})
	for n, b := range blobs {
		entries = append(entries, ociEntry{name: n, body: string(b)})
	}
	if err := os.WriteFile(file, ociTar(t, entries), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestImportImages imports an OCI image tarball made here (two layers, a
// whiteout, env, a non-root user, an entrypoint) and runs it: its server
// answers after start, commands get its env, user and workdir. A docker
// export tarball imports; an export installed in another data dir is the
// same image; bad archives leave nothing.
func TestImportImages(t *testing.T) {
	// With the minimal image in the cache, as on a host in use: the import
	// reuses its kernel and initramfs.
	h, imgDir := imageEnv(t, ImageMinimal)
	ctx := context.Background()
	bb := testBusybox(t, imgDir)
	l1 := []ociEntry{{name: "bin/", typ: tar.TypeDir}, {name: "bin/busybox", body: string(bb), mode: 0o755}}
	for _, a := range []string{"sh", "id", "pwd", "echo", "cat", "ls", "httpd", "env", "sleep", "sync", "test", "wget"} {
		l1 = append(l1, ociEntry{name: "bin/" + a, typ: tar.TypeSymlink, link: "/bin/busybox"})
	}
	l1 = append(l1,
		ociEntry{name: "etc/", typ: tar.TypeDir},
		ociEntry{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"},
		ociEntry{name: "etc/group", body: "root:x:0:\napp:x:1000:\n"},
		ociEntry{name: "etc/remove-me", body: "lower layer\n"},
		ociEntry{name: "home/app/", typ: tar.TypeDir, mode: 0o700, uid: 1000},
		ociEntry{name: "srv/app/", typ: tar.TypeDir})
	l2 := []ociEntry{{name: "etc/.wh.remove-me"}, {name: "srv/app/hello.txt", body: "hello from oci\n"}}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(ociTar(t, l2))
	zw.Close()
	layers := [][]byte{ociTar(t, l1), gz.Bytes()}
	config := map[string]any{"Env": []string{"PATH=/bin", "APP_MODE=oci"}, "User": "app", "WorkingDir": "/srv/app",
		"Entrypoint": []string{"/bin/httpd", "-f"}, "Cmd": []string{"-p", "8080"}}
	dir := t.TempDir()
	ociFile := filepath.Join(dir, "app-oci.tar")
	writeOCITar(t, ociFile, layers, config, false, false)
	st, _ := os.Stat(ociFile)
	start := time.Now()
	img, err := h.ImportImage(ctx, "ociapp", ociFile, ImageBuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("OCI import: %.1fs, archive %d KiB, image %.1f MiB", time.Since(start).Seconds(), st.Size()>>10, float64(img.Size)/(1<<20))
	if img.User != "app" || img.Workdir != "/srv/app" || img.Env["APP_MODE"] != "oci" || !strings.Contains(img.Start, "httpd") || !strings.HasPrefix(img.BaseDigest, "sha256:") {
		t.Errorf("imported config %+v", img)
	}

	vm, err := h.Create(ctx, VMConfig{VMID: "oci1", Image: "ociapp", MemSizeMiB: 256, VCPUCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Delete(context.Background())
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if body := httpGetRetry(t, "http://"+vm.GetIP()+":8080/hello.txt"); body != "hello from oci\n" {
		t.Errorf("entrypoint server answered %q", body)
	}
	res, err := vm.Exec(ctx, ExecOptions{Argv: []string{"sh", "-c", "id -u; pwd; echo $APP_MODE; test -e /etc/remove-me && echo whiteout-ignored"}, Stdout: &bytes.Buffer{}})
	if err != nil || res.ExitCode != 1 {
		// test -e fails (the whiteout removed the file): exit 1.
		t.Errorf("exec: %v %+v", err, res)
	}
	r, err := vm.Run(ctx, "id -u; pwd; echo $APP_MODE")
	if err != nil || r.Stdout != "1000\n/srv/app\noci\n" {
		t.Errorf("image defaults: %v %q %q", err, r.Stdout, r.Stderr)
	}
	r, err = vm.Run(ctx, "id -u; pwd", RunUser("root"), RunDir("/"))
	if err != nil || r.Stdout != "0\n/\n" {
		t.Errorf("overrides: %v %q", err, r.Stdout)
	}
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}

	// A docker export tarball (a plain root filesystem).
	rootTar := filepath.Join(dir, "export.tar")
	os.WriteFile(rootTar, ociTar(t, append(l1, ociEntry{name: "etc/exported", body: "yes\n"})), 0o644)
	dimg, err := h.ImportImage(ctx, "flat", rootTar, ImageBuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := exec.Command("debugfs", "-R", "cat /etc/exported", dimg.Rootfs).Output(); string(got) != "yes\n" {
		t.Errorf("docker export import lacks /etc/exported: %q", got)
	}

	// Export here, import in another data dir: the same image.
	exp := filepath.Join(dir, "ociapp.tar")
	if err := h.ExportImage(ctx, "ociapp", exp); err != nil {
		t.Fatal(err)
	}
	other := testHost(t, t.TempDir(), func(o *HostOptions) { o.ImageDir = filepath.Join(dir, "other-images") })
	oimg, err := other.ImportImage(ctx, "copied", exp, ImageBuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := image.Get(imgDir, "ociapp")
	b, _ := image.Get(filepath.Join(dir, "other-images"), "copied")
	if a == nil || b == nil || oimg.Fingerprint != img.Fingerprint || fmt.Sprint(a.Manifest.Files) != fmt.Sprint(b.Manifest.Files) {
		t.Fatalf("export/import differ:\n%v\n%v", a, b)
	}
	for _, f := range b.Manifest.Files {
		got, err := exec.Command("sha256sum", filepath.Join(b.Dir, f.Name)).Output()
		if err != nil || !strings.HasPrefix(string(got), f.SHA256) {
			t.Errorf("%s: checksum %s, manifest %s", f.Name, got, f.SHA256)
		}
	}
	// A tampered export is refused and leaves nothing.
	data, _ := os.ReadFile(exp)
	i := bytes.LastIndex(data, []byte("hello from oci"))
	if i < 0 {
		t.Fatal("test file not found in the export")
	}
	data[i] = 'j'
	os.WriteFile(exp, data, 0o644)
	if _, err := other.ImportImage(ctx, "tampered", exp, ImageBuildOptions{}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("tampered export: %v", err)
	}
	assertNoHalfImage(t, filepath.Join(dir, "other-images"), "tampered")

	// Bad OCI archives: a wrong digest, a missing blob; a tarball escaping.
	for _, tc := range []struct {
		name          string
		corrupt, drop bool
		entries       []ociEntry
		want          string
	}{
		{name: "wrong-digest", corrupt: true, want: "does not match digest"},
		{name: "missing-blob", drop: true, want: "blobs/sha256"},
		{name: "dot-dot", entries: []ociEntry{{name: "../evil", body: "x"}}, want: "climbs out of the root"},
		{name: "abs-symlink", entries: []ociEntry{{name: "esc", typ: tar.TypeSymlink, link: dir}, {name: "esc/pwned", body: "x"}}, want: "symlink esc"},
	} {
		f := filepath.Join(dir, tc.name+".tar")
		if tc.entries != nil {
			os.WriteFile(f, ociTar(t, tc.entries), 0o644)
		} else {
			writeOCITar(t, f, layers, config, tc.corrupt, tc.drop)
		}
		_, err := h.ImportImage(ctx, tc.name, f, ImageBuildOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
		assertNoHalfImage(t, imgDir, tc.name)
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Error("an import wrote through a symlink out of its root")
	}
}
