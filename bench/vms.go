package main

import (
	"context"
	"errors"
	"os/exec"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm"
)

// bench is the benchmark's state inside the namespace: its settings and
// the bare QEMU processes it runs, so that cleanup can end them.
type bench struct {
	cfg config
	h   *smolvm.Host

	mu    sync.Mutex
	procs map[*exec.Cmd]bool
}

func newBench(cfg config) (*bench, error) {
	// Warm templates on whatever $SMOLVM_WARM says: the VMs measured
	// cold ask for it (vmConfig), the warm rows measure the warm path.
	h, err := smolvm.Open(context.Background(), smolvm.HostOptions{DataDir: cfg.dataDir, BootTimeout: cfg.bootTimeout, Warm: smolvm.WarmOn})
	if err != nil {
		return nil, err
	}
	return &bench{cfg: cfg, h: h, procs: map[*exec.Cmd]bool{}}, nil
}

// vmConfig is the configuration of the benchmark's VMs of image.
func (b *bench) vmConfig(image string) smolvm.VMConfig {
	// Cold: every measurement but the warm-template rows boots the image.
	return smolvm.VMConfig{Image: image, MemSizeMiB: b.cfg.memMiB, VCPUCount: smolvm.DefaultVCPUs, Cold: true}
}

// bootTiming splits Create and Start of one VM.
type bootTiming struct {
	Create time.Duration
	Start  time.Duration
	// PreLaunch is Start's work before the QEMU process exists (lock,
	// TAP and nftables, spec), at 10 ms resolution.
	PreLaunch time.Duration
	// GuestBoot is QEMU's launch until the ready marker on the console.
	GuestBoot time.Duration
	// AfterMarker is the marker until Start returns: agent connection,
	// SSH key, bookkeeping.
	AfterMarker time.Duration
	// GuestUptime is the guest kernel's uptime printed with the marker.
	GuestUptime time.Duration
	// Marker reports whether the marker was seen (else the split is empty).
	Marker bool
}

// boot creates and starts a VM, timing each part. On failure nothing is
// left behind.
func (b *bench) boot(ctx context.Context, vc smolvm.VMConfig) (*smolvm.VM, bootTiming, error) {
	var t bootTiming
	t0 := time.Now()
	vm, err := b.h.Create(ctx, vc)
	if err != nil {
		return nil, t, err
	}
	t.Create = time.Since(t0)
	up0 := uptime()
	t1 := time.Now()
	w := watchConsole(vm.ConsoleLog(), t1)
	err = vm.Start(ctx)
	t.Start = time.Since(t1)
	m := w.Stop()
	if err != nil {
		derr := vm.ForceDelete(context.WithoutCancel(ctx))
		return nil, t, errors.Join(err, derr)
	}
	if off, err := launchOffset(vm.Info().PID, up0); err == nil && m.Found {
		// Start returns after the marker, so a marker the watch only saw in
		// its last look, after Start returned, came by Start's return.
		at := min(m.At, t.Start)
		t.Marker = true
		t.PreLaunch = max(0, off)
		t.GuestBoot = at - t.PreLaunch
		t.AfterMarker = t.Start - at
		t.GuestUptime = m.Uptime
	}
	return vm, t, nil
}

// track records a bare QEMU process until untrack.
func (b *bench) track(cmd *exec.Cmd) {
	b.mu.Lock()
	b.procs[cmd] = true
	b.mu.Unlock()
}

func (b *bench) untrack(cmd *exec.Cmd) {
	b.mu.Lock()
	delete(b.procs, cmd)
	b.mu.Unlock()
}

// cleanup kills the bare QEMU processes still running and force-deletes
// every VM left in the data directory.
func (b *bench) cleanup() {
	b.mu.Lock()
	for cmd := range b.procs {
		cmd.Process.Kill()
	}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	infos, err := b.h.List(ctx, smolvm.ListOptions{})
	if err != nil {
		logf("cleanup: list VMs: %v", err)
		return
	}
	for _, inf := range infos {
		vm, err := b.h.Get(ctx, inf.VMID)
		if err == nil {
			err = vm.ForceDelete(ctx)
		}
		if err != nil {
			logf("cleanup: delete %s: %v", inf.VMID, err)
		} else {
			logf("cleanup: deleted leftover VM %s", inf.VMID)
		}
	}
}
