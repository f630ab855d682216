package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// TestLaunchSources: Launch hands QEMU every file as a descriptor. The
// argv names no path of the VM, the descriptor numbers match ExtraFiles'
// order, the sockets are bound 0600, a read-write disk gets a read-only
// twin in its fd set, and a kernel nobody else may read is copied into a
// memfd.
func TestLaunchSources(t *testing.T) {
	dir := t.TempDir()
	run := filepath.Join(dir, "vms", "web")
	os.MkdirAll(run, 0o700)
	for name, mode := range map[string]os.FileMode{"vmlinuz": 0o600, "initrd.img": 0o644, "disk.ext4": 0o600, "ro.img": 0o644} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("data of "+name), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(dir, name), mode)
	}
	spec := vmm.Spec{
		ID: "web", Dir: run, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"), Cmdline: "smolvm.id=web",
		VCPUs: 1, MemoryMiB: 256, Disks: []vmm.Disk{{Path: filepath.Join(dir, "disk.ext4")}, {Path: filepath.Join(dir, "ro.img"), ReadOnly: true}},
		ConsoleLog: filepath.Join(dir, "web.log"), DiskBPS: 8 << 20, DiskIOPS: 500,
	}
	files := &fdFiles{}
	defer files.close()
	src, err := openSources(spec, files)
	if err != nil {
		t.Fatal(err)
	}
	argv := args(spec, vmm.AccelTCG, 0, src)
	line := strings.Join(argv, " ")
	if strings.Contains(line, dir) {
		t.Errorf("argv names a path of the VM:\n%s", line)
	}
	fd := func(n int) *os.File { return files.list[n-3] }
	// The order openSources adds them in: qmp, agent, console, disk0 rw,
	// disk0 ro, disk1 ro, kernel, initrd.
	for _, want := range []string{
		"-add-fd fd=5,set=1", "-add-fd fd=6,set=10", "-add-fd fd=7,set=10", "-add-fd fd=8,set=11",
		"-S ", "-sandbox " + SandboxOption,
		"-chardev socket,id=qmp,fd=3,server=on,wait=off", "-chardev socket,id=agent,fd=4,server=on,wait=off",
		"-chardev file,id=console,path=/dev/fdset/1", "-kernel /proc/self/fd/9", "-initrd /proc/self/fd/10",
		"id=disk0,file=/dev/fdset/10,file.locking=off,format=raw,if=none,cache=unsafe,discard=unmap,throttling.bps-total=8388608,throttling.iops-total=500",
		"id=disk1,file=/dev/fdset/11,file.locking=off,format=raw,if=none,cache=unsafe,discard=unmap,readonly=on,throttling.bps-total=8388608,throttling.iops-total=500",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("argv lacks %q:\n%s", want, line)
		}
	}
	if len(files.list) != 8 {
		t.Fatalf("%d descriptors, want 8", len(files.list))
	}
	for _, c := range []struct {
		n    int
		path string
		mode int
	}{{5, spec.ConsoleLog, unix.O_WRONLY}, {6, spec.Disks[0].Path, unix.O_RDWR}, {7, spec.Disks[0].Path, unix.O_RDONLY}, {8, spec.Disks[1].Path, unix.O_RDONLY}, {10, spec.Initrd, unix.O_RDONLY}} {
		fl, err := unix.FcntlInt(fd(c.n).Fd(), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_ACCMODE != c.mode {
			t.Errorf("fd %d: flags %#o, %v; want access mode %#o", c.n, fl, err, c.mode)
		}
		a, _ := fd(c.n).Stat()
		b, _ := os.Stat(c.path)
		if !os.SameFile(a, b) {
			t.Errorf("fd %d is not %s", c.n, c.path)
		}
	}
	// The 0600 kernel is a memfd copy with its bytes.
	if target, _ := os.Readlink("/proc/self/fd/" + itoa(int(fd(9).Fd()))); !strings.HasPrefix(target, "/memfd:") {
		t.Errorf("0600 kernel passed as %s, want a memfd", target)
	}
	got := make([]byte, 64)
	n, _ := fd(9).ReadAt(got, 0)
	if string(got[:n]) != "data of vmlinuz" {
		t.Errorf("memfd kernel holds %q", got[:n])
	}
	// Sockets: bound, listening, 0600.
	for i, p := range []string{controlPath(run), agentPath(run)} {
		st, err := os.Stat(p)
		if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
			t.Errorf("socket %s: %v %v", p, st.Mode(), err)
		}
		if v, err := unix.GetsockoptInt(int(fd(3+i).Fd()), unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
			t.Errorf("fd %d is not a listening socket: %d %v", 3+i, v, err)
		}
	}
	files.close()
	// The socket files outlive this process's copies (QEMU holds its own).
	if _, err := os.Stat(controlPath(run)); err != nil {
		t.Errorf("socket removed on close: %v", err)
	}
}

// TestLaunchSourcesMissingFile: a disk that cannot be opened fails with
// its name before anything starts.
func TestLaunchSourcesMissingFile(t *testing.T) {
	dir := t.TempDir()
	spec := vmm.Spec{ID: "x", Dir: dir, Kernel: "/nonexistent/k", Disks: []vmm.Disk{{Path: "/nonexistent/disk"}}}
	files := &fdFiles{}
	defer files.close()
	if _, err := openSources(spec, files); err == nil || !strings.Contains(err.Error(), "disk 0") {
		t.Errorf("err = %v", err)
	}
}

// TestNetdevFD: the TAP is handed over as a descriptor (-netdev tap,fd=N),
// never by name; the vhost-vsock device gets its descriptor too.
func TestNetdevFD(t *testing.T) {
	spec := vmm.Spec{ID: "n", Dir: "/d", Kernel: "/k", VCPUs: 1, MemoryMiB: 128, NIC: &vmm.NIC{TAP: "smol0", MAC: "AA:FC:00:00:00:01"}, VsockCID: 5}
	line := strings.Join(args(spec, vmm.AccelTCG, 0, sources{netdev: "fd=12", vhostfd: ",vhostfd=13", qmp: "fd=3", agent: "fd=4"}), " ")
	for _, want := range []string{"-netdev tap,id=net0,fd=12 ", "vhost-vsock-device,guest-cid=5,vhostfd=13"} {
		if !strings.Contains(line, want) {
			t.Errorf("argv lacks %q:\n%s", want, line)
		}
	}
	if strings.Contains(line, "ifname=") {
		t.Errorf("TAP named in argv:\n%s", line)
	}
}

// TestSysProcAttr: with an identity QEMU gets that uid, gid and groups (a
// non-root uid keeps no capabilities across exec), in its own session.
func TestSysProcAttr(t *testing.T) {
	a := sysProcAttr(&vmm.Identity{UID: 999, GID: 995, Groups: []uint32{105}})
	if !a.Setsid || a.Credential == nil || a.Credential.Uid != 999 || a.Credential.Gid != 995 || !slices.Equal(a.Credential.Groups, []uint32{105}) {
		t.Errorf("attr = %+v cred %+v", a, a.Credential)
	}
	if a := sysProcAttr(nil); a.Credential != nil || !a.Setsid {
		t.Errorf("attr without identity = %+v", a)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestCanOpen(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "kvm")
	os.WriteFile(dev, nil, 0o600)
	os.Chown(dev, 0, 105)
	id := &vmm.Identity{UID: 999, GID: 995}
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	for _, tc := range []struct {
		mode   os.FileMode
		groups []uint32
		ok     bool
	}{{0o600, nil, false}, {0o660, nil, false}, {0o660, []uint32{105}, true}, {0o666, nil, true}} {
		os.Chmod(dev, tc.mode)
		id.Groups = tc.groups
		if err := canOpen(dev, id); (err == nil) != tc.ok {
			t.Errorf("mode %o groups %v: %v, want ok=%v", tc.mode, tc.groups, err, tc.ok)
		}
	}
	if err := canOpen(dev, nil); err != nil {
		t.Errorf("this process: %v", err)
	}
}
