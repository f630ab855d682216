package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/smolvm-go/smolvm"
)

// SnapshotResult compares VMs made from a snapshot with cold-booted ones.
type SnapshotResult struct {
	// ColdFirstOutput is Create + Start + the first `echo` of a cold VM.
	ColdFirstOutput Stats `json:"cold_first_output"`
	// CloneFirstOutput is Create(FromSnapshot) + Start + the first `echo`.
	CloneFirstOutput Stats `json:"clone_first_output"`
	// Ratio is CloneFirstOutput.P50 / ColdFirstOutput.P50.
	Ratio float64 `json:"ratio"`
	// WarmFirstUseMs is the first Create(Image) + Start + `echo` of a
	// data directory: the image's warm template is built then.
	WarmFirstUseMs float64 `json:"warm_first_use_ms"`
	// WarmFirstOutput is Create(Image) + Start + the first `echo` once the
	// template exists; WarmRatio is its p50 / ColdFirstOutput.P50.
	WarmFirstOutput Stats   `json:"warm_first_output"`
	WarmRatio       float64 `json:"warm_ratio"`
	// Create is vm.Snapshot of the template; Pause the guest's pause in it.
	Create Stats `json:"snapshot_create"`
	Pause  Stats `json:"snapshot_pause"`
	// SizeMiB is the space one snapshot takes on disk (RAM, state, disk).
	SizeMiB float64 `json:"snapshot_size_mib"`
	// Save and Resume are stop --save and the start that resumes it.
	Save   Stats `json:"save"`
	Resume Stats `json:"resume"`
	// SavedMiB is the space a saved VM's state takes on disk.
	SavedMiB float64 `json:"saved_mib"`
	// ClonesPSSMiB is the summed PSS of Clones clones idle at once;
	// ColdPSSMiB the same of as many cold VMs (concurrency section), if run.
	Clones       int     `json:"clones"`
	ClonesPSSMiB float64 `json:"clones_pss_mib"`
	ColdPSSMiB   float64 `json:"cold_pss_mib,omitempty"`
	PSSRatio     float64 `json:"pss_ratio,omitempty"`
}

// firstOutput creates (and starts) a VM from vc and runs echo; it returns
// the time to the output and the VM.
func (b *bench) firstOutput(ctx context.Context, vc smolvm.VMConfig) (time.Duration, *smolvm.VM, error) {
	t0 := time.Now()
	vm, err := b.h.New(ctx, vc)
	if err != nil {
		return 0, nil, err
	}
	r, err := vm.Run(ctx, "echo ready")
	d := time.Since(t0)
	if err == nil && r.Output() != "ready" {
		err = fmt.Errorf("first command printed %q", r.Stdout)
	}
	if err != nil {
		vm.ForceDelete(context.WithoutCancel(ctx))
		return 0, nil, err
	}
	return d, vm, nil
}

// benchSnapshot measures snapshots: cold vs restored first output, snapshot
// and stop --save times and sizes, and the memory of many clones.
func (b *bench) benchSnapshot(ctx context.Context, conc []ConcurrencyPoint) (*SnapshotResult, error) {
	res := &SnapshotResult{}
	vc := b.vmConfig(b.cfg.image)
	var cold, warm, create, pause, save, resume []time.Duration
	for i := range b.cfg.runs {
		d, vm, err := b.firstOutput(ctx, vc)
		if err != nil {
			return nil, fmt.Errorf("cold: %w", err)
		}
		cold = append(cold, d)
		logf("snapshot: cold %d to first output %v", i+1, d.Round(time.Millisecond))
		vm.ForceDelete(context.WithoutCancel(ctx))
	}
	if err := b.benchWarm(ctx, res, vc); err != nil {
		return nil, err
	}
	tpl, err := b.h.New(ctx, vc)
	if err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	defer tpl.ForceDelete(context.WithoutCancel(ctx))
	if _, err := tpl.Run(ctx, "true"); err != nil {
		return nil, err
	}
	var snap smolvm.SnapshotInfo
	for i := range b.cfg.runs {
		t0 := time.Now()
		info, err := tpl.Snapshot(ctx, fmt.Sprintf("bench-%d", i))
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		create = append(create, time.Since(t0))
		pause = append(pause, time.Duration(info.PauseMillis)*time.Millisecond)
		res.SizeMiB = float64(info.SizeBytes) / (1 << 20)
		if i > 0 {
			b.h.RemoveSnapshot(ctx, info.Name)
		} else {
			snap = info
		}
	}
	defer b.h.RemoveSnapshot(context.WithoutCancel(ctx), snap.Name)
	clone := smolvm.VMConfig{FromSnapshot: snap.Name}
	for i := range b.cfg.runs {
		d, vm, err := b.firstOutput(ctx, clone)
		if err != nil {
			return nil, fmt.Errorf("clone: %w", err)
		}
		warm = append(warm, d)
		logf("snapshot: clone %d to first output %v", i+1, d.Round(time.Millisecond))
		if i == 0 {
			for range b.cfg.runs {
				t0 := time.Now()
				if err := vm.Suspend(ctx); err != nil {
					return nil, fmt.Errorf("stop --save: %w", err)
				}
				save = append(save, time.Since(t0))
				res.SavedMiB = dirMiB(filepath.Join(b.cfg.dataDir, "vms", vm.ID(), "saved"))
				t0 = time.Now()
				if err := vm.Start(ctx); err != nil {
					return nil, fmt.Errorf("resume: %w", err)
				}
				if _, err := vm.Run(ctx, "true"); err != nil {
					return nil, fmt.Errorf("resume: %w", err)
				}
				resume = append(resume, time.Since(t0))
			}
		}
		vm.ForceDelete(context.WithoutCancel(ctx))
	}
	res.ColdFirstOutput, res.CloneFirstOutput = summarize(cold), summarize(warm)
	res.Ratio = ratio(res.CloneFirstOutput.P50, res.ColdFirstOutput.P50)
	res.WarmRatio = ratio(res.WarmFirstOutput.P50, res.ColdFirstOutput.P50)
	res.Create, res.Pause, res.Save, res.Resume = summarize(create), summarize(pause), summarize(save), summarize(resume)

	// As many clones idle at once as the largest concurrency point.
	res.Clones = 1
	for _, n := range b.cfg.concurrency {
		res.Clones = max(res.Clones, n)
	}
	for _, p := range conc {
		if p.N == res.Clones && len(p.Mem) == p.N {
			for _, m := range p.Mem {
				res.ColdPSSMiB += m.PSSMiB
			}
		}
	}
	var vms []*smolvm.VM
	defer func() {
		for _, vm := range vms {
			vm.ForceDelete(context.WithoutCancel(ctx))
		}
	}()
	for range res.Clones {
		_, vm, err := b.firstOutput(ctx, clone)
		if err != nil {
			return res, fmt.Errorf("clones: %w", err)
		}
		vms = append(vms, vm)
	}
	select {
	case <-time.After(b.cfg.settle):
	case <-ctx.Done():
	}
	var errs []error
	for _, vm := range vms {
		m, err := processMemory(vm.Info().PID, b.cfg.memMiB)
		errs = append(errs, err)
		res.ClonesPSSMiB += m.PSSMiB
	}
	if res.ColdPSSMiB > 0 {
		res.PSSRatio = res.ClonesPSSMiB / res.ColdPSSMiB
	}
	logf("snapshot: clone/cold first output %.2f; %d clones PSS %.0f MiB (cold %.0f MiB)", res.Ratio, res.Clones, res.ClonesPSSMiB, res.ColdPSSMiB)
	return res, errors.Join(errs...)
}

// benchWarm measures `create --image` through the image's warm template:
// the first use (which builds it) and later ones.
func (b *bench) benchWarm(ctx context.Context, res *SnapshotResult, vc smolvm.VMConfig) error {
	vc.Cold = false
	var warm []time.Duration
	tpls, err := b.h.Templates(ctx)
	if err != nil {
		return err
	}
	built := len(tpls) == 0 // else a template may exist already: no first use to measure
	for i := range b.cfg.runs + 1 {
		d, vm, err := b.firstOutput(ctx, vc)
		if err != nil {
			return fmt.Errorf("warm template: %w", err)
		}
		tpl := vm.Info().Template
		vm.ForceDelete(context.WithoutCancel(ctx))
		if tpl == "" {
			return fmt.Errorf("warm template: the VM booted cold")
		}
		if i == 0 {
			if built {
				res.WarmFirstUseMs = float64(d.Microseconds()) / 1000
			}
			logf("snapshot: first create --image (builds the warm template) to first output %v", d.Round(time.Millisecond))
			continue
		}
		warm = append(warm, d)
		logf("snapshot: warm create --image %d to first output %v", i, d.Round(time.Millisecond))
	}
	res.WarmFirstOutput = summarize(warm)
	return nil
}

// dirMiB is the disk space the files under dir take.
func dirMiB(dir string) float64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := os.Stat(p); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					n += st.Blocks * 512
				}
			}
		}
		return nil
	})
	return float64(n) / (1 << 20)
}

// reportSnapshot prints the snapshot section.
func reportSnapshot(w interface {
	Write([]byte) (int, error)
}, s *SnapshotResult) {
	fmt.Fprintf(w, "\nSnapshots (ms: min / p50 / max)\n")
	row := func(name string, st Stats) {
		fmt.Fprintf(w, "  %-44s %6.0f %6.0f %6.0f\n", name, st.Min, st.P50, st.Max)
	}
	row("cold: create + start + first output", s.ColdFirstOutput)
	row("from snapshot: create + start + first output", s.CloneFirstOutput)
	fmt.Fprintf(w, "  ratio (p50, from snapshot / cold): %.2f (target <= 0.20)\n", s.Ratio)
	row("create --image (warm template) + first output", s.WarmFirstOutput)
	fmt.Fprintf(w, "  ratio (p50, warm template / cold): %.2f", s.WarmRatio)
	if s.WarmFirstUseMs > 0 {
		fmt.Fprintf(w, "; first use (builds the template): %.0f ms", s.WarmFirstUseMs)
	}
	fmt.Fprintln(w)
	row("snapshot create", s.Create)
	row("  of which the guest is paused", s.Pause)
	fmt.Fprintf(w, "  snapshot size on disk: %.1f MiB\n", s.SizeMiB)
	row("stop --save", s.Save)
	row("start (resume) + first command", s.Resume)
	fmt.Fprintf(w, "  saved state on disk: %.1f MiB\n", s.SavedMiB)
	if s.ColdPSSMiB > 0 {
		fmt.Fprintf(w, "  %d clones idle: summed PSS %.0f MiB vs %d cold VMs %.0f MiB: %.2fx (target <= 0.50)\n", s.Clones, s.ClonesPSSMiB, s.Clones, s.ColdPSSMiB, s.PSSRatio)
	} else {
		fmt.Fprintf(w, "  %d clones idle: summed PSS %.0f MiB (run the concurrency section with 8 for the cold comparison)\n", s.Clones, s.ClonesPSSMiB)
	}
}
