package initd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

// authorizedKeys is root's authorized_keys file in the guest.
const authorizedKeys = "/root/.ssh/authorized_keys"

// installSSHKey writes the host's public key from the kernel command line
// (smolvm.sshkey) to /root/.ssh/authorized_keys: the directory 0700, the
// file 0600, both root's. It runs before the ready marker, so that the host
// need not install it through the agent after boot. The file is replaced
// whole (written beside it, then renamed), as the host's install did.
func (in *Init) installSSHKey() error {
	if len(in.params.SSHKey) == 0 {
		return nil
	}
	dir := in.path(filepath.Dir(authorizedKeys))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".authorized_keys-*")
	if err != nil {
		return err
	}
	_, werr := tmp.WriteString(bootparams.AuthorizedKey(in.params.SSHKey))
	err = errors.Join(werr, tmp.Chmod(0o600), tmp.Close())
	if err == nil && !in.opts.DryRun {
		// Root's, whoever owned what the image shipped (the init is root).
		err = errors.Join(os.Lchown(dir, 0, 0), os.Lchown(tmp.Name(), 0, 0))
	}
	if err == nil {
		err = os.Rename(tmp.Name(), in.path(authorizedKeys))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	in.mounts.Ops = append(in.mounts.Ops, "ssh key "+authorizedKeys)
	return nil
}
