// Package firecracker is the Firecracker backend: a firecracker process per
// VM (optionally started through Firecracker's jailer), configured over its
// REST API on a Unix socket, with the guest console on the process's
// standard output and the agent reached through Firecracker's hybrid vsock
// (a Unix socket on the host).
//
// Firecracker only runs guests with hardware KVM: on a host where
// acceleration resolves to TCG the backend reports itself unavailable.
package firecracker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// EnvBinary names the environment variable that points at the firecracker
// executable when Backend.Binary is empty.
const EnvBinary = "SMOLVM_FIRECRACKER"

// Kind is the Firecracker backend's registry name.
const Kind vmm.Kind = "firecracker"

// Backend launches VMs with Firecracker. The zero value finds the binary
// through EnvBinary or PATH and runs it without the jailer. A Backend keeps
// no per-VM state: every method works from the vmm.Instance alone.
type Backend struct {
	// Binary is the firecracker executable (from --firecracker); empty
	// means $SMOLVM_FIRECRACKER, then "firecracker" in PATH.
	Binary string
	// Jailer, when not nil, starts firecracker through Firecracker's jailer.
	Jailer *JailerConfig
	// TrackDirtyPages enables dirty page tracking in every VM, which Diff
	// snapshots need; it costs some guest write performance.
	TrackDirtyPages bool
	// Probe describes the host's acceleration.
	Probe vmm.Probe
}

// New is the Firecracker backend's vmm.Factory.
func New(o vmm.Options) vmm.Backend { return &Backend{Binary: o.Binary, Probe: o.Probe} }

// Kind implements vmm.Backend.
func (b *Backend) Kind() vmm.Kind { return Kind }

// Requirements implements vmm.Backend: an ELF vmlinux and hardware KVM.
func (b *Backend) Requirements() vmm.Requirements {
	return vmm.Requirements{Kernel: vmm.KernelELF, NeedsKVM: true}
}

// RuntimeFiles implements vmm.Backend.
func (b *Backend) RuntimeFiles() []string {
	return []string{apiSockName, agentName, errName, logName, metricsName}
}

// IsVMM implements vmm.Backend.
func (b *Backend) IsVMM(exe string) bool {
	return filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == "firecracker"
}

// AgentDialers implements vmm.Backend: the hybrid vsock socket, where the
// agent is reached by sending "CONNECT <port>\n".
func (b *Backend) AgentDialers(inst vmm.Instance) []vmm.Dialer {
	path := inst.Agent
	return []vmm.Dialer{{Name: "vsock", Dial: func(ctx context.Context) (io.ReadWriteCloser, error) {
		return agent.DialFirecrackerVsock(ctx, path, proto.DefaultVsockPort)
	}}}
}

// binary finds the firecracker executable; failures wrap vmm.ErrUnavailable
// and name what was searched.
func (b *Backend) binary() (string, error) {
	if b.Binary != "" {
		p, err := exec.LookPath(b.Binary)
		if err != nil {
			return "", fmt.Errorf("firecracker binary %q (--firecracker) not usable: %v: %w", b.Binary, err, vmm.ErrUnavailable)
		}
		return p, nil
	}
	if env := os.Getenv(EnvBinary); env != "" {
		p, err := exec.LookPath(env)
		if err != nil {
			return "", fmt.Errorf("firecracker binary %q ($%s) not usable: %v: %w", env, EnvBinary, err, vmm.ErrUnavailable)
		}
		return p, nil
	}
	p, err := exec.LookPath("firecracker")
	if err != nil {
		return "", fmt.Errorf("firecracker not found: searched --firecracker (unset), $%s (unset) and PATH (%s): %w",
			EnvBinary, os.Getenv("PATH"), vmm.ErrUnavailable)
	}
	return p, nil
}

// Version returns the first line of `firecracker --version`, e.g.
// "Firecracker v1.12.0".
func (b *Backend) Version(ctx context.Context) (string, error) {
	bin, err := b.binary()
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			return "", fmt.Errorf("%s --version: %w: %s", bin, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line), nil
}

// Usable reports whether this backend can run VMs on this host, for backend
// auto-selection and doctor; reason says why not (or what it found).
func (b *Backend) Usable(ctx context.Context) (ok bool, reason string) {
	var why []string
	bin, err := b.binary()
	if err != nil {
		why = append(why, err.Error())
	}
	if r := b.Probe.Detect(); r.Accel != vmm.AccelKVM {
		why = append(why, "Firecracker needs hardware KVM and this host offers only "+r.Reason)
	}
	if b.Jailer != nil {
		if _, err := b.Jailer.binary(); err != nil {
			why = append(why, err.Error())
		}
	}
	if len(why) > 0 {
		return false, strings.Join(why, "; ")
	}
	return true, "firecracker at " + bin + " with hardware KVM"
}

// Files of a VM in its runtime directory. With the jailer, the sockets and
// log files live in the chroot and these paths are symbolic links to them.
const (
	apiSockName  = "fc.sock"
	agentName    = "agent.sock"
	errName      = "firecracker.err"
	logName      = "firecracker.log"
	metricsName  = "firecracker.metrics"
	maxSockPath  = 107 // longest path a Unix socket address holds
	maxFCIDLen   = 64  // longest --id Firecracker and the jailer accept
	consoleWords = "console=ttyS0 reboot=k panic=1 pci=off " + bootparams.Quiet
)

// controlPath is the API socket of the VM whose runtime directory is dir.
func controlPath(dir string) string { return filepath.Join(dir, apiSockName) }

// agentPath is the hybrid vsock socket of the VM whose runtime directory is dir.
func agentPath(dir string) string { return filepath.Join(dir, agentName) }

// fcID turns a VM id into one Firecracker and the jailer accept: ASCII
// letters, digits and hyphens, at most 64 characters. Distinct VM ids get
// distinct jail ids, so one VM can never use another's jail: an id that
// is already valid (and has no upper-case letter) is kept; any other has
// its bad characters turned into hyphens, is cut to fit, and gets
// "-X" and 8 upper-case hex digits of its SHA-256. VM ids have no
// upper-case letters, so a kept id never looks like a changed one
// ("a-b" stays, "a_b" becomes "a-b-X" + hash).
func fcID(id string) string {
	ok := id != "" && len(id) <= maxFCIDLen
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			ok = false
			if !(c >= 'A' && c <= 'Z') {
				b[i] = '-'
			}
		}
	}
	if ok {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	suffix := "-X" + strings.ToUpper(hex.EncodeToString(sum[:4]))
	if len(b) > maxFCIDLen-len(suffix) {
		b = b[:maxFCIDLen-len(suffix)]
	}
	if len(b) == 0 {
		b = []byte("smolvm")
	}
	return string(b) + suffix
}

var _ vmm.Backend = (*Backend)(nil)
