package snapfile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCopyDescribeVerify(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	// Dense zeros around data: the copy leaves them out, the digest is the
	// same because only non-zero blocks count.
	b := make([]byte, 10*BlockSize+100)
	copy(b[3*BlockSize:], "hello")
	copy(b[10*BlockSize:], "tail")
	if err := os.WriteFile(src, b, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	f, err := Copy(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if string(got) != string(b) {
		t.Fatal("copy differs from its source")
	}
	d, err := Describe(ctx, src)
	if err != nil || d.SHA256 != f.SHA256 || d.Size != f.Size {
		t.Fatalf("digest depends on layout: %+v vs %+v (%v)", d, f, err)
	}
	if f.Allocated >= int64(len(b)) {
		t.Errorf("copy not sparse: %d bytes allocated of %d", f.Allocated, len(b))
	}
	if err := Verify(ctx, dst, f, false); err != nil {
		t.Fatal(err)
	}
	// Sparse copy without digest, and WriteInto.
	in, _ := os.Open(src)
	defer in.Close()
	if err := CopySparse(ctx, in, int64(len(b)), filepath.Join(dir, "sparse")); err != nil {
		t.Fatal(err)
	}
	out, _ := os.Create(filepath.Join(dir, "into"))
	out.Truncate(int64(len(b)))
	if err := WriteInto(ctx, out, in, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	out.Close()
	for _, n := range []string{"sparse", "into"} {
		if g, _ := os.ReadFile(filepath.Join(dir, n)); string(g) != string(b) {
			t.Errorf("%s differs from its source", n)
		}
	}

	// Altered in place (same size): the changed stamp makes Verify digest
	// it, and the digest differs.
	b[3*BlockSize] = 'j'
	os.WriteFile(dst, b, 0o600)
	if err := Verify(ctx, dst, f, false); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "modified") {
		t.Fatalf("altered file: %v", err)
	}
	// A zero block turned non-zero counts too.
	b[3*BlockSize] = 'h'
	b[5*BlockSize] = 1
	os.WriteFile(dst, b, 0o600)
	if err := Verify(ctx, dst, f, false); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("hole filled: %v", err)
	}
	os.Truncate(dst, 100)
	if err := Verify(ctx, dst, f, false); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated file: %v", err)
	}
	os.Remove(dst)
	if err := Verify(ctx, dst, f, false); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("missing file: %v", err)
	}
	// Copy never overwrites.
	if _, err := Copy(ctx, src, src); err == nil {
		t.Fatal("copy onto an existing file")
	}
}
