package initd

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/guest/kmod"
)

// syncBuffer is a console safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeSystem records reboot and kill calls.
type fakeSystem struct {
	mu      sync.Mutex
	reboots []int
	kills   []string
}

func (f *fakeSystem) reboot(cmd int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reboots = append(f.reboots, cmd)
	return nil
}

func (f *fakeSystem) kill(pid int, sig unix.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kills = append(f.kills, sig.String())
	return nil
}

func dryRoot(t *testing.T) string {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "proc/self"), 0o755)
	os.WriteFile(filepath.Join(root, "proc/uptime"), []byte("1.25 0.50\n"), 0o644)
	os.WriteFile(filepath.Join(root, "proc/self/mounts"),
		[]byte("rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n/dev/vda / ext4 rw 0 0\n"), 0o644)
	os.WriteFile(filepath.Join(root, kmod.OrderFile), []byte("/lib/modules/v/virtio_mmio.ko\n"), 0o644)
	return root
}

func TestBootDryRun(t *testing.T) {
	var console syncBuffer
	fake := &fakeSystem{}
	in := New(Options{
		Version: "test", Console: &console, DryRun: true, Root: dryRoot(t),
		Cmdline: "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 " +
			bootparams.Params{ID: "vm1", Addr: netip.MustParsePrefix("172.16.0.2/24")}.Format(),
		Reboot: fake.reboot, Kill: fake.kill,
	})
	in.Boot()
	ops := strings.Join(in.Mounts().Ops, "\n")
	for _, want := range []string{
		"mount proc /proc proc",
		"/lib/modules/v/virtio_mmio.ko device=512@0xfeb00e00:12",
		"wait /dev/vda",
		"mount /dev/vda /newroot ext4",
		"move /newroot /",
		"hostname vm1",
		"addr eth0 172.16.0.2/24",
	} {
		if !strings.Contains(ops, want) {
			t.Errorf("ops lack %q:\n%s", want, ops)
		}
	}
	// Order matters: modules before the root disk, root before hostname.
	if strings.Index(ops, "virtio_mmio") > strings.Index(ops, "wait /dev/vda") ||
		strings.Index(ops, "chroot") > strings.Index(ops, "hostname") {
		t.Errorf("steps out of order:\n%s", ops)
	}
	out := console.String()
	if !strings.Contains(out, bootparams.ReadyMarker+" uptime=1.25s\n") {
		t.Errorf("console lacks the ready marker:\n%s", out)
	}
	if !strings.Contains(out, "booted: modules=1 root=/dev/vda (ext4) hostname=vm1 network=172.16.0.2/24") {
		t.Errorf("console lacks the boot summary:\n%s", out)
	}
}

func TestPowerOffOnSignal(t *testing.T) {
	var console syncBuffer
	fake := &fakeSystem{}
	in := New(Options{Console: &console, DryRun: true, Root: dryRoot(t), Cmdline: "x", Reboot: fake.reboot, Kill: fake.kill})
	done := make(chan error, 1)
	go func() { done <- in.Run(context.Background()) }()
	// Wait for the ready marker, then send ourselves what busybox's
	// poweroff sends PID 1.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(console.String(), bootparams.ReadyMarker) {
		if time.Now().After(deadline) {
			t.Fatalf("never ready:\n%s", console.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := unix.Kill(os.Getpid(), unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after power-off")
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.reboots) != 1 || fake.reboots[0] != unix.LINUX_REBOOT_CMD_POWER_OFF {
		t.Errorf("reboot calls %#x, want one POWER_OFF", fake.reboots)
	}
	if strings.Join(fake.kills, ",") != "terminated,killed" {
		t.Errorf("kills %v, want SIGTERM then SIGKILL to everyone", fake.kills)
	}
	ops := strings.Join(in.Mounts().Ops, "\n")
	if !strings.Contains(ops, "unmount /") || strings.Contains(ops, "unmount /proc") {
		t.Errorf("power-off unmounts:\n%s", ops)
	}
	// A second request does nothing.
	in.PowerOff("again")
	if len(fake.reboots) != 1 {
		t.Error("second PowerOff rebooted again")
	}
}

func TestStepRecoversPanic(t *testing.T) {
	var console syncBuffer
	in := New(Options{Console: &console, DryRun: true})
	if in.step("explode", func() error { panic("boom") }) {
		t.Fatal("panicking step reported success")
	}
	if !strings.Contains(console.String(), "explode: panic: boom") {
		t.Fatalf("panic not logged: %q", console.String())
	}
}

func TestFatalPowersOff(t *testing.T) {
	var console syncBuffer
	fake := &fakeSystem{}
	in := New(Options{Console: &console, DryRun: true, Root: dryRoot(t), Reboot: fake.reboot, Kill: fake.kill})
	in.Fatal("init returned")
	if len(fake.reboots) != 1 {
		t.Fatalf("Fatal did not power off: %v", fake.reboots)
	}
}

func TestLinkVirtioPorts(t *testing.T) {
	root := t.TempDir()
	in := New(Options{Root: root, DryRun: true})
	for port, name := range map[string]string{"vport0p1": "org.smolvm.agent\n", "vport0p2": ""} {
		d := filepath.Join(root, "sys/class/virtio-ports", port)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "name"), []byte(name), 0o644)
	}
	in.LinkVirtioPortsOnce()
	in.LinkVirtioPortsOnce() // idempotent
	l, err := os.Readlink(filepath.Join(root, "dev/virtio-ports/org.smolvm.agent"))
	if err != nil || l != "../vport0p1" {
		t.Fatalf("link %q %v", l, err)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "dev/virtio-ports"))
	if len(entries) != 1 {
		t.Errorf("links: %v", entries)
	}
}

func TestUserProcessesLeft(t *testing.T) {
	proc := t.TempDir()
	write := func(pid, stat string) {
		os.MkdirAll(filepath.Join(proc, pid), 0o755)
		os.WriteFile(filepath.Join(proc, pid, "stat"), []byte(stat), 0o644)
	}
	write("1", "1 (init) S 0 1 1 0 -1 4194560 0 0")
	write("2", "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0") // PF_KTHREAD set
	write("17", "17 (sh (weird) name) Z 1 17 17 0 -1 4194560 0 0")
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)
	if userProcessesLeft(proc) {
		t.Fatal("init, a kernel thread and a zombie count as user processes")
	}
	write("42", "42 (sleep) S 1 42 42 0 -1 4194560 0 0")
	if !userProcessesLeft(proc) {
		t.Fatal("a sleeping user process is not seen")
	}
}
