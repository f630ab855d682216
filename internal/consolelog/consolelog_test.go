package consolelog

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A flood far beyond the cap leaves both files together under it, with
// the newest line last.
func TestRunCaps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	pr, pw, err := os.Pipe() // a kernel pipe, as the VMM's console is
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	done := make(chan error, 1)
	const max = 256 << 10
	f, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- Run(pr, f, path, max) }()
	bw := bufio.NewWriterSize(pw, 8192)
	for i := range 100000 {
		fmt.Fprintf(bw, "line %d of a console flood\n", i)
	}
	bw.Flush()
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, p := range []string{path, Rotated(path)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", p, fi.Mode())
		}
		total += fi.Size()
	}
	if total > max {
		t.Fatalf("logs hold %d bytes, cap %d", total, max)
	}
	tail, err := Tail(path, 3, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(tail), "line 99999 of a console flood") || bytes.Count(tail, []byte("\n")) != 2 {
		t.Fatalf("tail %q", tail)
	}
	var all bytes.Buffer
	if err := Copy(&all, path); err != nil {
		t.Fatal(err)
	}
	if int64(all.Len()) != total || !bytes.HasSuffix(all.Bytes(), []byte("line 99999 of a console flood\n")) {
		t.Fatalf("Copy gave %d bytes", all.Len())
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(Rotated(path)); !os.IsNotExist(err) {
		t.Fatal("rotated half left behind")
	}
}

// Tail reaches into the rotated half when the current file is short, and
// reads only the end of big files.
// A log deleted while the logger runs is not recreated: a deleted VM
// leaves nothing behind, however late its logger writes.
func TestRunStopsWhenDeleted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	f, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Run(pr, f, path, MinMaxBytes) }()
	pw.Write(make([]byte, 1000))
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		pw.Write(make([]byte, MinMaxBytes))
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, Rotated(path)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s recreated after deletion", p)
		}
	}
}

func TestTailAcrossRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	os.WriteFile(Rotated(path), []byte(strings.Repeat("x", 1<<20)+"\nold1\r\nold2\n"), 0o600)
	os.WriteFile(path, []byte("new1\n"), 0o600)
	tail, err := Tail(path, 3, 64)
	if err != nil {
		t.Fatal(err)
	}
	if string(tail) != "old1\nold2\nnew1" {
		t.Fatalf("tail %q", tail)
	}
	if tail, _ := Tail(filepath.Join(t.TempDir(), "none.log"), 3, 64); len(tail) != 0 {
		t.Fatalf("missing log gave %q", tail)
	}
}

// A follower sees everything written, across a rotation.
func TestFollower(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	fl := NewFollower(path)
	defer fl.Close()
	var got bytes.Buffer
	fl.ReadNew(&got) // no file yet
	os.WriteFile(path, []byte("a\n"), 0o600)
	fl.ReadNew(&got)
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("b\n")
	f.Close()
	os.Rename(path, Rotated(path))
	os.WriteFile(path, []byte("c\n"), 0o600)
	fl.ReadNew(&got)
	if got.String() != "a\nb\nc\n" {
		t.Fatalf("followed %q", got.String())
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text\n\tindented", "plain text\n\tindented"},
		{"\x1b[31mred\x1b[0m", "red"},
		{"\x1b]0;evil title\x07after", "after"},
		{"\x1b]52;c;Y2xpcA==\x1b\\x", "x"},
		{"\x1bPdcs\x1b\\y", "y"},
		{"a\rb\x08c\x00d\x7fe", "abcde"},
		{"\u009b31mc1\u009d0;t\u009cz", "c1z"},
		{"\x1b(Bq", "q"},
		{"café ✓", "café ✓"},
		{"bad\xffutf8", "bad\uFFFDutf8"},
		{"\x1b[", ""},
	}
	for _, tt := range tests {
		if got := string(Sanitize([]byte(tt.in))); got != tt.want {
			t.Errorf("Sanitize(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
