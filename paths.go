package smolvm

import (
	"os"
	"os/exec"
	"path/filepath"
)

// Layout of the data directory:
//
//	smolvm.db            state (see internal/store)
//	images/<name>/       built images (see internal/image), unless $SMOLVM_IMAGE_DIR
//	vms/<id>/            a VM's private directory (0700): disk copy, sockets, VMM stderr
//	logs/<id>.log        a VM's serial console
//	locks/<id>.lock      serialises lifecycle steps on one VM across processes

func (h *host) vmDir(id string) string       { return filepath.Join(h.dir, "vms", id) }
func (h *host) logPath(id string) string     { return filepath.Join(h.dir, "logs", id+".log") }
func (h *host) lockPath(id string) string    { return filepath.Join(h.dir, "locks", id+".lock") }
func (h *host) diskPath(id string) string    { return filepath.Join(h.vmDir(id), "disk.ext4") }
func (h *host) agentPath(id string) string   { return filepath.Join(h.vmDir(id), "agent.sock") }
func (h *host) controlPath(id string) string { return filepath.Join(h.vmDir(id), "qmp.sock") }

// ImageDirEnv names the environment variable that moves the image cache out
// of the data directory (e.g. to share one cache between data directories).
const ImageDirEnv = "SMOLVM_IMAGE_DIR"

func (h *host) imagesDir() string {
	if d := os.Getenv(ImageDirEnv); d != "" {
		return d
	}
	return filepath.Join(h.dir, "images")
}

// AgentEnv names the environment variable that points at the smolvm-agent binary.
const AgentEnv = "SMOLVM_AGENT"

// findAgent returns the static guest agent binary that goes into images:
// $SMOLVM_AGENT, else smolvm-agent beside the running executable, else in PATH.
func findAgent() (string, error) {
	if p := os.Getenv(AgentEnv); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "smolvm-agent")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("smolvm-agent"); err == nil {
		return p, nil
	}
	return "", &opError{op: "find agent", kind: ErrImage, err: errAgentMissing}
}

var errAgentMissing = errorString("smolvm-agent not found beside smolvm, in PATH or in $SMOLVM_AGENT: build it with `make build` (or `CGO_ENABLED=0 go install github.com/smolvm-go/smolvm/cmd/...@latest`)")

type errorString string

func (e errorString) Error() string { return string(e) }
