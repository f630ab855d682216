package server

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// TestImageDefaults: the image's env, user and workdir are the defaults of
// a command; the command's own values win.
func TestImageDefaults(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "image.json")
	os.WriteFile(cfg, []byte(`{"env":{"APP_MODE":"oci","PATH":"/opt/bin:/bin"},"user":"app:app","workdir":"/srv"}`), 0o644)
	passwd := filepath.Join(dir, "passwd")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"), 0o644)
	s := New(Options{ImageConfigFile: cfg, PasswdFile: passwd, GroupFile: filepath.Join(dir, "group"), EnvFile: filepath.Join(dir, "env.sh")})

	cmd, err := s.command(proto.ExecArgs{Argv: []string{"/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Dir != "/srv" || !slices.Contains(cmd.Env, "APP_MODE=oci") || !slices.Contains(cmd.Env, "PATH=/opt/bin:/bin") || !slices.Contains(cmd.Env, "USER=app") {
		t.Errorf("defaults: dir %q env %v", cmd.Dir, cmd.Env)
	}
	if os.Getuid() != 1000 && (cmd.SysProcAttr.Credential == nil || cmd.SysProcAttr.Credential.Uid != 1000) {
		t.Errorf("credential %+v, want uid 1000", cmd.SysProcAttr.Credential)
	}

	cmd, err = s.command(proto.ExecArgs{Argv: []string{"/bin/true"}, User: "root", Dir: "/", Env: map[string]string{"APP_MODE": "mine"}})
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Dir != "/" || !slices.Contains(cmd.Env, "APP_MODE=mine") || !slices.Contains(cmd.Env, "USER=root") {
		t.Errorf("overrides: dir %q env %v", cmd.Dir, cmd.Env)
	}

	// A broken file gives no defaults rather than failing every command.
	os.WriteFile(cfg, []byte(`{not json`), 0o644)
	cmd, err = s.command(proto.ExecArgs{Argv: []string{"/bin/true"}})
	if err != nil || cmd.Dir == "/srv" {
		t.Errorf("broken config: %v dir %q", err, cmd.Dir)
	}
}
