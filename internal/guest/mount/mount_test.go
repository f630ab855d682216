package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDryRunSequence(t *testing.T) {
	m := &Mounter{Root: t.TempDir(), DryRun: true}
	if err := m.MountEarly(); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitDevice("/dev/vda", 0); err != nil {
		t.Fatal(err)
	}
	if err := m.MountRoot("/dev/vda", "ext4", "/newroot"); err != nil {
		t.Fatal(err)
	}
	if err := m.SwitchRoot("/newroot"); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mount proc /proc proc ",
		"mount sysfs /sys sysfs ",
		"mount devtmpfs /dev devtmpfs mode=0755",
		"mount devpts /dev/pts devpts gid=5,mode=620,ptmxmode=666",
		"mount tmpfs /dev/shm tmpfs mode=1777",
		"mount tmpfs /run tmpfs mode=0755",
		"wait /dev/vda",
		"mount /dev/vda /newroot ext4 ",
		"move /dev /newroot/dev",
		"move /proc /newroot/proc",
		"move /sys /newroot/sys",
		"move /run /newroot/run",
		"chdir /newroot",
		"clean initramfs",
		"move /newroot /",
		"chroot .",
	}
	if !slices.Equal(m.Ops, want) {
		t.Fatalf("ops:\n%q\nwant:\n%q", m.Ops, want)
	}
	if entries, _ := os.ReadDir(m.Root); len(entries) != 0 {
		t.Errorf("dry run touched the root: %v", entries)
	}
}

func TestWaitDeviceTimeout(t *testing.T) {
	m := &Mounter{Root: t.TempDir()}
	if err := m.WaitDevice("/dev/vda", 30e6); err == nil {
		t.Fatal("missing device did not time out")
	}
	os.MkdirAll(filepath.Join(m.Root, "dev"), 0o755)
	os.WriteFile(filepath.Join(m.Root, "dev/vda"), nil, 0o644)
	if err := m.WaitDevice("/dev/vda", 30e6); err != nil {
		t.Fatal(err)
	}
}

// TestSwitchRootReal runs the real switch-root under Root in a private
// mount namespace (root only): a tmpfs plays the initramfs, another the
// root disk; afterwards the root disk is at Root and the initramfs files
// are gone.
func TestSwitchRootReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private mount namespace")
	}
	root := t.TempDir()
	errc := make(chan error, 1)
	go func() {
		// This thread gets its own mount namespace and is never returned
		// to the scheduler (no UnlockOSThread): it exits with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
				return err
			}
			if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
				return err
			}
			if err := unix.Mount("tmpfs", root, "tmpfs", 0, ""); err != nil {
				return err
			}
			os.WriteFile(filepath.Join(root, "init"), []byte("agent"), 0o755)
			os.MkdirAll(filepath.Join(root, "lib/modules"), 0o755)
			old, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
			if err != nil {
				return err
			}
			defer unix.Close(old)
			m := &Mounter{Root: root}
			if err := m.Mount("tmpfs", "/run", "tmpfs", 0, "", 0o755); err != nil {
				return err
			}
			os.WriteFile(filepath.Join(root, "run/marker"), nil, 0o644)
			if err := m.MountRoot("tmpfs", "tmpfs", "/newroot"); err != nil {
				return err
			}
			os.WriteFile(filepath.Join(root, "newroot/etc-hostname"), []byte("disk"), 0o644)
			if err := m.SwitchRoot("/newroot"); err != nil {
				return err
			}
			if b, err := os.ReadFile(filepath.Join(root, "etc-hostname")); err != nil || string(b) != "disk" {
				return fmt.Errorf("root disk not at Root: %q %v", b, err)
			}
			if _, err := os.Stat(filepath.Join(root, "run/marker")); err != nil {
				return fmt.Errorf("/run not moved into the new root: %v", err)
			}
			var st unix.Stat_t
			if err := unix.Fstatat(old, "init", &st, 0); err == nil {
				return fmt.Errorf("initramfs /init not deleted")
			}
			if err := unix.Fstatat(old, "lib", &st, 0); err == nil {
				return fmt.Errorf("initramfs /lib not deleted")
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
