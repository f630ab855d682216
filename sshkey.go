package smolvm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent"
)

// sshKeyPath is the private key SmolVM logs in to its guests with: one
// ed25519 key pair per data directory, made on first use.
func (h *Host) sshKeyPath() string { return filepath.Join(h.dir, "ssh", "id_ed25519") }

// sshKey returns the public key in authorized_keys form, making the pair if needed.
func (h *Host) sshKey() ([]byte, error) {
	priv := h.sshKeyPath()
	if pub, err := os.ReadFile(priv + ".pub"); err == nil {
		return pub, nil
	}
	if err := os.MkdirAll(filepath.Dir(priv), 0o700); err != nil {
		return nil, err
	}
	// One maker at a time, so the pair on disk always matches.
	lock, err := os.OpenFile(filepath.Join(filepath.Dir(priv), ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, err
	}
	if pub, err := os.ReadFile(priv + ".pub"); err == nil {
		return pub, nil // made by another process meanwhile
	}
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(sk, "smolvm")
	if err != nil {
		return nil, err
	}
	spk, err := ssh.NewPublicKey(pk)
	if err != nil {
		return nil, err
	}
	pub := bytes.TrimSpace(ssh.MarshalAuthorizedKey(spk))
	pub = append(pub, []byte(" smolvm\n")...)
	// Write both atomically, the public key last: its presence means the
	// pair is complete.
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{priv, pem.EncodeToMemory(block), 0o600}, {priv + ".pub", pub, 0o644}} {
		tmp, err := os.CreateTemp(filepath.Dir(priv), ".key-*")
		if err != nil {
			return nil, err
		}
		_, werr := tmp.Write(f.data)
		cerr := tmp.Chmod(f.mode)
		if err := errors.Join(werr, cerr, tmp.Close()); err != nil {
			os.Remove(tmp.Name())
			return nil, err
		}
		if err := os.Rename(tmp.Name(), f.path); err != nil {
			os.Remove(tmp.Name())
			return nil, err
		}
	}
	return pub, nil
}

// bootSSHKey returns the data directory's public key as the raw Ed25519
// key that goes on the kernel command line (bootparams.Params.SSHKey), so
// that the guest's init installs it before the ready marker. It returns
// nil, and the key is installed through the agent after boot, when the key
// cannot be read or made or is not an Ed25519 key (someone replaced it).
func (h *Host) bootSSHKey() []byte {
	pub, err := h.sshKey()
	if err != nil {
		return nil
	}
	spk, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		return nil
	}
	ck, ok := spk.(ssh.CryptoPublicKey)
	if !ok {
		return nil
	}
	k, ok := ck.CryptoPublicKey().(ed25519.PublicKey)
	if !ok || len(k) != ed25519.PublicKeySize {
		return nil
	}
	return k
}

// installSSHKey puts the data directory's public key into the guest's
// /root/.ssh/authorized_keys.
func (h *Host) installSSHKey(ctx context.Context, c *agent.Client) error {
	pub, err := h.sshKey()
	if err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	// Through the agent's own calls only: a custom root disk (a container's,
	// for the containerd shim) may have no chmod.
	if err := c.Mkdir(ctx, "/root/.ssh", 0o700, true); err != nil {
		return fmt.Errorf("install ssh key: %w", err)
	}
	if err := c.Upload(ctx, "/root/.ssh/authorized_keys", bytes.NewReader(pub), 0o600, true); err != nil {
		return fmt.Errorf("install ssh key: %w", err)
	}
	return nil
}

// SSHCommand returns the ssh(1) argument list that logs in to the VM as root
// through its SSH port forward with the data directory's key, followed by
// command (if any).
func (vm *VM) SSHCommand(command ...string) ([]string, error) {
	if st := vm.Info().Status; st != StateRunning {
		return nil, wrapErr("ssh", vm.id, ErrState, fmt.Errorf("the VM is not running (status %s)", st))
	}
	n := vm.Info().Network
	if n == nil || n.SSHHostPort() == 0 {
		return nil, wrapErr("ssh", vm.id, ErrNetwork, errors.New("the VM has no SSH port forward; create it with --ssh-port auto"))
	}
	if _, err := vm.h.sshKey(); err != nil {
		return nil, wrapErr("ssh", vm.id, ErrBackend, err)
	}
	argv := []string{"ssh", "-i", vm.h.sshKeyPath(), "-p", fmt.Sprint(n.SSHHostPort()),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"-o", "IdentitiesOnly=yes", "root@127.0.0.1"}
	return append(argv, command...), nil
}
