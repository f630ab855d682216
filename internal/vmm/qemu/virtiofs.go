package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// virtiofsdPaths are where Debian's packages put virtiofsd.
var virtiofsdPaths = []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// virtiofsd finds the virtio-fs daemon: $SMOLVM_VIRTIOFSD, then Debian's
// paths, then PATH.
func virtiofsd() (string, error) {
	if p := os.Getenv("SMOLVM_VIRTIOFSD"); p != "" {
		return p, nil
	}
	for _, p := range virtiofsdPaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("host folders need virtiofsd (apt-get install qemu-system-common or virtiofsd): %w", vmm.ErrUnavailable)
}

// shareSocket is the vhost-user socket of a VM's share.
func shareSocket(dir, tag string) string { return filepath.Join(dir, "fs-"+tag+".sock") }

// roBindScript runs virtiofsd in a private mount namespace where the shared
// directory is a bind mount of itself, remounted nosuid and nodev, and
// read-only for a read-only share: the host kernel refuses writes, whatever
// the guest asks of the daemon. Arguments: the directory, the mount
// options, then the daemon's argv.
const roBindScript = `set -e
src=$1; opts=$2; shift 2
mount --make-rprivate /
mount --bind "$src" "$src"
mount -o "remount,bind,$opts" "$src"
exec "$@"`

// startShares starts one virtiofsd per share and waits for their sockets.
// It returns a function that kills them (a daemon also exits by itself
// when QEMU disconnects).
func startShares(spec vmm.Spec) (stop func(), err error) {
	var procs []*os.Process
	stop = func() {
		for _, p := range procs {
			p.Kill()
		}
	}
	if len(spec.Shares) == 0 {
		return stop, nil
	}
	bin, err := virtiofsd()
	if err != nil {
		return stop, err
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	for _, sh := range spec.Shares {
		sock := shareSocket(spec.Dir, sh.Tag)
		if len(sock) > maxSocketPath {
			return stop, fmt.Errorf("runtime dir %s is too long for a Unix socket path", spec.Dir)
		}
		os.Remove(sock)
		opts := "nosuid,nodev"
		if sh.ReadOnly {
			opts += ",ro"
		}
		logf, err := os.OpenFile(filepath.Join(spec.Dir, "fs-"+sh.Tag+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return stop, err
		}
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", roBindScript, "sh",
			sh.Source, opts, bin, "--socket-path="+sock, "-o", "source="+sh.Source, "-o", "cache=auto",
			"-o", "sandbox=namespace", "-o", "no_xattr", "-o", "log_level=err", "-o", "modcaps=-mknod")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = cmd.Start()
		logf.Close()
		if err != nil {
			return stop, fmt.Errorf("start virtiofsd for %s: %w", sh.Source, err)
		}
		procs = append(procs, cmd.Process)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if err := waitSocket(sock, exited); err != nil {
			b, _ := os.ReadFile(filepath.Join(spec.Dir, "fs-"+sh.Tag+".log"))
			return stop, fmt.Errorf("virtiofsd for %s: %w: %s", sh.Source, err, tail(b, 512))
		}
	}
	return stop, nil
}

// waitSocket waits for a daemon's socket to appear.
func waitSocket(sock string, exited <-chan error) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited before listening (%v)", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return errors.New("did not listen within 10s")
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// shareArgs are QEMU's arguments for the shares: guest memory in a shared
// memfd (vhost-user needs it) and one vhost-user-fs device per share.
func shareArgs(spec vmm.Spec, dev func(string) string) []string {
	if len(spec.Shares) == 0 {
		return nil
	}
	a := []string{
		"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", spec.MemoryMiB),
		"-machine", "memory-backend=mem",
	}
	if dev("x") == "x-device" {
		// libvhost-user serves only modern virtio; QEMU's virtio-mmio
		// transport is legacy unless told otherwise.
		a = append(a, "-global", "virtio-mmio.force-legacy=false")
	}
	for i, sh := range spec.Shares {
		a = append(a,
			"-chardev", fmt.Sprintf("socket,id=fs%d,path=%s", i, shareSocket(spec.Dir, sh.Tag)),
			"-device", fmt.Sprintf("%s,chardev=fs%d,tag=%s", dev("vhost-user-fs"), i, sh.Tag))
	}
	return a
}

// killShares kills the virtio-fs daemons of the VM whose runtime directory
// is dir. A daemon ends by itself when QEMU disconnects; one that QEMU never
// reached (QEMU died at launch) would wait forever.
func killShares(dir string) {
	if dir == "" || dir == "." {
		return
	}
	marker := []byte("--socket-path=" + filepath.Join(dir, "fs-"))
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmd, marker) {
			continue
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
}
