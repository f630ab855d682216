package server

import (
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

func TestValidEnvKey(t *testing.T) {
	tests := []struct {
		key  string
		want bool
	}{
		{"A", true}, {"_", true}, {"a_b9", true}, {"PATH", true}, {"_9", true},
		{"", false}, {"9A", false}, {"A-B", false}, {"A B", false}, {"A=B", false}, {"é", false}, {"A\n", false},
	}
	for _, tt := range tests {
		if got := validEnvKey(tt.key); got != tt.want {
			t.Errorf("validEnvKey(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}

// trickyValues exercise every piece of the quoting.
var trickyValues = map[string]string{
	"Q1":  "'",
	"Q2":  "''",
	"Q3":  `'\''`,
	"NL":  "\n",
	"NL2": "a\n\nexport B='x'\n# not a comment\n",
	"BS":  `\`,
	"D":   `$X ${Y} $(id) ` + "`id`",
	"SP":  "  ",
	"E":   "",
	"U":   "ünïcödé ✓",
	"ALL": "' \" $ \\ ` \n * ; & | < > ( ) { } # ~ ! ?",
}

func TestEnvFileRoundTrip(t *testing.T) {
	data := formatEnvFile(trickyValues)
	got, err := parseEnvFile(data)
	if err != nil {
		t.Fatalf("parseEnvFile: %v\n%s", err, data)
	}
	if !maps.Equal(got, trickyValues) {
		t.Fatalf("round trip = %q, want %q", got, trickyValues)
	}
	if !strings.Contains(string(data), "export Q1=''\\'''\n") {
		t.Errorf("unexpected quoting:\n%s", data)
	}
}

// TestEnvFileSourcedByShell checks that sh reads the file back exactly.
func TestEnvFileSourcedByShell(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env.sh")
	if err := writeFileAtomic(path, formatEnvFile(trickyValues), 0o644); err != nil {
		t.Fatal(err)
	}
	for k, v := range trickyValues {
		out, err := exec.Command("/bin/sh", "-c", `. "$1" && printf '%s' "$(printenv `+k+`; echo .)"`, "sh", path).Output()
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		// printenv adds a newline; the trailing "." keeps $(...) from eating them.
		if got := strings.TrimSuffix(string(out), "\n."); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestParseEnvFileErrors(t *testing.T) {
	for _, bad := range []string{
		"FOO=bar\n",
		"export 9X='a'\n",
		"export X='unterminated\n",
		"export X='a' junk\n",
		"export X\n",
	} {
		if _, err := parseEnvFile([]byte(bad)); !errors.Is(err, proto.ErrInternal) {
			t.Errorf("parseEnvFile(%q) err = %v, want ErrInternal", bad, err)
		}
	}
	got, err := parseEnvFile([]byte("# comment\n\n  \nexport A='1'\n# x\nexport B=''\\''x'\n"))
	if err != nil || !maps.Equal(got, map[string]string{"A": "1", "B": "'x"}) {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestWriteFileAtomicLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "f")
	for _, content := range []string{"one", "two"} {
		if err := writeFileAtomic(path, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != content {
			t.Fatalf("content %q, want %q", got, content)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want 1", len(entries))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", fi.Mode())
	}
}
