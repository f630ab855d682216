package image

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	good := `from: oci:./img
files:
  - src: app
    dest: /opt/app
    mode: 0755
env:
  GREETING: hello
run:
  - echo one
  - echo two
user: app:app
workdir: /opt/app
start: ./serve
ready: test -e /tmp/up
`
	s, err := ParseSpec([]byte(good), "/specs")
	if err != nil {
		t.Fatal(err)
	}
	if kind, arg := s.Base(); kind != FromOCI || arg != "/specs/img" {
		t.Errorf("Base() = %s %s", kind, arg)
	}
	if s.Files[0].Mode != 0o755 || s.SrcPath(s.Files[0]) != "/specs/app" {
		t.Errorf("file %+v src %s", s.Files[0], s.SrcPath(s.Files[0]))
	}
	if !slices.Equal(s.Steps(), []string{"echo one", "echo two"}) || s.Env["GREETING"] != "hello" {
		t.Errorf("steps %v env %v", s.Steps(), s.Env)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown field", "from: default\nbogus: 1\n", `line 2: unknown field "bogus"`},
		{"unknown file field", "from: default\nfiles:\n  - src: a\n    dest: /a\n    owner: root\n", `line 5: unknown field "owner"`},
		{"missing from", "packages: [git]\n", "from: required"},
		{"empty oci path", "from: 'oci:'\n", `from: "oci:" names no path`},
		{"bad base name", "from: Not/An/Image\n", "is not default, minimal, an image name"},
		{"packages on oci", "from: tar:x.tar\npackages: [git]\n", "packages: only with from: default"},
		{"bad package", "from: default\npackages: ['rm -rf']\n", `packages[0]: "rm -rf" is not a Debian package name`},
		{"relative dest", "from: minimal\nfiles: [{src: a, dest: opt/a}]\n", `files[0].dest: "opt/a" must be a clean absolute path`},
		{"dest with dots", "from: minimal\nfiles: [{src: a, dest: /opt/../etc}]\n", "files[0].dest"},
		{"missing src", "from: minimal\nfiles: [{dest: /a}]\n", "files[0].src: required"},
		{"bad mode", "from: minimal\nfiles: [{src: a, dest: /a, mode: rwx}]\n", `line 2: mode "rwx": want an octal mode`},
		{"bad env key", "from: minimal\nenv: {1BAD: x}\n", `env: "1BAD" is not a variable name`},
		{"empty step", "from: minimal\nrun: ['  ']\n", "run[0]: empty step"},
		{"bad user", "from: minimal\nuser: 'root; reboot'\n", "user: \"root; reboot\""},
		{"relative workdir", "from: minimal\nworkdir: srv\n", `workdir: "srv" must be a clean absolute path`},
		{"ready without start", "from: minimal\nready: true\n", "ready: needs start:"},
		{"wrong type", "from: minimal\nrun: echo\n", "line 2"},
	} {
		_, err := ParseSpec([]byte(tc.yaml), "/specs")
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalidSpec containing %q", tc.name, err, tc.want)
		}
	}
}

func TestLoadSpecAndNames(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "smolvm.yaml")
	os.WriteFile(f, []byte("from: tar:rootfs.tar\n"), 0o644)
	s, err := LoadSpec(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, arg := s.Base(); arg != filepath.Join(dir, "rootfs.tar") {
		t.Errorf("tar path %s not taken from the spec's directory", arg)
	}
	os.WriteFile(f, []byte("from: tar:x\nfrom: minimal\n"), 0o644)
	if _, err := LoadSpec(f); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), f) {
		t.Errorf("duplicate key: %v", err)
	}
	for name, ok := range map[string]bool{"web": true, "web-1.2_x": true, "Web": false, "default": false, "minimal": false, "-x": false, "": false, "a/b": false} {
		if err := CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v", name, err)
		}
	}
}

func TestSpecWrongTypeNamesField(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{"from: minimal\nrun: echo\n", "line 2: run: "},
		{"from: minimal\nenv:\n  A: [1]\n", "line 3: env: "},
		{"from: minimal\nfiles:\n  - src: a\n    dest: /a\n    mode: rwx\n", `mode "rwx"`},
	} {
		_, err := ParseSpec([]byte(tc.spec), t.TempDir())
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.spec, err, tc.want)
		}
	}
}
