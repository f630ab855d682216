package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImageCLIBadInput checks the image commands' arguments and error
// codes without building anything.
func TestImageCLIBadInput(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SMOLVM_IMAGE_DIR", filepath.Join(dir, "images"))
	spec := filepath.Join(dir, "smolvm-image.yaml")
	os.WriteFile(spec, []byte("from: minimal\nbogus: 1\n"), 0o644)
	for _, tc := range []struct {
		argv []string
		code int
		want string
	}{
		{[]string{"image", "build", "mine"}, 2, "give a spec"},
		{[]string{"image", "build", "-f", spec}, 2, "name the image"},
		{[]string{"image", "build", "mine", "-f", spec}, 2, `unknown field "bogus"`},
		{[]string{"image", "build", "mine", "-f", filepath.Join(dir, "none.yaml")}, 2, "none.yaml"},
		{[]string{"image", "build", "mine", "--from", "minimal", "--packages", "git"}, 2, "packages: only with from: default"},
		{[]string{"image", "build", "Bad/Name", "--from", "minimal"}, 2, "image name"},
		{[]string{"image", "rm", "nosuch"}, 3, "nosuch"},
		{[]string{"image", "export", "nosuch", filepath.Join(dir, "x.tar")}, 3, "nosuch"},
		{[]string{"image", "import", "mine", filepath.Join(dir, "missing.tar")}, 2, "missing.tar"},
		{[]string{"image", "import", "default", spec}, 2, "built-in image"},
	} {
		r := cli(t, dir, tc.argv...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d with %q", tc.argv, r.code, r.stderr, tc.code, tc.want)
		}
	}
	if r := cli(t, dir, "image", "prune", "--json"); r.code != 0 || strings.TrimSpace(r.stdout) != `{
  "removed": []
}` {
		t.Errorf("prune: %+v", r)
	}
	if r := cli(t, dir, "image", "list", "--json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("list: %+v", r)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "images")); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("bad input left %v in the image cache", names)
	}
}
