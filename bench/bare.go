package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmm/qemu"
)

// bareTAP is the TAP device of the bare QEMU runs, made in the benchmark's
// namespace so the bare guest has the same devices as SmolVM's.
const bareTAP = "benchtap0"

// bareRun is one bare QEMU boot.
type bareRun struct {
	Ready       time.Duration // launch until the ready marker
	GuestUptime time.Duration
	Mem         memory // after settling, when asked for
}

// imagePaths returns the kernel, initrd and root disk of the named image.
func (b *bench) imagePaths(ctx context.Context, name string) (smolvm.ImageInfo, error) {
	imgs, err := b.h.Images(ctx)
	if err != nil {
		return smolvm.ImageInfo{}, err
	}
	for _, img := range imgs {
		if img.Name == name {
			return img, nil
		}
	}
	return smolvm.ImageInfo{}, fmt.Errorf("image %s is not built", name)
}

// setupBareTAP makes the bare runs' TAP device (inside the namespace).
func setupBareTAP() error {
	for _, args := range [][]string{{"tuntap", "add", "dev", bareTAP, "mode", "tap"}, {"link", "set", bareTAP, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func removeBareTAP() { exec.Command("ip", "link", "del", bareTAP).Run() }

// bareSpec is the launch spec SmolVM would build for a networked VM of img
// with the benchmark's memory: same kernel, initrd, command line keys, a
// private copy of the disk, a NIC on a TAP, the console to a file.
func (b *bench) bareSpec(img smolvm.ImageInfo, dir string) vmm.Spec {
	bp := bootparams.Params{
		ID:      "bare",
		Addr:    netip.MustParsePrefix("172.16.254.2/24"),
		Gateway: netip.MustParseAddr("172.16.254.1"),
		DNS:     []netip.Addr{netip.MustParseAddr("172.16.254.1")},
	}
	return vmm.Spec{
		ID: "bare", Dir: dir, Kernel: img.Kernel, Initrd: img.Initrd,
		Cmdline: bp.Format(), VCPUs: smolvm.DefaultVCPUs, MemoryMiB: b.cfg.memMiB,
		Disks:      []vmm.Disk{{Path: filepath.Join(dir, "disk.ext4")}},
		NIC:        &vmm.NIC{TAP: bareTAP, MAC: "AA:FC:00:00:FE:01"},
		ConsoleLog: filepath.Join(dir, "console.log"),
		Accel:      vmm.AccelAuto,
	}
}

// bareBoot runs qemu-system-x86_64 itself with qemu.Args for img until the
// guest prints the ready marker, then kills it. defaultTB drops the
// translation-cache bound (tb-size) to show what it saves; withMem reads
// QEMU's memory after the guest idled for cfg.settle.
func (b *bench) bareBoot(ctx context.Context, img smolvm.ImageInfo, defaultTB, withMem bool) (bareRun, error) {
	dir, err := os.MkdirTemp(b.cfg.dataDir, "bare-")
	if err != nil {
		return bareRun{}, err
	}
	defer os.RemoveAll(dir)
	spec := b.bareSpec(img, dir)
	if err := image.CloneDisk(ctx, img.Rootfs, spec.Disks[0].Path, 0); err != nil {
		return bareRun{}, err
	}
	accel, _ := spec.Accel.Resolve()
	args := qemu.Args(spec, accel)
	if defaultTB {
		for i, a := range args {
			if strings.HasPrefix(a, "tcg,") {
				args[i] = "tcg"
			}
		}
	}
	var out bytes.Buffer
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	w := watchConsole(spec.ConsoleLog, t0)
	defer w.Stop()
	if err := cmd.Start(); err != nil {
		return bareRun{}, err
	}
	b.track(cmd)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		b.untrack(cmd)
	}()
	timeout := time.NewTimer(b.cfg.bootTimeout)
	defer timeout.Stop()
	select {
	case <-w.Found():
	case err := <-exited:
		exited <- err
		return bareRun{}, fmt.Errorf("bare qemu exited before the ready marker (%v): %s", err, out.String())
	case <-timeout.C:
		return bareRun{}, fmt.Errorf("bare qemu: no %s within %v", bootparams.ReadyMarker, b.cfg.bootTimeout)
	case <-ctx.Done():
		return bareRun{}, ctx.Err()
	}
	m := w.Stop()
	r := bareRun{Ready: m.At, GuestUptime: m.Uptime}
	if withMem {
		select {
		case <-time.After(b.cfg.settle):
		case <-ctx.Done():
			return r, ctx.Err()
		}
		if r.Mem, err = processMemory(cmd.Process.Pid, b.cfg.memMiB); err != nil {
			return r, err
		}
	}
	return r, nil
}

// bareArgs is the bare command line for the report, with a placeholder
// directory.
func (b *bench) bareArgs(img smolvm.ImageInfo) []string {
	spec := b.bareSpec(img, "DIR")
	accel, _ := spec.Accel.Resolve()
	args := append([]string{"qemu-system-x86_64"}, qemu.Args(spec, accel)...)
	return args
}
