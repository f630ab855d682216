package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

// bootTimeout bounds a TCG boot (CI machines are slow and shared).
const bootTimeout = 60 * time.Second

// bootCmdline is the kernel command line the boot tests use.
func bootCmdline(id string) string {
	w := []string{"console=ttyS0", "panic=-1", "quiet"}
	if khz := tscKHz(); khz > 0 {
		// Under TCG the kernel may hang calibrating the TSC; see DESIGN.md.
		w = append(w, fmt.Sprintf("tsc_early_khz=%d", khz))
	}
	w = append(w, bootparams.Params{ID: id}.Format())
	return strings.Join(w, " ")
}

// bootResult is one boot to the ready marker.
type bootResult struct {
	Wall    time.Duration // QEMU start to marker on the console
	Uptime  string        // the guest's uptime in the marker
	Console string
}

var readyRE = regexp.MustCompile(bootparams.ReadyMarker + ` uptime=([0-9.]+)s`)

// bootQEMU boots kernel+initrd with a private copy of rootfs on microvm
// under TCG, with no network device, waits for the ready marker, then
// kills QEMU (only the process it started) and waits for it.
func bootQEMU(t testing.TB, kernel, initrd, rootfs string) bootResult {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "root.ext4")
	if err := CloneDisk(context.Background(), rootfs, disk, 0); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "console.log")
	args := []string{
		"-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", bootCmdline("test"),
		"-serial", "file:" + logPath,
		"-drive", "id=root,file=" + disk + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + filepath.Join(dir, "agent.sock") + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=org.smolvm.agent",
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout+10*time.Second)
	defer cancel()
	// The VM runs in a network namespace of its own (unshare execs QEMU in
	// it; it disappears when QEMU exits), though it has no network device.
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--net", "--", "qemu-system-x86_64"}, args...)...)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	deadline := time.After(bootTimeout)
	for {
		log, _ := os.ReadFile(logPath)
		if m := readyRE.FindSubmatch(log); m != nil {
			return bootResult{Wall: time.Since(start), Uptime: string(m[1]), Console: string(log)}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("QEMU exited before the ready marker (%v): %s\nconsole:\n%s", err, qout.String(), tailLines(string(log), 40))
		case <-deadline:
			t.Fatalf("no %s within %v; console tail:\n%s", bootparams.ReadyMarker, bootTimeout, tailLines(string(log), 40))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func TestBootMinimal(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	img := buildMinimal(t)
	r := bootQEMU(t, img.Kernel, img.Initrd, img.Rootfs)
	t.Logf("ready after %v wall, guest uptime %ss", r.Wall.Round(time.Millisecond), r.Uptime)
	t.Logf("console:\n%s", tailLines(r.Console, 30))
	if !regexp.MustCompile(`booted: modules=[0-9]+ root=/dev/vda \(ext4\) hostname=test network=none`).MatchString(r.Console) {
		t.Errorf("console lacks the boot summary (modules, root disk, hostname)")
	}
	for _, bad := range []string{"smolvm-init: load modules", "smolvm-init: mount root", "smolvm-init: switch root", "panic"} {
		if strings.Contains(r.Console, bad) {
			t.Errorf("console shows %q", bad)
		}
	}
}

// TestCompressionBootTimes boots the minimal image with each initramfs
// compression, alternating, and logs the medians. It only runs with
// SMOLVM_TEST_COMPRESSION=1 (it is a measurement, not a check).
func TestCompressionBootTimes(t *testing.T) {
	if os.Getenv("SMOLVM_TEST_COMPRESSION") != "1" {
		t.Skip("set SMOLVM_TEST_COMPRESSION=1 to measure")
	}
	base := buildMinimal(t)
	agent := buildAgent(t)
	comps := []Compression{CompressNone, CompressGzip, CompressLZ4}
	imgs := map[Compression]*Image{}
	for _, c := range comps {
		img, err := Build(context.Background(), BuildOptions{Name: NameMinimal, CacheDir: privateCache(t), AgentPath: agent, Compression: c})
		if err != nil {
			t.Fatal(err)
		}
		imgs[c] = img
	}
	times := map[Compression][]float64{}
	for range 5 {
		for _, c := range comps {
			r := bootQEMU(t, base.Kernel, imgs[c].Initrd, base.Rootfs)
			times[c] = append(times[c], r.Wall.Seconds())
		}
	}
	for _, c := range comps {
		st, _ := os.Stat(imgs[c].Initrd)
		v := times[c]
		slices.Sort(v)
		t.Logf("%-5s initrd %8d bytes  boot-to-ready median %.2fs  (all %.2f)", c, st.Size(), v[len(v)/2], v)
	}
}
