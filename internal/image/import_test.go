package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tarEntry is one entry of a test layer.
type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

// makeTar writes entries with archive/tar.
func makeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: time.Unix(1700000000, 0)}
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
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// testLayers are two layers: the second gzipped, with a whiteout, an
// opaque directory, a replaced file and a relative symlink.
func testLayers(t testing.TB) [][]byte {
	l1 := makeTar(t, []tarEntry{
		{name: "bin/", typ: tar.TypeDir},
		{name: "bin/busybox", body: "#!busybox", mode: 0o755},
		{name: "bin/sh", typ: tar.TypeSymlink, link: "/bin/busybox"},
		{name: "bin/ls", typ: tar.TypeLink, link: "bin/busybox"},
		{name: "etc/os-release", body: "v1\n"},
		{name: "etc/remove-me", body: "gone\n"},
		{name: "opt/lower/old", body: "old\n"},
		{name: "opt/lower/sub/deep", body: "deep\n"},
		{name: "usr/bin/su", body: "su", mode: 0o4755},
	})
	l2 := makeTar(t, []tarEntry{
		{name: "etc/.wh.remove-me"},
		{name: "etc/os-release", body: "v2\n"},
		{name: "opt/lower/new", body: "new\n"},
		{name: "opt/lower/.wh..wh..opq"},
		{name: "usr/lib/libx.so", body: "lib"},
		{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
	})
	return [][]byte{l1, gzipBytes(l2)}
}

// testConfig is the image config the test images carry.
var testConfig = ImageConfig{Env: []string{"PATH=/usr/bin:/bin", "GREETING=hi there"}, WorkingDir: "/srv", User: "1000", Cmd: []string{"/bin/sh", "-c", "echo it's up"}}

// writeOCILayout writes an OCI image layout directory holding layers.
func writeOCILayout(t testing.TB, dir string, layers [][]byte) {
	t.Helper()
	blob := func(b []byte) descriptor {
		d := "sha256:" + sha256Hex(b)
		p := filepath.Join(dir, "blobs/sha256", d[7:])
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return descriptor{Digest: d, Size: int64(len(b))}
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "config": testConfig})
	m := map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": blob(cfg)}
	var ls []descriptor
	for _, l := range layers {
		d := blob(l)
		d.MediaType = "application/vnd.oci.image.layer.v1.tar"
		ls = append(ls, d)
	}
	m["layers"] = ls
	mb, _ := json.Marshal(m)
	md := blob(mb)
	md.MediaType = "application/vnd.oci.image.manifest.v1+json"
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{md}})
	os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// tarDir packs a directory's regular files into a tar file.
func tarDir(t testing.TB, dir, out string) {
	t.Helper()
	var entries []tarEntry
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if info.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			entries = append(entries, tarEntry{name: rel, body: string(b)})
		}
		return nil
	})
	if err := os.WriteFile(out, makeTar(t, entries), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeDockerSave writes a docker save archive (legacy layout).
func writeDockerSave(t testing.TB, out string, layers [][]byte) {
	t.Helper()
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "config": testConfig})
	cfgName := sha256Hex(cfg) + ".json"
	entries := []tarEntry{{name: cfgName, body: string(cfg)}}
	var names []string
	for i, l := range layers {
		n := strings.Repeat(string(rune('a'+i)), 64) + "/layer.tar"
		names = append(names, n)
		entries = append(entries, tarEntry{name: n, body: string(l)})
	}
	m, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{"test:latest"}, "Layers": names}})
	entries = append(entries, tarEntry{name: "manifest.json", body: string(m)})
	if err := os.WriteFile(out, makeTar(t, entries), 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkTree checks the flattened test layers.
func checkTree(t *testing.T, root string) {
	t.Helper()
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(root, p)); return string(b) }
	if got := read("etc/os-release"); got != "v2\n" {
		t.Errorf("etc/os-release = %q, want the upper layer's v2", got)
	}
	for _, gone := range []string{"etc/remove-me", "opt/lower/old", "opt/lower/sub"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived its whiteout: %v", gone, err)
		}
	}
	if read("opt/lower/new") != "new\n" {
		t.Error("opt/lower/new missing: the opaque whiteout removed the upper layer's own file")
	}
	if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "/bin/busybox" {
		t.Errorf("bin/sh -> %q %v", l, err)
	}
	if l, err := os.Readlink(filepath.Join(root, "lib")); err != nil || l != "usr/lib" {
		t.Errorf("lib -> %q %v", l, err)
	}
	a, _ := os.Stat(filepath.Join(root, "bin/busybox"))
	b, _ := os.Stat(filepath.Join(root, "bin/ls"))
	if a == nil || b == nil || a.Sys().(*syscall.Stat_t).Ino != b.Sys().(*syscall.Stat_t).Ino {
		t.Error("bin/ls is not a hard link of bin/busybox")
	}
	if st, err := os.Stat(filepath.Join(root, "usr/bin/su")); err != nil || st.Mode()&os.ModeSetuid == 0 || st.Mode().Perm() != 0o755 {
		t.Errorf("usr/bin/su mode %v %v, want setuid 0755", st.Mode(), err)
	}
}

func TestImportFormats(t *testing.T) {
	layers := testLayers(t)
	layout := t.TempDir()
	writeOCILayout(t, layout, layers)
	ociTar := filepath.Join(t.TempDir(), "oci.tar")
	tarDir(t, layout, ociTar)
	save := filepath.Join(t.TempDir(), "save.tar")
	writeDockerSave(t, save, layers)
	rootfs := filepath.Join(t.TempDir(), "rootfs.tar.gz")
	os.WriteFile(rootfs, gzipBytes(makeTar(t, []tarEntry{{name: "./etc/os-release", body: "v2\n"}, {name: "./bin/sh", typ: tar.TypeSymlink, link: "busybox"}})), 0o644)

	for _, tc := range []struct {
		name, src, format string
		layers            int
	}{
		{"oci dir", layout, FormatOCI, 2},
		{"oci tar", ociTar, FormatOCI, 2},
		{"docker save", save, FormatDockerSave, 2},
		{"rootfs tarball", rootfs, FormatRootfsTar, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "root")
			res, err := Import(context.Background(), tc.src, dst, ImportOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Format != tc.format || res.Layers != tc.layers || !digestRE.MatchString(res.Digest) {
				t.Fatalf("result %+v, want format %s with %d layers and a digest", res, tc.format, tc.layers)
			}
			if tc.format == FormatRootfsTar {
				if b, _ := os.ReadFile(filepath.Join(dst, "etc/os-release")); string(b) != "v2\n" {
					t.Errorf("rootfs tarball: os-release %q", b)
				}
				return
			}
			checkTree(t, dst)
			if res.Config.WorkingDir != "/srv" || len(res.Config.Env) != 2 || res.Config.User != "1000" {
				t.Errorf("config %+v", res.Config)
			}
		})
	}
}

func TestImportRefusesEscapes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"dot-dot", []tarEntry{{name: "../evil", body: "x"}}, "climbs out of the root"},
		{"nested dot-dot", []tarEntry{{name: "a/../../evil", body: "x"}}, "climbs out of the root"},
		{"absolute symlink then write", []tarEntry{{name: "esc", typ: tar.TypeSymlink, link: "OUTSIDE"}, {name: "esc/pwned", body: "x"}}, "goes through the symlink esc"},
		{"relative symlink then write", []tarEntry{{name: "d/", typ: tar.TypeDir}, {name: "d/up", typ: tar.TypeSymlink, link: "../../.."}, {name: "d/up/pwned", body: "x"}}, "goes through the symlink d/up"},
		{"symlink then whiteout", []tarEntry{{name: "esc", typ: tar.TypeSymlink, link: "OUTSIDE"}, {name: "esc/.wh.keep"}}, "goes through the symlink esc"},
		{"hard link out", []tarEntry{{name: "pw", typ: tar.TypeLink, link: "../../../etc/passwd"}}, "leaves the root"},
		{"hard link through symlink", []tarEntry{{name: "esc", typ: tar.TypeSymlink, link: "OUTSIDE"}, {name: "pw", typ: tar.TypeLink, link: "esc/keep"}}, "goes through the symlink esc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outside := t.TempDir()
			os.WriteFile(filepath.Join(outside, "keep"), []byte("safe"), 0o644)
			for i := range tc.entries {
				tc.entries[i].link = strings.ReplaceAll(tc.entries[i].link, "OUTSIDE", outside)
			}
			layout := t.TempDir()
			writeOCILayout(t, layout, [][]byte{makeTar(t, tc.entries)})
			parent := t.TempDir()
			_, err := Import(context.Background(), layout, filepath.Join(parent, "root"), ImportOptions{})
			if !errors.Is(err, ErrUnsafeArchive) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrUnsafeArchive with %q", err, tc.want)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("outside dir now holds %v", ents)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "keep")); string(b) != "safe" {
				t.Errorf("outside file changed: %q", b)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 1 {
				t.Errorf("import wrote beside its root: %v", ents)
			}
		})
	}
}

func TestImportBoundsAndDigests(t *testing.T) {
	layout := t.TempDir()
	writeOCILayout(t, layout, [][]byte{makeTar(t, []tarEntry{{name: "big", body: strings.Repeat("x", 1000)}})})
	_, err := Import(context.Background(), layout, filepath.Join(t.TempDir(), "r"), ImportOptions{MaxBytes: 100})
	if !errors.Is(err, ErrUnsafeArchive) || !strings.Contains(err.Error(), "larger than 100 bytes") {
		t.Fatalf("size bound: %v", err)
	}
	_, err = Import(context.Background(), layout, filepath.Join(t.TempDir(), "r"), ImportOptions{MaxFiles: 0, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatalf("within bounds: %v", err)
	}
	// A layer whose bytes differ from its digest is refused.
	blobs, _ := filepath.Glob(filepath.Join(layout, "blobs/sha256/*"))
	for _, b := range blobs {
		data, _ := os.ReadFile(b)
		if bytes.Contains(data, []byte("xxxx")) {
			os.WriteFile(b, bytes.Replace(data, []byte("xxxx"), []byte("yyyy"), 1), 0o644)
		}
	}
	_, err = Import(context.Background(), layout, filepath.Join(t.TempDir(), "r"), ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), "does not match digest") {
		t.Fatalf("tampered layer: %v", err)
	}
	// The destination must be empty.
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	if _, err := Import(context.Background(), layout, full, ImportOptions{}); err == nil || !strings.Contains(err.Error(), "not an empty directory") {
		t.Fatalf("non-empty destination: %v", err)
	}
}
