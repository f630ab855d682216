package qemu

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// VMDirEnv names the environment variable that holds a QEMU process's VM
// runtime directory, so cleanup can tell which VM (and data directory) a
// process belongs to.
const VMDirEnv = "SMOLVM_VM_DIR"

// What a confined QEMU is given, and why this is enough:
//
//   - Disks and the console log: opened here and added to QEMU's fd sets
//     (-add-fd), named /dev/fdset/N in its options; QEMU's own open of
//     that name takes a copy of our descriptor with the same access mode.
//     A read-write disk gets a read-only descriptor too, for QEMU's
//     reopen of a disk. Nothing is chowned: the shared image cache stays
//     root's, and an isolated VM's disk copy stays 0600 root.
//   - Kernel and initrd: QEMU reads them by path only, so it is given
//     /proc/self/fd/N of a descriptor opened here. Opening that link
//     checks the file's own mode, not the directories above it (the data
//     directory is 0700 root), so a world-readable image file works as is;
//     a file that is not (a user's kernel_path 0600) is copied into a
//     memfd first.
//   - QMP and agent sockets: bound here (0600, in the VM's 0700 root
//     directory) and handed over listening (-chardev socket,fd=N), so
//     only root can connect and QEMU needs no access to the directory.
//   - TAP: attached here (TUNSETIFF needs CAP_NET_ADMIN) and handed over
//     (-netdev tap,fd=N); vhost-vsock likewise (vhostfd=N).
//
// Later features add files the same way (a snapshot's memory file or
// migration stream: -add-fd, or getfd over QMP).

// fdFiles are descriptors handed to QEMU: list[i] becomes fd 3+i.
type fdFiles struct {
	list []*os.File
}

// add appends f and returns the descriptor number QEMU sees it as.
func (f *fdFiles) add(file *os.File) int {
	f.list = append(f.list, file)
	return 2 + len(f.list)
}

// close closes this process's copies (idempotent).
func (f *fdFiles) close() {
	for _, file := range f.list {
		file.Close()
	}
	f.list = nil
}

// fdset ids of -add-fd.
const (
	consoleFDSet = 1
	diskFDSet    = 10 // disk i is in set diskFDSet+i
)

// openSources opens everything spec names and returns the options that
// hand it to QEMU as descriptors; files collects what to pass. On error,
// files holds what was opened so far (the caller closes it).
func openSources(spec vmm.Spec, files *fdFiles) (sources, error) {
	src := sources{paused: true}
	addFD := func(set int, f *os.File) {
		n := files.add(f)
		src.pre = append(src.pre, "-add-fd", fmt.Sprintf("fd=%d,set=%d", n, set))
	}
	// Sockets.
	for _, s := range []struct {
		path string
		opt  *string
	}{{controlPath(spec.Dir), &src.qmp}, {agentPath(spec.Dir), &src.agent}} {
		f, err := listenUnix(s.path)
		if err != nil {
			return src, err
		}
		*s.opt = fmt.Sprintf("fd=%d", files.add(f))
	}
	// Console log.
	if spec.ConsoleFile != nil {
		src.console = "" // QEMU's standard output (consoleChardev)
	} else if spec.ConsoleLog != "" {
		f, err := os.OpenFile(spec.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return src, fmt.Errorf("open console log: %w", err)
		}
		addFD(consoleFDSet, f)
		src.console = fmt.Sprintf("/dev/fdset/%d", consoleFDSet)
	} else {
		src.console = os.DevNull
	}
	// Disks.
	for i, d := range spec.Disks {
		set := diskFDSet + i
		flag := os.O_RDWR
		if d.ReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(d.Path, flag, 0)
		if err != nil {
			return src, fmt.Errorf("open disk %d: %w", i, err)
		}
		addFD(set, f)
		if !d.ReadOnly {
			ro, err := os.Open(d.Path)
			if err != nil {
				return src, fmt.Errorf("open disk %d: %w", i, err)
			}
			addFD(set, ro)
		}
		// No image locking: QEMU's OFD locks on the fd set's two open
		// file descriptions conflict with each other when a snapshot's
		// migration inactivates the disk and `cont` reactivates it
		// ("Failed to get write lock"). One VMM per disk is the VM lock's
		// job; shared-mode disks are read-only.
		src.disks = append(src.disks, fmt.Sprintf("/dev/fdset/%d,file.locking=off", set))
	}
	// Kernel and initrd.
	for _, k := range []struct {
		path string
		opt  *string
	}{{spec.Kernel, &src.kernel}, {spec.Initrd, &src.initrd}} {
		if k.path == "" {
			continue
		}
		f, err := openReadable(k.path)
		if err != nil {
			return src, err
		}
		*k.opt = fmt.Sprintf("/proc/self/fd/%d", files.add(f))
	}
	// TAP and vhost-vsock.
	if spec.NIC != nil {
		f, err := openTAP(spec.NIC.TAP)
		if err != nil {
			return src, err
		}
		src.netdev = fmt.Sprintf("fd=%d", files.add(f))
	}
	// virtio-fs: a connection to each share's daemon (its socket is in
	// the VM's root-only directory).
	for _, sh := range spec.Shares {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: shareSocket(spec.Dir, sh.Tag), Net: "unix"})
		if err != nil {
			return src, fmt.Errorf("connect to virtiofsd for %s: %w", sh.Source, err)
		}
		f, err := c.File()
		c.Close()
		if err != nil {
			return src, err
		}
		src.shares = append(src.shares, fmt.Sprintf("fd=%d", files.add(f)))
	}
	if spec.VsockCID != 0 {
		f, err := os.OpenFile(vhostVsockDevice, os.O_RDWR, 0)
		if err != nil {
			return src, fmt.Errorf("open %s: %w", vhostVsockDevice, err)
		}
		src.vhostfd = fmt.Sprintf(",vhostfd=%d", files.add(f))
	}
	return src, nil
}

// listenUnix binds a listening Unix socket at path with mode 0600 and
// returns its descriptor; the socket file stays when the descriptor closes.
func listenUnix(path string) (*os.File, error) {
	os.Remove(path)
	// Bound in the VM's 0700 directory, then made 0600.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return f, nil
}

// openReadable opens path for QEMU to read through /proc/self/fd/N: the
// file itself when anyone may read it, else a memfd copy of it.
func openReadable(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm()&0o004 != 0 {
		return f, nil
	}
	defer f.Close()
	fd, err := unix.MemfdCreate("smolvm-boot", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("copy %s for qemu: %w", path, err)
	}
	m := os.NewFile(uintptr(fd), "memfd:"+path)
	if _, err := io.Copy(m, f); err != nil {
		m.Close()
		return nil, fmt.Errorf("copy %s for qemu: %w", path, err)
	}
	return m, nil
}

// openTAP attaches to the existing TAP device name (made by the network
// package with IFF_NO_PI and IFF_VNET_HDR) and returns its queue's
// descriptor.
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("attach TAP %s: %w (needs CAP_NET_ADMIN)", name, err)
		}
		return nil, fmt.Errorf("attach TAP %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// sysProcAttr starts QEMU in its own session and, with id, as that user
// with no capabilities (a non-root uid keeps none across exec).
func sysProcAttr(id *vmm.Identity) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setsid: true}
	if id != nil {
		a.Credential = &syscall.Credential{Uid: id.UID, Gid: id.GID, Groups: append([]uint32{}, id.Groups...)}
	}
	return a
}

// canOpen reports (as an error saying why not) whether identity id may open
// the device at path for reading and writing by its mode, owner and group
// (QEMU opens /dev/kvm itself). A nil identity is this process.
func canOpen(path string, id *vmm.Identity) error {
	if id == nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return err
	}
	perm := st.Mode & 0o777
	ok := perm&0o006 == 0o006 ||
		(st.Uid == id.UID && perm&0o600 == 0o600) ||
		((st.Gid == id.GID || slices.Contains(id.Groups, st.Gid)) && perm&0o060 == 0o060)
	if !ok {
		return fmt.Errorf("%s (mode %#o, owner %d:%d) cannot be opened by the VMM's user (uid %d, gid %d, groups %v): give it to group kvm with mode 0660",
			path, perm, st.Uid, st.Gid, id.UID, id.GID, id.Groups)
	}
	return nil
}
