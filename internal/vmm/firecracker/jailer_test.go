package firecracker

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"testing"
)

// TestJailer launches through a fake jailer: its command line, the files
// placed in the chroot, and the chroot-relative paths sent to the API.
func TestJailer(t *testing.T) {
	e := newEnv(t)
	e.spec.ID = "vm_j" // not a valid jailer id: becomes vm-j-X<hash>
	jid := fcID("vm_j")
	fc := fake(t, e.dir, "firecracker", "firecracker", map[string]string{envRecord: e.record, envArgs: e.args + ".fc"})
	base := filepath.Join(e.dir, "jail")
	uid := os.Getuid()
	if os.Geteuid() == 0 {
		uid = 4321 // root gives writable disks to the jail's user
	}
	b := &Backend{Binary: fc, Jailer: &JailerConfig{
		Binary:        fake(t, e.dir, "jailer", "jailer", map[string]string{envArgs: e.args}),
		UID:           uid,
		GID:           uid,
		ChrootBase:    base,
		CgroupVersion: 2,
		Cgroups:       []string{"cpuset.cpus=0"},
		NetNS:         "/var/run/netns/smol",
	}}
	ctx := testCtx(t)
	inst, err := b.Launch(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	killAtEnd(t, b, inst)
	if err := b.WaitReady(ctx, inst); err != nil {
		t.Fatal(err)
	}

	jail := filepath.Join(base, "firecracker", jid)
	root := filepath.Join(jail, "root")
	u := strconv.Itoa(uid)
	wantArgs := []string{"--id", jid, "--exec-file", fc, "--uid", u, "--gid", u, "--chroot-base-dir", base,
		"--cgroup-version", "2", "--cgroup", "cpuset.cpus=0", "--netns", "/var/run/netns/smol", "--", "--api-sock", "/fc.sock"}
	if got := readArgs(t, e.args); !reflect.DeepEqual(got, wantArgs) {
		t.Errorf("jailer argv:\n got  %q\n want %q", got, wantArgs)
	}
	if got, want := readArgs(t, e.args+".fc"), []string{"--id=" + jid, "--start-time-us=0", "--api-sock", filepath.Join(root, "fc.sock")}; !reflect.DeepEqual(got, want) {
		t.Errorf("firecracker argv under the fake jailer = %q, want %q", got, want)
	}

	// Kernel, initrd and disks are hard links in the chroot.
	for name, src := range map[string]string{"vmlinux": e.spec.Kernel, "initrd": e.spec.Initrd,
		"disk0": e.spec.Disks[0].Path, "disk1": e.spec.Disks[1].Path} {
		a, err1 := os.Stat(filepath.Join(root, name))
		b, err2 := os.Stat(src)
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("%s in the chroot is not a hard link of %s: %v %v", name, src, err1, err2)
		}
	}
	if os.Geteuid() == 0 {
		st, _ := os.Stat(filepath.Join(root, "disk0"))
		if got := st.Sys().(*syscall.Stat_t).Uid; got != uint32(uid) {
			t.Errorf("writable disk owned by %d, want %d", got, uid)
		}
	}
	// The runtime directory links to the jailed sockets and log.
	for _, n := range []string{"fc.sock", "agent.sock", "firecracker.log"} {
		if dst, err := os.Readlink(filepath.Join(e.spec.Dir, n)); err != nil || dst != filepath.Join(root, n) {
			t.Errorf("%s -> %q, %v; want a link into the chroot", n, dst, err)
		}
	}
	if c, err := net.Dial("unix", inst.Agent); err != nil {
		t.Errorf("agent socket through the link: %v", err)
	} else {
		c.Close()
	}

	checkCalls(t, e.calls(t), []want{
		{"PUT", "/logger", obj{"log_path": "/firecracker.log", "level": "Warning", "show_level": true}},
		{"PUT", "/metrics", obj{"metrics_path": "/firecracker.metrics"}},
		{"PUT", "/machine-config", obj{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}},
		{"PUT", "/boot-source", obj{"kernel_image_path": "/vmlinux", "initrd_path": "/initrd",
			"boot_args": "console=ttyS0 reboot=k panic=1 pci=off quiet smolvm.id=vm-1 quiet"}},
		{"PUT", "/drives/rootfs", obj{"drive_id": "rootfs", "path_on_host": "/disk0", "is_root_device": true, "is_read_only": false}},
		{"PUT", "/drives/drive1", obj{"drive_id": "drive1", "path_on_host": "/disk1", "is_root_device": false, "is_read_only": true}},
		{"PUT", "/network-interfaces/eth0", obj{"iface_id": "eth0", "host_dev_name": "smol3", "guest_mac": "06:00:ac:10:00:02"}},
		{"PUT", "/vsock", obj{"guest_cid": 3, "uds_path": "/agent.sock"}},
		{"PUT", "/actions", obj{"action_type": "InstanceStart"}},
		{"GET", "/", nil},
	})

	if err := b.Stop(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveJail(e.spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(jail); !os.IsNotExist(err) {
		t.Errorf("jail left after RemoveJail: %v", err)
	}
	// The original files survive.
	for _, p := range []string{e.spec.Kernel, e.spec.Disks[0].Path} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}

// TestJailerFailureRemovesJail: when firecracker fails under the jailer,
// Launch removes the jail it made.
func TestJailerFailureRemovesJail(t *testing.T) {
	e := newEnv(t)
	fc := e.backend(t, "fail", map[string]string{envMsg: "jailed firecracker failed"}).Binary
	base := filepath.Join(e.dir, "jail")
	b := &Backend{Binary: fc, Jailer: &JailerConfig{
		Binary: fake(t, e.dir, "jailer", "jailer", nil), UID: os.Getuid(), GID: os.Getgid(), ChrootBase: base,
	}}
	_, err := b.Launch(testCtx(t), e.spec)
	if err == nil || !errorContains(err, "jailed firecracker failed") {
		t.Fatalf("Launch = %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker", "vm-1")); !os.IsNotExist(err) {
		t.Errorf("jail left after a failed launch: %v", err)
	}
}

// TestJailerExecName: the jailer only runs exec files named *firecracker*.
func TestJailerExecName(t *testing.T) {
	e := newEnv(t)
	fc := fake(t, e.dir, "fc", "firecracker", nil)
	b := &Backend{Binary: fc, Jailer: &JailerConfig{Binary: fake(t, e.dir, "jailer", "jailer", nil), ChrootBase: filepath.Join(e.dir, "jail")}}
	if _, err := b.Launch(testCtx(t), e.spec); err == nil || !errorContains(err, `contains "firecracker"`) {
		t.Errorf("Launch = %v", err)
	}
}
