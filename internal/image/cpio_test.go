package image

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/pierrec/lz4/v4"
)

func testEntries() []cpioEntry {
	return []cpioEntry{
		{Name: "init", Mode: cpioReg | 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
		{Name: "lib/modules/6.1/kernel/a.ko", Mode: cpioReg | 0o644, Data: bytes.Repeat([]byte{1, 2, 3}, 1000)},
		{Name: "dev/console", Mode: cpioChar | 0o600, Major: 5, Minor: 1},
		{Name: "dev", Mode: cpioDir | 0o755},
		{Name: "bin/sh", Mode: cpioSymlink | 0o777, Data: []byte("busybox")},
		{Name: "modules.order", Mode: cpioReg | 0o644, Data: []byte("/lib/modules/6.1/kernel/a.ko\n")},
	}
}

func TestCPIODeterministic(t *testing.T) {
	var a, b bytes.Buffer
	if err := writeCPIO(&a, testEntries()); err != nil {
		t.Fatal(err)
	}
	// Same entries in another order: same bytes.
	e := testEntries()
	for i, j := 0, len(e)-1; i < j; i, j = i+1, j-1 {
		e[i], e[j] = e[j], e[i]
	}
	if err := writeCPIO(&b, e); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("same entries gave different archives")
	}
	if a.Len()%512 != 0 {
		t.Errorf("archive length %d not padded to 512", a.Len())
	}
	for _, c := range []Compression{CompressNone, CompressGzip, CompressLZ4} {
		x, err := compress(c, a.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		y, _ := compress(c, a.Bytes())
		if !bytes.Equal(x, y) {
			t.Errorf("%s compression is not deterministic", c)
		}
	}
	if err := writeCPIO(io.Discard, append(testEntries(), cpioEntry{Name: "init"})); err == nil {
		t.Error("duplicate entry accepted")
	}
}

func TestCPIOReadable(t *testing.T) {
	var buf bytes.Buffer
	if err := writeCPIO(&buf, testEntries()); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	r := cpio.NewReader(bytes.NewReader(buf.Bytes()))
	ino := int64(0)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Guid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d mtime %v", h.Name, h.Uid, h.Guid, h.ModTime)
		}
		if h.Inode <= ino {
			t.Errorf("%s: inode %d not increasing", h.Name, h.Inode)
		}
		ino = h.Inode
		want[h.Name] = true
		if h.Name == "init" {
			b, _ := io.ReadAll(r)
			if string(b) != "#!/bin/sh\necho hi\n" {
				t.Errorf("init content %q", b)
			}
		}
	}
	for _, n := range []string{"init", "dev", "dev/console", "lib", "lib/modules/6.1/kernel", "lib/modules/6.1/kernel/a.ko", "bin/sh"} {
		if !want[n] {
			t.Errorf("library reader did not see %s", n)
		}
	}

	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio(1) not installed")
	}
	cmd := exec.Command("cpio", "-t", "-v")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	s := string(out)
	for _, w := range []string{"init", "dev/console", "bin/sh -> busybox", "lib/modules/6.1/kernel/a.ko"} {
		if !strings.Contains(s, w) {
			t.Errorf("cpio -t output lacks %q:\n%s", w, s)
		}
	}
	// cpio -i extracts it (device nodes need root; skip them via pattern).
	dir := t.TempDir()
	cmd = exec.Command("cpio", "-i", "-d", "--quiet", "init", "bin/sh")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
		t.Errorf("bin/sh -> %q, %v", l, err)
	}
}

func TestLZ4InitramfsIsLegacyFrame(t *testing.T) {
	archive := bytes.Repeat([]byte("smolvm "), 100000)
	z, err := compress(CompressLZ4, archive)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel's unlz4 (and our vmlinux extractor) read the legacy format.
	out, err := decodeLZ4Legacy(z)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, archive) {
		t.Fatal("round trip differs")
	}
	back, err := io.ReadAll(lz4.NewReader(bytes.NewReader(z)))
	if err != nil || !bytes.Equal(back, archive) {
		t.Fatalf("pierrec reader: %v", err)
	}
}
