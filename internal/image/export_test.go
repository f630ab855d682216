package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeImage writes a complete image directory (files with checksums and a
// manifest) without building anything.
func fakeImage(t *testing.T, cache, name string) *Image {
	t.Helper()
	dir := filepath.Join(cache, name)
	os.MkdirAll(dir, 0o755)
	m := Manifest{Name: name, Fingerprint: "f00d", KernelKind: KernelBzImage, BuiltAt: time.Unix(1700000000, 0).UTC()}
	for n, body := range map[string]string{kernelFile: "bz", vmlinuxFile: "elf", initrdFile: "cpio", rootfsFile: "ext4" + string(make([]byte, 3<<20)) + "end"} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		fi, err := fileInfo(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Files = append(m.Files, fi)
	}
	if err := writeManifest(dir, &m); err != nil {
		t.Fatal(err)
	}
	img, err := Get(cache, name)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestExportImport(t *testing.T) {
	ctx := context.Background()
	a, b := t.TempDir(), t.TempDir()
	src := fakeImage(t, a, "app")
	file := filepath.Join(t.TempDir(), "app.tar")
	if err := Export(ctx, a, "app", file); err != nil {
		t.Fatal(err)
	}
	if !IsExport(file) {
		t.Fatal("IsExport is false for an export")
	}
	img, err := ImportExport(ctx, b, "copy", file)
	if err != nil {
		t.Fatal(err)
	}
	if img.Manifest.Fingerprint != src.Manifest.Fingerprint || len(img.Manifest.Files) != 4 {
		t.Fatalf("manifest %+v", img.Manifest)
	}
	for i, f := range img.Manifest.Files {
		got, err := fileInfo(filepath.Join(img.Dir, f.Name))
		if err != nil || got != src.Manifest.Files[i] {
			t.Errorf("%s: %+v %v, want %+v", f.Name, got, err, src.Manifest.Files[i])
		}
	}
	// The disk stays sparse: the zeros were not written.
	var st unix.Stat_t
	unix.Stat(img.Rootfs, &st)
	if st.Blocks*512 >= 3<<20 {
		t.Errorf("imported disk uses %d bytes: not sparse", st.Blocks*512)
	}

	data, _ := os.ReadFile(file)
	bad := func(name string, edit func([]byte) []byte, want string) {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "bad.tar")
			os.WriteFile(f, edit(bytes.Clone(data)), 0o644)
			_, err := ImportExport(ctx, b, "bad", f)
			if !errors.Is(err, ErrUnsafeArchive) || !strings.Contains(err.Error(), want) {
				t.Fatalf("err = %v, want ErrUnsafeArchive with %q", err, want)
			}
			// (The image's empty lock file stays, as after every build.)
			ents, _ := filepath.Glob(filepath.Join(b, ".tmp-*"))
			if _, err := os.Stat(filepath.Join(b, "bad")); err == nil || len(ents) > 0 {
				t.Errorf("left: %v", ents)
			}
		})
	}
	bad("checksum", func(d []byte) []byte {
		i := bytes.LastIndex(d, []byte("end"))
		d[i] = 'E'
		return d
	}, "checksum")
	bad("truncated", func(d []byte) []byte {
		// Cut after the header and the first file: the rest is missing.
		tr := tar.NewReader(bytes.NewReader(d))
		tr.Next()
		tr.Next()
		var out bytes.Buffer
		tw := tar.NewWriter(&out)
		tr2 := tar.NewReader(bytes.NewReader(d))
		for i := 0; i < 2; i++ {
			h, _ := tr2.Next()
			tw.WriteHeader(h)
			b := make([]byte, h.Size)
			tr2.Read(b)
			tw.Write(b)
		}
		tw.Close()
		return out.Bytes()
	}, "missing")
	bad("extra member", func(d []byte) []byte {
		var out bytes.Buffer
		tw := tar.NewWriter(&out)
		tr := tar.NewReader(bytes.NewReader(d))
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			tw.WriteHeader(h)
			b := make([]byte, h.Size)
			if _, err := io.ReadFull(tr, b); err != nil {
				t.Fatal(err)
			}
			tw.Write(b)
		}
		tw.WriteHeader(&tar.Header{Name: "../evil", Size: 1, Mode: 0o644})
		tw.Write([]byte("x"))
		tw.Close()
		return out.Bytes()
	}, `unexpected member "../evil"`)
	if _, err := ImportExport(ctx, b, "default", file); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("import as a built-in name: %v", err)
	}
}

func TestImportMissingBlobAndXattrs(t *testing.T) {
	layout := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: 1, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.origin": "oci", "SCHILY.xattr.system.ignored": "x"}})
	tw.Write([]byte("x"))
	tw.Close()
	writeOCILayout(t, layout, [][]byte{buf.Bytes(), makeTar(t, []tarEntry{{name: "g", body: "y"}})})
	root := filepath.Join(t.TempDir(), "r")
	if _, err := Import(context.Background(), layout, root, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	v := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(root, "f"), "user.origin", v); err == nil && string(v[:n]) != "oci" {
		t.Errorf("user.origin = %q", v[:n])
	} else if err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.ENODATA) {
		t.Errorf("getxattr: %v", err)
	}
	// Drop a layer blob: the import names it.
	blobs, _ := filepath.Glob(filepath.Join(layout, "blobs/sha256/*"))
	for _, b := range blobs {
		if d, _ := os.ReadFile(b); bytes.Contains(d, []byte("g\x00")) {
			os.Remove(b)
		}
	}
	_, err := Import(context.Background(), layout, filepath.Join(t.TempDir(), "r"), ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), "blobs/sha256/") {
		t.Fatalf("missing blob: %v", err)
	}
}
