package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Results is everything one benchmark run measured; --json writes it.
type Results struct {
	Meta        Meta               `json:"meta"`
	Lifecycle   *LifecycleResult   `json:"lifecycle,omitempty"`
	SSH         *SSHResult         `json:"ssh,omitempty"`
	Concurrency []ConcurrencyPoint `json:"concurrency,omitempty"`
	Transfer    *TransferResult    `json:"transfer,omitempty"`
	API         *APIResult         `json:"api,omitempty"` // api.go
	Targets     []Target           `json:"targets"`
	Errors      []string           `json:"errors,omitempty"`
	Snapshot    *SnapshotResult    `json:"snapshot,omitempty"`
}

// Meta describes the run and the host, so numbers are read in context.
type Meta struct {
	Started     time.Time `json:"started"`
	DurationS   float64   `json:"duration_s"`
	GoVersion   string    `json:"go_version"`
	QEMUVersion string    `json:"qemu_version"`
	Accel       string    `json:"accel"`
	AccelReason string    `json:"accel_reason"`
	HostCPUs    int       `json:"host_cpus"`
	// LoadAvg is /proc/loadavg at the start and the end: other work on
	// the host skews every number.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	Image        string `json:"image"`
	MemMiB       int    `json:"mem_mib"`
	VCPUs        int    `json:"vcpus"`
	Runs         int    `json:"runs"`
	Cmds         int    `json:"cmds"`
	Netns        string `json:"netns"`
	// BenchRSSMiB is this benchmark process's own resident memory at the
	// end; it is not a per-VM cost (SmolVM runs no daemon).
	BenchRSSMiB float64 `json:"bench_rss_mib"`
}

// runInside runs the benchmark in the network namespace ns, reports, and
// returns the results (also when some sections failed; the error then
// counts them). ns must be the name of a namespace made with `ip netns add`
// that this process runs in: the benchmark's own (SMOLVM_BENCH_NETNS), or
// the one the test runs in (vmtest.Netns). It refuses to boot anything
// otherwise.
func runInside(ctx context.Context, cfg config, ns string) (*Results, error) {
	if ns == "" || !inNetns(ns) {
		return nil, fmt.Errorf("not in the private network namespace %q: refusing to boot VMs", ns)
	}
	if cfg.dataDir == "" {
		return nil, errors.New("no --data-dir (the outer benchmark sets it)")
	}
	b, err := newBench(cfg)
	if err != nil {
		return nil, err
	}
	defer b.h.Close()
	defer b.cleanup()
	res := &Results{Meta: meta(ctx, cfg, ns)}
	fail := func(section string, err error) {
		if err != nil {
			res.Errors = append(res.Errors, section+": "+err.Error())
			logf("%s: %v", section, err)
		}
	}
	if !cfg.skip["lifecycle"] || !cfg.skip["baseline"] {
		res.Lifecycle, err = b.benchLifecycle(ctx)
		fail("lifecycle", err)
		if res.Lifecycle != nil {
			for _, e := range res.Lifecycle.Errors {
				fail("lifecycle", errors.New(e))
			}
		}
	}
	if !cfg.skip["ssh"] && ctx.Err() == nil {
		res.SSH, err = b.benchSSH(ctx)
		fail("ssh", err)
	}
	if !cfg.skip["concurrency"] && ctx.Err() == nil {
		res.Concurrency, err = b.benchConcurrency(ctx)
		fail("concurrency", err)
		for _, p := range res.Concurrency {
			for _, e := range p.Errors {
				fail(fmt.Sprintf("concurrency %d", p.N), errors.New(e))
			}
		}
	}
	if !cfg.skip["transfer"] && ctx.Err() == nil {
		res.Transfer, err = b.benchTransfer(ctx)
		fail("transfer", err)
	}
	if !cfg.skip["snapshot"] && ctx.Err() == nil {
		res.Snapshot, err = b.benchSnapshot(ctx, res.Concurrency)
		fail("snapshot", err)
	}
	if !cfg.skip["api"] && ctx.Err() == nil {
		res.API, err = b.benchAPI(ctx)
		fail("api", err)
	}
	res.Meta.DurationS = time.Since(res.Meta.Started).Seconds()
	res.Meta.LoadAvgEnd = loadavg()
	if m, err := processMemory(os.Getpid(), 0); err == nil {
		res.Meta.BenchRSSMiB = m.RSSMiB
	}
	res.Targets = targets(res)
	report(os.Stdout, res)
	if cfg.jsonPath != "" {
		out, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(cfg.jsonPath, append(out, '\n'), 0o644); err != nil {
			fail("json", err)
		}
	}
	if cfg.plotPath != "" {
		fail("plot", drawPlot(cfg.plotPath, res))
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if len(res.Errors) > 0 {
		return res, fmt.Errorf("%d errors (see above)", len(res.Errors))
	}
	return res, nil
}

// replay prints, and plots if asked, results saved with --json.
func replay(cfg config) error {
	b, err := os.ReadFile(cfg.fromJSON)
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", cfg.fromJSON, err)
	}
	res.Targets = targets(&res)
	report(os.Stdout, &res)
	if cfg.plotPath != "" {
		return drawPlot(cfg.plotPath, &res)
	}
	return nil
}

func meta(ctx context.Context, cfg config, ns string) Meta {
	r := vmm.DetectAccel()
	m := Meta{
		Started: time.Now(), GoVersion: runtime.Version(), Accel: string(r.Accel), AccelReason: r.Reason,
		HostCPUs: runtime.NumCPU(), LoadAvgStart: loadavg(), Image: cfg.image, MemMiB: cfg.memMiB,
		VCPUs: smolvm.DefaultVCPUs, Runs: cfg.runs, Cmds: cfg.cmds, Netns: ns,
	}
	if out, err := exec.CommandContext(ctx, "qemu-system-x86_64", "--version").Output(); err == nil {
		m.QEMUVersion, _, _ = strings.Cut(string(out), "\n")
	}
	return m
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
