package network

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
)

// childEnv marks the test binary re-executed inside its own network
// namespace. Only there do the privileged tests run: every TAP, address,
// route, sysctl and nftables rule they make lives and dies with that
// namespace, never the host's.
const childEnv = "SMOLVM_NETWORK_TEST_NETNS"

// privileged reports whether this process runs in a private, fresh network
// namespace where the privileged tests may run.
var privileged bool

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "" && os.Geteuid() == 0 {
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
			os.Exit(0)
		case errors.As(err, &exit):
			os.Exit(exit.ExitCode())
		}
		// The namespace could not be made (no CAP_SYS_ADMIN?): run the
		// unprivileged tests here, in the host's namespace.
		fmt.Fprintf(os.Stderr, "network tests: cannot create a network namespace (%v): privileged tests skip\n", err)
	}
	if os.Getenv(childEnv) != "" {
		if err := enterFreshNetNS(); err != nil {
			fmt.Fprintf(os.Stderr, "network tests: %v: privileged tests skip\n", err)
		} else {
			privileged = true
		}
	}
	code := m.Run()
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
	os.Exit(code)
}

// tmpDir holds the test lock file.
var tmpDir string

// enterFreshNetNS checks that this namespace holds nothing but a loopback
// link (so it cannot be the host's), brings lo up, and points the lock file
// into a temporary directory.
func enterFreshNetNS() error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		return fmt.Errorf("namespace is not fresh: it has %d links", len(links))
	}
	if err := netlink.LinkSetUp(links[0]); err != nil {
		return err
	}
	tmpDir, err = os.MkdirTemp("", "smolvm-network-test")
	if err != nil {
		return err
	}
	lockDir = filepath.Join(tmpDir, "lock")
	return nil
}

// needNetNS skips t unless it runs in the private test namespace.
func needNetNS(t *testing.T) {
	t.Helper()
	if !privileged {
		t.Skip("needs root and a private network namespace (run the tests as root)")
	}
}
