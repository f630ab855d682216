package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm"
)

// ConcurrencyPoint is N VMs started at once.
type ConcurrencyPoint struct {
	N int `json:"n"`
	// AllReadyMs is from the first Create until every Start returned.
	AllReadyMs float64 `json:"all_ready_ms"`
	// Start is each VM's Create + Start.
	Start Stats `json:"start"`
	// Answered counts VMs that then ran a command; Failures the others.
	Answered int      `json:"answered"`
	Failures int      `json:"failures"`
	Errors   []string `json:"errors,omitempty"`
	// Mem is each QEMU's memory after cfg.settle idle; SmolVM keeps
	// nothing else resident per VM (no daemon: the CLI exits).
	Mem       []memory `json:"mem"`
	PSSMaxMiB float64  `json:"pss_max_mib"`
	RSSMaxMiB float64  `json:"rss_max_mib"`
	// TBSizeBounded reports whether every QEMU ran with tb-size set.
	TBSizeBounded bool `json:"tb_size_bounded"`
	// DeleteAllMs is deleting them all at once.
	DeleteAllMs float64 `json:"delete_all_ms"`
}

// benchConcurrency starts N VMs at once for each N asked for.
func (b *bench) benchConcurrency(ctx context.Context) ([]ConcurrencyPoint, error) {
	var pts []ConcurrencyPoint
	for _, n := range b.cfg.concurrency {
		if ctx.Err() != nil {
			return pts, ctx.Err()
		}
		p := b.concurrent(ctx, n)
		logf("concurrency %d: all ready in %.0f ms, %d answered, %d failed, PSS max %.1f MiB",
			n, p.AllReadyMs, p.Answered, p.Failures, p.PSSMaxMiB)
		pts = append(pts, p)
	}
	return pts, nil
}

func (b *bench) concurrent(ctx context.Context, n int) ConcurrencyPoint {
	p := ConcurrencyPoint{N: n, TBSizeBounded: true}
	vms := make([]*smolvm.VM, n)
	errs := make([]error, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		wg.Go(func() {
			vms[i], _, errs[i] = b.boot(ctx, b.vmConfig(b.cfg.image))
			took[i] = time.Since(t0)
		})
	}
	wg.Wait()
	p.AllReadyMs = float64(slices.Max(took)) / float64(time.Millisecond)
	p.Start = summarize(took)
	select {
	case <-time.After(b.cfg.settle):
	case <-ctx.Done():
	}
	for i, vm := range vms {
		if errs[i] == nil {
			r, err := vm.Run(ctx, "true")
			if err == nil && !r.OK() {
				err = fmt.Errorf("exit status %d", r.ExitCode)
			}
			errs[i] = err
		}
		if errs[i] != nil {
			p.Failures++
			p.Errors = append(p.Errors, errs[i].Error())
			continue
		}
		p.Answered++
		pid := vm.Info().PID
		m, err := processMemory(pid, b.cfg.memMiB)
		if err != nil {
			p.Errors = append(p.Errors, fmt.Sprintf("memory of %s: %v", vm.ID(), err))
			continue
		}
		p.Mem = append(p.Mem, m)
		p.PSSMaxMiB = max(p.PSSMaxMiB, m.PSSMiB)
		p.RSSMaxMiB = max(p.RSSMaxMiB, m.RSSMiB)
		p.TBSizeBounded = p.TBSizeBounded && hasTBSize(cmdlineOf(pid))
	}
	p.DeleteAllMs = deleteAll(ctx, vms)
	return p
}

// deleteAll deletes the VMs at once and returns how long it took, in ms.
// Failures are logged; the benchmark's cleanup retries them.
func deleteAll(ctx context.Context, vms []*smolvm.VM) float64 {
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, vm := range vms {
		if vm != nil {
			wg.Go(func() {
				if err := vm.Delete(context.WithoutCancel(ctx)); err != nil {
					logf("delete %s: %v", vm.ID(), err)
				}
			})
		}
	}
	wg.Wait()
	return float64(time.Since(t0)) / float64(time.Millisecond)
}
