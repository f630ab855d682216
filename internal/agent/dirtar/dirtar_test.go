package dirtar

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

type entry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
}

// archive builds a tar with archive/tar, as a hostile peer could.
func archive(t *testing.T, entries ...entry) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Size: int64(len(e.body)), Mode: e.mode}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return b.Bytes()
}

func TestExtractRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		kind    error
	}{
		{"dotdot", []entry{{name: "../evil", typ: tar.TypeReg, body: "x"}}, proto.ErrInvalidArgument},
		{"nested dotdot", []entry{{name: "a/../../evil", typ: tar.TypeReg, body: "x"}}, proto.ErrInvalidArgument},
		{"absolute", []entry{{name: "/evil", typ: tar.TypeReg, body: "x"}}, proto.ErrInvalidArgument},
		{"write through symlink to outside", []entry{{name: "l", link: "../outside", typ: tar.TypeSymlink}, {name: "l/evil", typ: tar.TypeReg, body: "x"}}, proto.ErrInvalidArgument},
		{"write through symlink inside", []entry{{name: "l", link: ".", typ: tar.TypeSymlink}, {name: "l/f", typ: tar.TypeReg, body: "x"}}, proto.ErrInvalidArgument},
		{"too many entries", []entry{{name: "a", typ: tar.TypeReg}, {name: "b", typ: tar.TypeReg}, {name: "c", typ: tar.TypeReg}}, proto.ErrResourceExhausted},
		{"too many bytes", []entry{{name: "a", typ: tar.TypeReg, body: "0123456789"}, {name: "b", typ: tar.TypeReg, body: "0123456789"}}, proto.ErrResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "target")
			os.Mkdir(dir, 0o755)
			os.Mkdir(filepath.Join(base, "outside"), 0o755)
			_, err := Extract(context.Background(), bytes.NewReader(archive(t, tt.entries...)), dir, Limits{MaxEntries: 2, MaxBytes: 15}, Options{})
			if !errors.Is(err, tt.kind) {
				t.Fatalf("err = %v, want %v", err, tt.kind)
			}
			if _, err := os.Stat(filepath.Join(base, "evil")); err == nil {
				t.Fatal("an entry escaped the target")
			}
			if _, err := os.Stat(filepath.Join(base, "outside", "evil")); err == nil {
				t.Fatal("an entry was written through a symlink")
			}
		})
	}
}

// A regular file entry over an existing symlink replaces the link; the
// link's target is untouched. Special bits are dropped unless kept.
func TestExtractReplacesSymlink(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "secret")
	os.WriteFile(outside, []byte("keep"), 0o600)
	dir := filepath.Join(base, "target")
	os.Mkdir(dir, 0o755)
	os.Symlink(outside, filepath.Join(dir, "f"))
	data := archive(t, entry{name: "f", typ: tar.TypeReg, body: "new", mode: 0o4755})
	if _, err := Extract(context.Background(), bytes.NewReader(data), dir, Limits{}, Options{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "keep" {
		t.Fatalf("symlink target changed to %q", b)
	}
	fi, err := os.Lstat(filepath.Join(dir, "f"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm() != 0o755 {
		t.Fatalf("f = %v, %v", fi.Mode(), err)
	}
	os.Remove(filepath.Join(dir, "f"))
	if _, err := Extract(context.Background(), bytes.NewReader(data), dir, Limits{}, Options{KeepSpecialBits: true}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "f")); fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("setuid bit not kept: %v", fi.Mode())
	}
}

// Write's output is a valid archive for archive/tar, long and odd names
// included, and round-trips through Extract.
func TestWriteReadableByArchiveTar(t *testing.T) {
	src := t.TempDir()
	long := filepath.Join(src, string(bytes.Repeat([]byte("d"), 120)))
	os.Mkdir(long, 0o755)
	os.WriteFile(filepath.Join(long, "ünï\nname"), []byte("hello"), 0o644)
	var b bytes.Buffer
	if _, err := Write(context.Background(), &b, src); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(b.Bytes()))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	if len(names) != 2 || names[1] != filepath.Base(long)+"/ünï\nname" {
		t.Fatalf("archive/tar read %q", names)
	}
	dst := t.TempDir()
	if _, err := Extract(context.Background(), bytes.NewReader(b.Bytes()), dst, Limits{}, Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, filepath.Base(long), "ünï\nname")); string(got) != "hello" {
		t.Fatalf("round trip gave %q", got)
	}
}

// Modes a hostile guest claims are neutralised on the host: at most 0755
// for directories and executables, 0644 otherwise, no special bits.
func TestExtractNeutralisesModes(t *testing.T) {
	dir := t.TempDir()
	data := archive(t,
		entry{name: "d", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "d/suid", typ: tar.TypeReg, body: "x", mode: 0o4777},
		entry{name: "d/gw", typ: tar.TypeReg, body: "x", mode: 0o2666},
	)
	if _, err := Extract(context.Background(), bytes.NewReader(data), dir, Limits{}, Options{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"d": os.ModeDir | 0o755, "d/suid": 0o755, "d/gw": 0o644} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
	}
	if got := SafeMode(os.ModeSetuid | os.ModeSetgid | os.ModeSticky | 0o777); got != 0o755 {
		t.Errorf("SafeMode = %v", got)
	}
}
