package initd

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

func bootWithKey(t *testing.T, root string, key []byte) string {
	t.Helper()
	var console syncBuffer
	fake := &fakeSystem{}
	in := New(Options{
		Console: &console, DryRun: true, Root: root,
		Cmdline: "console=ttyS0 " + bootparams.Params{ID: "vm1", SSHKey: key}.Format(),
		Reboot:  fake.reboot, Kill: fake.kill,
	})
	in.Boot()
	return console.String()
}

func TestBootInstallsSSHKey(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	root := dryRoot(t)
	// An image's older key and a too-open directory are replaced.
	os.MkdirAll(filepath.Join(root, "root/.ssh"), 0o755)
	os.WriteFile(filepath.Join(root, authorizedKeys), []byte("ssh-ed25519 OLD other\n"), 0o644)
	out := bootWithKey(t, root, pub)
	if !strings.Contains(out, bootparams.ReadyMarker) || strings.Contains(out, "ssh key:") {
		t.Fatalf("console:\n%s", out)
	}
	b, err := os.ReadFile(filepath.Join(root, authorizedKeys))
	if err != nil || string(b) != bootparams.AuthorizedKey(pub) {
		t.Fatalf("authorized_keys = %q, %v", b, err)
	}
	for path, mode := range map[string]os.FileMode{"root/.ssh": 0o700 | os.ModeDir, authorizedKeys: 0o600} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v, %v; want %v", path, fi.Mode(), err, mode)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "root/.ssh")); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
}

func TestBootWithoutSSHKey(t *testing.T) {
	root := dryRoot(t)
	out := bootWithKey(t, root, nil)
	if _, err := os.Stat(filepath.Join(root, "root/.ssh")); err == nil {
		t.Error("made /root/.ssh without a key")
	}
	if !strings.Contains(out, bootparams.ReadyMarker) {
		t.Fatalf("console:\n%s", out)
	}
}

// TestBootSSHKeyFailure: a root where the key cannot go (here /root is a
// file, as on a container's root disk without /root) logs the failure on
// the console, and the boot still reaches the ready marker.
func TestBootSSHKeyFailure(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	root := dryRoot(t)
	os.WriteFile(filepath.Join(root, "root"), []byte("not a directory"), 0o644)
	out := bootWithKey(t, root, pub)
	i, j := strings.Index(out, "smolvm-init: ssh key:"), strings.Index(out, bootparams.ReadyMarker)
	if i < 0 || j < i {
		t.Fatalf("want the failure logged, then the ready marker:\n%s", out)
	}
}
