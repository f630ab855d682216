package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
)

func TestCloneDisk(t *testing.T) {
	img := buildMinimal(t)
	dir := t.TempDir()
	base, err := os.Stat(img.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	same := filepath.Join(dir, "same.ext4")
	if err := CloneDisk(context.Background(), img.Rootfs, same, 0); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(same)
	if st.Size() != base.Size() {
		t.Fatalf("clone size %d, base %d", st.Size(), base.Size())
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used >= st.Size() {
		t.Errorf("clone not sparse: %d of %d bytes allocated", used, st.Size())
	}
	grown := filepath.Join(dir, "grown.ext4")
	if err := CloneDisk(context.Background(), img.Rootfs, grown, 256); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(grown)
	if st.Size() != 256<<20 {
		t.Fatalf("grown size %d", st.Size())
	}
	if out, err := exec.Command("e2fsck", "-f", "-n", grown).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck after resize: %v: %s", err, out)
	}
	if out, err := exec.Command("dumpe2fs", "-h", grown).CombinedOutput(); err != nil {
		t.Fatalf("dumpe2fs: %v", err)
	} else if !containsBlockCount(string(out), 256<<20) {
		t.Errorf("filesystem not resized:\n%s", out)
	}
	// dst must not exist, and nothing is left when the source is bad.
	if err := CloneDisk(context.Background(), img.Rootfs, grown, 0); err == nil {
		t.Error("clone over an existing file succeeded")
	}
	bad := filepath.Join(dir, "bad.ext4")
	if err := CloneDisk(context.Background(), filepath.Join(dir, "missing"), bad, 0); err == nil {
		t.Error("clone of a missing base succeeded")
	}
	if _, err := os.Stat(bad); err == nil {
		t.Error("failed clone left its destination")
	}
}

// containsBlockCount reports whether dumpe2fs -h output shows a
// filesystem of size bytes.
func containsBlockCount(out string, size int64) bool {
	count := regexp.MustCompile(`Block count:\s+(\d+)`).FindStringSubmatch(out)
	bs := regexp.MustCompile(`Block size:\s+(\d+)`).FindStringSubmatch(out)
	if count == nil || bs == nil {
		return false
	}
	c, _ := strconv.ParseInt(count[1], 10, 64)
	b, _ := strconv.ParseInt(bs[1], 10, 64)
	return c*b == size
}
