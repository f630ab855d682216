package agent_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

func TestFileRoundTrip(t *testing.T) {
	c, e := startPair(t)
	tests := []struct {
		name string
		size int
		mode os.FileMode
	}{
		{"empty", 0, 0o644},
		{"one byte", 1, 0o600},
		{"odd size", 100_003, 0o755},
		{"chunk plus one", proto.ChunkSize + 1, 0o640},
		{"window plus one", proto.InitialWindow + 1, 0o400},
		{"9 MiB", 9<<20 + 5, 0o750},
		{"setuid", 10, 0o755 | os.ModeSetuid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := make([]byte, tt.size)
			rand.Read(data)
			path := filepath.Join(e.dir, "files", strings.ReplaceAll(tt.name, " ", "_"), "f.bin")
			ctx := ctxT(t, 60*time.Second)
			if err := c.Upload(ctx, path, bytes.NewReader(data), tt.mode, true); err != nil {
				t.Fatalf("Upload: %v", err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode() & (fs.ModePerm | fs.ModeSetuid); got != tt.mode {
				t.Errorf("guest file mode = %v, want %v", got, tt.mode)
			}
			h := sha256.New()
			mode, err := c.Download(ctx, path, h)
			if err != nil {
				t.Fatalf("Download: %v", err)
			}
			if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
				t.Errorf("downloaded content differs (sha256)")
			}
			if mode != tt.mode {
				t.Errorf("downloaded mode = %v, want %v", mode, tt.mode)
			}
			assertNoTempFiles(t, filepath.Dir(path))
		})
	}
}

// assertNoTempFiles fails if dir holds upload temporaries.
func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".smolvm-") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

// failingReader yields n random bytes, then fails.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errBoom
	}
	k := min(len(p), r.n)
	rand.Read(p[:k])
	r.n -= k
	return k, nil
}

func TestUploadIsAtomic(t *testing.T) {
	c, e := startPair(t)
	path := filepath.Join(e.dir, "target.txt")
	if err := os.WriteFile(path, []byte("old content"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := c.Upload(ctxT(t, 30*time.Second), path, &failingReader{n: 2 << 20}, 0o644, false)
	if !errors.Is(err, errBoom) {
		t.Fatalf("Upload err = %v, want the reader's error", err)
	}
	// The guest learns of the abort asynchronously; wait for its cleanup.
	waitFor(t, 10*time.Second, "temporary file removal", func() bool {
		entries, _ := os.ReadDir(e.dir)
		for _, en := range entries {
			if strings.Contains(en.Name(), ".smolvm-") {
				return false
			}
		}
		return true
	})
	if got, _ := os.ReadFile(path); string(got) != "old content" {
		t.Fatalf("target = %q after failed upload, want the old content", got)
	}
	// A complete upload replaces it.
	if err := c.Upload(ctxT(t, 30*time.Second), path, strings.NewReader("new"), 0o600, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "new" {
		t.Fatalf("target = %q, want new", got)
	}
	assertNoTempFiles(t, e.dir)
}

func TestFileErrors(t *testing.T) {
	c, e := startPair(t)
	regular := filepath.Join(e.dir, "regular")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	upload := func(path string, mkdir bool) error {
		return c.Upload(ctxT(t, 10*time.Second), path, strings.NewReader("x"), 0o644, mkdir)
	}
	download := func(path string) error {
		_, err := c.Download(ctxT(t, 10*time.Second), path, io.Discard)
		return err
	}
	tests := []struct {
		name string
		err  error
		kind error
	}{
		{"upload relative path", upload("relative/file", true), proto.ErrInvalidArgument},
		{"upload empty path", upload("", true), proto.ErrInvalidArgument},
		{"upload missing parent", upload(filepath.Join(e.dir, "missing", "f"), false), proto.ErrNotFound},
		{"upload onto directory", upload(e.dir, false), proto.ErrInvalidArgument},
		{"upload under a file", upload(filepath.Join(regular, "f"), false), proto.ErrInvalidArgument},
		{"download relative path", download("etc/passwd"), proto.ErrInvalidArgument},
		{"download missing file", download(filepath.Join(e.dir, "nope")), proto.ErrNotFound},
		{"download directory", download(e.dir), proto.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, tt.kind) {
				t.Fatalf("err = %v, want kind %v", tt.err, tt.kind)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(e.dir, "missing")); err == nil {
		t.Error("upload without MkdirParents created the parent")
	}
}

func TestFilePermissionError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root bypasses file permissions")
	}
	c, e := startPair(t)
	locked := filepath.Join(e.dir, "locked")
	if err := os.Mkdir(locked, 0o500); err != nil {
		t.Fatal(err)
	}
	err := c.Upload(ctxT(t, 10*time.Second), filepath.Join(locked, "f"), strings.NewReader("x"), 0o644, false)
	if !errors.Is(err, proto.ErrPermission) {
		t.Fatalf("err = %v, want ErrPermission", err)
	}
}
