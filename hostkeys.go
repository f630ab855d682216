package smolvm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm-go/smolvm/internal/agent"
)

// SSH host keys of VMs started from a warm template (warm.go): the
// template's guest made its keys at boot, so every VM restored from it
// would otherwise present the same host identity. Each gets new keys of
// the same types, made on the host, before its Start returns.

// hostKeyTypes make a new SSH host key of each type warm VMs renew.
var hostKeyTypes = map[string]func() (crypto.Signer, error){
	"ed25519": func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err },
	"ecdsa":   func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) },
	"rsa":     func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 3072) },
}

// reloadSSHD removes host keys of other types than hostKeyTypes (they
// would stay the template's) and has sshd load the new ones: SIGHUP makes
// it execute itself again.
const reloadSSHD = `for k in /etc/ssh/ssh_host_*_key; do
  case "$k" in *_ed25519_key|*_ecdsa_key|*_rsa_key) ;; *) rm -f "$k" "$k.pub" ;; esac
done
pid=$(cat /run/sshd.pid 2>/dev/null || pidof sshd 2>/dev/null || true)
[ -z "$pid" ] || kill -HUP $pid
`

// hostKeysStep gives a VM restored from a template whose guest had SSH
// host keys keys of its own, made on the host (an emulated CPU makes
// them slowly), before Start returns.
var hostKeysStep = step[*startOp]{name: "host-keys", kind: ErrCommandUnavailable, do: func(ctx context.Context, s *startOp) error {
	m, err := readWarmMeta(s.rec.Restore.Dir)
	if err != nil {
		return err
	}
	if len(m.SSHHostKeys) == 0 {
		return nil
	}
	for _, typ := range m.SSHHostKeys {
		gen := hostKeyTypes[typ]
		if gen == nil {
			continue
		}
		k, err := gen()
		if err != nil {
			return err
		}
		block, err := ssh.MarshalPrivateKey(k, "root@"+s.vm.id)
		if err != nil {
			return err
		}
		pub, err := ssh.NewPublicKey(k.Public())
		if err != nil {
			return err
		}
		path := "/etc/ssh/ssh_host_" + typ + "_key"
		line := append(bytes.TrimSpace(ssh.MarshalAuthorizedKey(pub)), []byte(" root@"+s.vm.id+"\n")...)
		if err := s.client.Upload(s.bootCtx, path, bytes.NewReader(pem.EncodeToMemory(block)), 0o600, false); err != nil {
			return fmt.Errorf("new SSH host key: %w", err)
		}
		if err := s.client.Upload(s.bootCtx, path+".pub", bytes.NewReader(line), 0o644, false); err != nil {
			return fmt.Errorf("new SSH host key: %w", err)
		}
	}
	var out bytes.Buffer
	res, err := s.client.Exec(s.bootCtx, agent.ExecRequest{Shell: reloadSSHD, Timeout: time.Minute, MaxOutputBytes: 4096}, nil, &out, &out)
	if err != nil {
		return fmt.Errorf("reload sshd: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("reload sshd: exit %d: %s", res.ExitCode, strings.TrimSpace(out.String()))
	}
	return nil
}}
