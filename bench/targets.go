package main

import "fmt"

// Target is one of the goals, checked against this run.
type Target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	// Met is nil when the run did not measure it.
	Met  *bool  `json:"met"`
	Note string `json:"note,omitempty"`
}

// The targets.
const (
	maxBootRatio    = 1.10
	minSSHRatio     = 10.0
	maxIdlePSSMiB   = 96.0
	concurrencyGoal = 8
)

// targets checks the results against the goals.
func targets(r *Results) []Target {
	met := func(ok bool) *bool { return &ok }
	var ts []Target

	t := Target{Name: "boot_to_ready", Want: fmt.Sprintf("Start p50 <= %.2fx bare QEMU boot-to-ready p50", maxBootRatio), Got: "not measured"}
	if l := r.Lifecycle; l != nil && l.Baseline != nil && l.Baseline.StartRatio > 0 {
		bl := l.Baseline
		start, _ := l.stat("start")
		pre, _ := l.stat("pre_launch")
		after, _ := l.stat("after_marker")
		t.Got = fmt.Sprintf("%.2fx (%+.0f ms: %.0f vs %.0f ms)", bl.StartRatio, bl.StartOverheadMs, start.P50, bl.BootToReady.P50)
		t.Met = met(bl.StartRatio <= maxBootRatio)
		t.Note = fmt.Sprintf("the guest itself boots at %.2fx bare under SmolVM; before QEMU runs %.0f ms, after the marker %.0f ms (p50)",
			bl.GuestBootRatio, pre.P50, after.P50)
	}
	ts = append(ts, t)

	t = Target{Name: "warm_agent_vs_ssh", Want: fmt.Sprintf("ssh p50 / agent p50 >= %.0fx for `true`", minSSHRatio), Got: "not measured"}
	if s := r.SSH; s != nil && len(s.Ratios) >= 4 {
		t.Got = fmt.Sprintf("vm.Run (sh -lc): %.1fx vs the ssh binary, %.1fx vs a persistent Go SSH session", s.Ratios[0].P50, s.Ratios[1].P50)
		t.Met = met(s.Ratios[0].P50 >= minSSHRatio)
		t.Note = fmt.Sprintf("argv exec (no shell): %.1fx vs the ssh binary, %.1fx vs the Go session; the Go session skips process spawn, key exchange and authentication",
			s.Ratios[2].P50, s.Ratios[3].P50)
	}
	ts = append(ts, t)

	t = Target{Name: "idle_vm_memory", Want: fmt.Sprintf("PSS of an idle %s VM (%d MiB RAM) < %.0f MiB", r.Meta.Image, r.Meta.MemMiB, maxIdlePSSMiB), Got: "not measured"}
	for _, p := range r.Concurrency {
		if p.N == 1 && len(p.Mem) == 1 {
			m := p.Mem[0]
			t.Got = fmt.Sprintf("%s; tb-size on the command line: %v", m.breakdown(), p.TBSizeBounded)
			t.Met = met(m.PSSMiB < maxIdlePSSMiB && p.TBSizeBounded)
		}
	}
	if l := r.Lifecycle; l != nil && l.Baseline != nil && l.Baseline.MemTB64 != nil {
		bl := l.Baseline
		t.Note = fmt.Sprintf("bare QEMU: %.1f MiB PSS with tb-size=64", bl.MemTB64.PSSMiB)
		if bl.MemDefaultTB != nil {
			t.Note += fmt.Sprintf(", %.1f MiB with QEMU's default translation cache", bl.MemDefaultTB.PSSMiB)
		}
	}
	if t.Note != "" {
		t.Note += "; "
	}
	t.Note += "nothing else of SmolVM stays resident per VM: no daemon, the CLI exits after each command"
	ts = append(ts, t)

	t = Target{Name: "concurrency", Want: fmt.Sprintf("%d VMs started at once all answer, no failure", concurrencyGoal), Got: "not measured"}
	for _, p := range r.Concurrency {
		if p.N == concurrencyGoal {
			t.Got = fmt.Sprintf("%d/%d answered, all ready in %.1f s", p.Answered, p.N, p.AllReadyMs/1000)
			t.Met = met(p.Failures == 0 && p.Answered == p.N)
		}
	}
	ts = append(ts, t)
	return ts
}
