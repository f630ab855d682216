package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// NamedStats is one row of a section.
type NamedStats struct {
	Name string `json:"name"`
	Stats
}

// LifecycleResult holds the lifecycle phases and the bare QEMU baseline.
type LifecycleResult struct {
	Image string `json:"image"`
	// Phases are create, start, first_command, warm_command, stop, delete
	// and full (create + start + first command + stop + delete).
	Phases []NamedStats `json:"phases"`
	// StartSplit divides Start: pre_launch (before QEMU runs), guest_boot
	// (QEMU launch to the ready marker on our console), after_marker (agent
	// connection and setup), and guest_uptime (the guest kernel's own clock
	// at the marker).
	StartSplit []NamedStats    `json:"start_split"`
	Baseline   *BaselineResult `json:"baseline,omitempty"`
	Errors     []string        `json:"errors,omitempty"`
}

// stat returns the phase or Start part called name.
func (l *LifecycleResult) stat(name string) (Stats, bool) {
	for _, s := range append(l.Phases, l.StartSplit...) {
		if s.Name == name {
			return s.Stats, true
		}
	}
	return Stats{}, false
}

// BaselineResult is the bare QEMU boot and how SmolVM compares.
type BaselineResult struct {
	// BootToReady is bare QEMU's launch until the ready marker.
	BootToReady Stats `json:"boot_to_ready"`
	GuestUptime Stats `json:"guest_uptime"`
	// StartRatio is SmolVM's Start p50 over BootToReady p50 (target <= 1.10).
	StartRatio float64 `json:"start_ratio_p50"`
	// StartOverheadMs is SmolVM's Start p50 minus BootToReady p50.
	StartOverheadMs float64 `json:"start_overhead_ms_p50"`
	// GuestBootRatio is SmolVM's launch-to-marker p50 over BootToReady p50:
	// how much slower the guest itself boots under SmolVM.
	GuestBootRatio float64 `json:"guest_boot_ratio_p50"`
	// Args is the bare QEMU command line (the last run's).
	Args []string `json:"qemu_args"`
	// MemTB64 is bare QEMU's memory after the guest idled, with
	// tb-size=64 as SmolVM runs it; MemDefaultTB without the bound.
	MemTB64      *memory `json:"mem_tb_size_64,omitempty"`
	MemDefaultTB *memory `json:"mem_default_tb_size,omitempty"`
}

// benchLifecycle boots cfg.runs VMs one after the other through every
// phase and, unless skipped, as many bare QEMU boots interleaved with them
// (alternating which goes first, so drift on a noisy host hits both).
func (b *bench) benchLifecycle(ctx context.Context) (*LifecycleResult, error) {
	res := &LifecycleResult{Image: b.cfg.image}
	phases := map[string][]time.Duration{}
	var bare []bareRun
	withBare := !b.cfg.skip["baseline"]
	withLife := !b.cfg.skip["lifecycle"]
	var img smolvm.ImageInfo
	if withBare {
		var err error
		if img, err = b.imagePaths(ctx, b.cfg.image); err != nil {
			return nil, err
		}
		if err := setupBareTAP(); err != nil {
			return nil, err
		}
		defer removeBareTAP()
	}
	for i := range b.cfg.runs {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		runBare := func() {
			if !withBare {
				return
			}
			r, err := b.bareBoot(ctx, img, false, i == b.cfg.runs-1)
			if err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("bare run %d: %v", i, err))
				return
			}
			bare = append(bare, r)
			logf("bare qemu run %d: ready in %v", i+1, r.Ready.Round(time.Millisecond))
		}
		runOurs := func() {
			if !withLife {
				return
			}
			if err := b.lifecycleRun(ctx, phases); err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("lifecycle run %d: %v", i, err))
			}
		}
		if i%2 == 0 {
			runBare()
			runOurs()
		} else {
			runOurs()
			runBare()
		}
	}
	if withLife {
		phases["full"] = sum(phases["create"], phases["start"], phases["first_command"], phases["stop"], phases["delete"])
		for _, n := range []string{"create", "start", "first_command", "warm_command", "stop", "delete", "full"} {
			res.Phases = append(res.Phases, NamedStats{n, summarize(phases[n])})
		}
		for _, n := range []string{"pre_launch", "guest_boot", "after_marker", "guest_uptime"} {
			res.StartSplit = append(res.StartSplit, NamedStats{n, summarize(phases[n])})
		}
	}
	if withBare && len(bare) > 0 {
		res.Baseline = b.baseline(ctx, img, bare, res)
	}
	return res, nil
}

// lifecycleRun takes one VM through create, start, a first command, warm
// commands, stop and delete, appending each phase's time to phases.
func (b *bench) lifecycleRun(ctx context.Context, phases map[string][]time.Duration) error {
	add := func(name string, d time.Duration) { phases[name] = append(phases[name], d) }
	vm, t, err := b.boot(ctx, b.vmConfig(b.cfg.image))
	if err != nil {
		return err
	}
	defer func() {
		if vm != nil {
			vm.ForceDelete(context.WithoutCancel(ctx))
		}
	}()
	run := func() (time.Duration, error) {
		t0 := time.Now()
		r, err := vm.Run(ctx, "echo smolvm")
		d := time.Since(t0)
		if err == nil && r.Output() != "smolvm" {
			err = fmt.Errorf("command printed %q (exit %d, stderr %q)", r.Stdout, r.ExitCode, r.Stderr)
		}
		return d, err
	}
	first, err := run()
	if err != nil {
		return fmt.Errorf("first command: %w", err)
	}
	var warm []time.Duration
	for range b.cfg.cmds {
		d, err := run()
		if err != nil {
			return fmt.Errorf("warm command: %w", err)
		}
		warm = append(warm, d)
	}
	t0 := time.Now()
	if err := vm.Stop(ctx); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	stop := time.Since(t0)
	t0 = time.Now()
	if err := vm.Delete(ctx); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	del := time.Since(t0)
	vm = nil
	add("create", t.Create)
	add("start", t.Start)
	add("first_command", first)
	phases["warm_command"] = append(phases["warm_command"], warm...)
	add("stop", stop)
	add("delete", del)
	if t.Marker {
		add("pre_launch", t.PreLaunch)
		add("guest_boot", t.GuestBoot)
		add("after_marker", t.AfterMarker)
		add("guest_uptime", t.GuestUptime)
	}
	logf("lifecycle: create %v, start %v (guest boot %v), first command %v, stop %v, delete %v",
		t.Create.Round(time.Millisecond), t.Start.Round(time.Millisecond), t.GuestBoot.Round(time.Millisecond),
		first.Round(time.Millisecond), stop.Round(time.Millisecond), del.Round(time.Millisecond))
	return nil
}

// baseline summarises the bare boots, compares them with SmolVM's and
// measures what the translation-cache bound saves.
func (b *bench) baseline(ctx context.Context, img smolvm.ImageInfo, bare []bareRun, ours *LifecycleResult) *BaselineResult {
	var ready, up []time.Duration
	var mem *memory
	for _, r := range bare {
		ready = append(ready, r.Ready)
		up = append(up, r.GuestUptime)
		if r.Mem.PSSMiB > 0 {
			m := r.Mem
			mem = &m
		}
	}
	bl := &BaselineResult{BootToReady: summarize(ready), GuestUptime: summarize(up), MemTB64: mem}
	bl.Args = b.bareArgs(img)
	if s, ok := ours.stat("start"); ok {
		bl.StartRatio = ratio(s.P50, bl.BootToReady.P50)
		bl.StartOverheadMs = s.P50 - bl.BootToReady.P50
	}
	if s, ok := ours.stat("guest_boot"); ok {
		bl.GuestBootRatio = ratio(s.P50, bl.BootToReady.P50)
	}
	if accel, _ := vmm.AccelAuto.Resolve(); accel == vmm.AccelTCG {
		r, err := b.bareBoot(ctx, img, true, true)
		if err != nil {
			logf("bare qemu with the default translation cache: %v", err)
		} else {
			bl.MemDefaultTB = &r.Mem
		}
	}
	return bl
}

// hasTBSize reports whether a QEMU command line bounds TCG's translation cache.
func hasTBSize(cmdline string) bool { return strings.Contains(cmdline, "tb-size=") }
