package smolvm

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Mount shares a host directory with the guest (QEMU backend only, over
// virtio-fs). The agent mounts it at boot.
type Mount struct {
	// HostPath is the absolute host directory shared; it must exist.
	HostPath string `json:"host_path"`
	// GuestPath is the absolute guest directory it appears at (created).
	GuestPath string `json:"guest_path"`
	// ReadOnly makes the share read-only on the host side: the host file
	// server sees a read-only bind mount, so not even root in the guest can
	// write through it.
	ReadOnly bool `json:"read_only,omitempty"`
}

// MaxMounts bounds the host folders of one VM.
const MaxMounts = 8

// ParseMount reads the CLI form HOST_DIR:GUEST_DIR[:ro|:rw].
func ParseMount(s string) (Mount, error) {
	parts := strings.Split(s, ":")
	var m Mount
	switch {
	case len(parts) == 2:
	case len(parts) == 3 && (parts[2] == "ro" || parts[2] == "rw"):
		m.ReadOnly = parts[2] == "ro"
	default:
		return Mount{}, configErr("mounts", s, "want HOST_DIR:GUEST_DIR or HOST_DIR:GUEST_DIR:ro (no ':' inside the paths)")
	}
	m.HostPath, m.GuestPath = parts[0], parts[1]
	return m, validateMounts([]Mount{m})
}

// validateMounts checks the mounts' paths (not the host directories'
// existence: see checkMountSources).
func validateMounts(ms []Mount) error {
	if len(ms) > MaxMounts {
		return configErr("mounts", fmt.Sprint(len(ms)), fmt.Sprintf("at most %d host folders", MaxMounts))
	}
	seen := map[string]bool{}
	for _, m := range ms {
		desc := m.HostPath + ":" + m.GuestPath
		for _, p := range []string{m.HostPath, m.GuestPath} {
			if !strings.HasPrefix(p, "/") {
				return configErr("mounts", desc, "host and guest paths must be absolute")
			}
			if strings.ContainsAny(p, ",:\x00\n") {
				return configErr("mounts", desc, "paths may not contain ',', ':', NUL or newlines")
			}
		}
		g := path.Clean(m.GuestPath)
		for _, bad := range []string{"/", "/proc", "/sys", "/dev", "/run"} {
			if g == bad || (bad != "/" && strings.HasPrefix(g, bad+"/")) {
				return configErr("mounts", desc, "the guest path may not be / or under /proc, /sys, /dev or /run")
			}
		}
		if seen[g] {
			return configErr("mounts", desc, "two host folders at the same guest path")
		}
		seen[g] = true
	}
	return nil
}

// checkMountSources checks that every host directory exists and is a directory.
func checkMountSources(ms []Mount) error {
	for _, m := range ms {
		fi, err := os.Stat(m.HostPath)
		if err != nil {
			return configErr("mounts", m.HostPath+":"+m.GuestPath, fmt.Sprintf("host directory %s does not exist or cannot be read (%v)", m.HostPath, errNoPath(err)))
		}
		if !fi.IsDir() {
			return configErr("mounts", m.HostPath+":"+m.GuestPath, fmt.Sprintf("%s is not a directory", m.HostPath))
		}
	}
	return nil
}

func errNoPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// mountTag is the virtio-fs tag of a VM's i-th host folder.
func mountTag(i int) string { return fmt.Sprintf("smolvm%d", i) }

// sharesOf turns mounts into the backend's shares.
func sharesOf(ms []Mount) []vmm.Share {
	var out []vmm.Share
	for i, m := range ms {
		out = append(out, vmm.Share{Tag: mountTag(i), Source: filepath.Clean(m.HostPath), ReadOnly: m.ReadOnly})
	}
	return out
}

// mountFolders mounts a started VM's host folders in the guest.
func mountFolders(ctx context.Context, c *agent.Client, ms []Mount) error {
	for i, m := range ms {
		if err := c.Mkdir(ctx, m.GuestPath, 0o755, true); err != nil {
			return fmt.Errorf("mount %s: %w", m.GuestPath, err)
		}
		argv := []string{"mount", "-t", "virtiofs"}
		if m.ReadOnly {
			argv = append(argv, "-o", "ro")
		}
		argv = append(argv, mountTag(i), m.GuestPath)
		var out strings.Builder
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: argv, MaxOutputBytes: 4096, Timeout: 30 * time.Second}, nil, &out, &out)
		if err != nil {
			return fmt.Errorf("mount %s: %w", m.GuestPath, err)
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("mount %s in the guest: exit %d: %s", m.GuestPath, res.ExitCode, strings.TrimSpace(out.String()))
		}
	}
	return nil
}

// shares kills virtio-fs daemons left by VMs whose VMM is gone (a daemon
// QEMU never connected to would wait forever). A VM being started is
// skipped: its lock is held.
func (c *cleaner) shares(ctx context.Context) error {
	prefix := "--socket-path=" + filepath.Join(c.h.dir, "vms") + "/"
	live := map[string]bool{}
	for _, id := range c.h.vmmProcesses() {
		live[id] = true
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		i := strings.Index(string(b), prefix)
		if i < 0 {
			continue
		}
		id, _, _ := strings.Cut(string(b)[i+len(prefix):], "/")
		if ValidateVMID(id) != nil || live[id] {
			continue
		}
		unlock, err := c.h.tryLockVM(id)
		if err != nil {
			continue // a start is under way
		}
		c.note(fmt.Sprintf("virtiofsd %d (vm %s)", pid, id))
		if !c.co.DryRun {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		unlock()
	}
	return ctx.Err()
}
