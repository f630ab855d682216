package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStaticBinary guards the agent's hard constraint: it runs as PID 1 in
// an initramfs with no libc, so it must link statically even with cgo on.
// Packages net and os/user would pull in cgo resolvers.
func TestStaticBinary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "net" || p == "os/user" {
			t.Errorf("smolvm-agent depends on %s; it must not (the binary would need libc)", p)
		}
	}
	bin := filepath.Join(t.TempDir(), "smolvm-agent")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("smolvm-agent built with CGO_ENABLED=1 has a PT_INTERP: it is not static")
		}
	}
	v, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(v), "smolvm-agent ") {
		t.Fatalf("--version: %q %v", v, err)
	}
}
