package agent_test

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// specialValues holds values with every character a shell treats specially.
var specialValues = map[string]string{
	"SINGLE_QUOTE": `it's`,
	"QUOTES":       `'"''"'`,
	"DOLLAR":       `$HOME ${PATH} $(echo no) $((1+1))`,
	"BACKSLASH":    `C:\path\n\t\\`,
	"BACKTICK":     "`echo no`",
	"NEWLINES":     "line1\nline2\n\nexport X='y'\n",
	"SPACES":       "  leading and trailing  ",
	"GLOB":         "* ? [a-z]",
	"OPERATORS":    "; & | < > ( ) { } # !",
	"UNICODE":      "héllo wörld ✓ 日本語 🚀",
	"EMPTY":        "",
	"MIXED":        "a'b\"c$d\\e`f\ng h*i;j&k|l<m>n(o)p{q}r#s",
	"_under9":      "x",
}

func TestEnvRoundTrip(t *testing.T) {
	c, e := startPair(t)
	ctx := ctxT(t, 30*time.Second)
	if err := c.SetEnv(ctx, specialValues, false); err != nil {
		t.Fatalf("SetEnv: %v", err)
	}
	got, err := c.ListEnv(ctx)
	if err != nil {
		t.Fatalf("ListEnv: %v", err)
	}
	if !maps.Equal(got, specialValues) {
		t.Fatalf("ListEnv = %q, want %q", got, specialValues)
	}
	data, err := os.ReadFile(e.envFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `export SINGLE_QUOTE='it'\''s'`+"\n") {
		t.Errorf("env file lacks the expected quoting:\n%s", data)
	}

	// A real login shell sources the file: dash and bash read $HOME/.profile,
	// which here sources the env file the way /etc/profile.d does in a guest.
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, ".profile"), []byte(". "+e.envFile+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys := slices.Sorted(maps.Keys(specialValues))
	var script strings.Builder
	script.WriteString(`printf '%s\0'`)
	for _, k := range keys {
		fmt.Fprintf(&script, ` "$%s"`, k)
	}
	var out, errOut bytes.Buffer
	res, err := c.Exec(ctx, agent.ExecRequest{Shell: script.String(), Env: map[string]string{"HOME": home}}, nil, &out, &errOut)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Exec = %+v, %v, stderr %q", res, err, errOut.String())
	}
	fields := strings.Split(out.String(), "\x00")
	if len(fields) != len(keys)+1 {
		t.Fatalf("shell printed %d fields, want %d: %q", len(fields)-1, len(keys), out.String())
	}
	for i, k := range keys {
		if fields[i] != specialValues[k] {
			t.Errorf("sh -lc: $%s = %q, want %q", k, fields[i], specialValues[k])
		}
	}

	// Argv commands get the persisted variables without a shell.
	out.Reset()
	if _, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"printenv", "MIXED"}}, nil, &out, nil); err != nil {
		t.Fatal(err)
	}
	if out.String() != specialValues["MIXED"]+"\n" {
		t.Errorf("printenv MIXED = %q", out.String())
	}
}

func TestEnvSetUnsetReplace(t *testing.T) {
	c, _ := startPair(t)
	ctx := ctxT(t, 30*time.Second)
	steps := []struct {
		name string
		do   func() error
		want map[string]string
	}{
		{"empty at start", func() error { return nil }, map[string]string{}},
		{"set", func() error { return c.SetEnv(ctx, map[string]string{"A": "1", "B": "2"}, false) }, map[string]string{"A": "1", "B": "2"}},
		{"merge", func() error { return c.SetEnv(ctx, map[string]string{"B": "3", "C": "4"}, false) }, map[string]string{"A": "1", "B": "3", "C": "4"}},
		{"unset", func() error { return c.UnsetEnv(ctx, []string{"A", "MISSING"}) }, map[string]string{"B": "3", "C": "4"}},
		{"replace", func() error { return c.SetEnv(ctx, map[string]string{"D": "5"}, true) }, map[string]string{"D": "5"}},
		{"replace with nothing", func() error { return c.SetEnv(ctx, nil, true) }, map[string]string{}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got, err := c.ListEnv(ctx)
		if err != nil {
			t.Fatalf("%s: ListEnv: %v", s.name, err)
		}
		if !maps.Equal(got, s.want) {
			t.Fatalf("%s: ListEnv = %v, want %v", s.name, got, s.want)
		}
	}
}

func TestEnvInvalid(t *testing.T) {
	c, _ := startPair(t)
	ctx := ctxT(t, 30*time.Second)
	for _, key := range []string{"", "1A", "A-B", "A B", "A=B", "Ä", "A.B", "$A"} {
		t.Run(fmt.Sprintf("%q", key), func(t *testing.T) {
			err := c.SetEnv(ctx, map[string]string{key: "v"}, false)
			if !errors.Is(err, proto.ErrInvalidArgument) {
				t.Fatalf("SetEnv(%q) err = %v, want ErrInvalidArgument", key, err)
			}
		})
	}
	if err := c.SetEnv(ctx, map[string]string{"NUL": "a\x00b"}, false); !errors.Is(err, proto.ErrInvalidArgument) {
		t.Fatalf("NUL value: err = %v", err)
	}
	if err := c.UnsetEnv(ctx, []string{"bad key"}); !errors.Is(err, proto.ErrInvalidArgument) {
		t.Fatalf("UnsetEnv bad key: err = %v", err)
	}
}
