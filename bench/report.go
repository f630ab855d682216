package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// labels are the report's names for result rows.
var labels = map[string]string{
	"create":           "create",
	"start":            "start (boot until the agent answers)",
	"pre_launch":       "  before QEMU runs (TAP, nftables; 10 ms ticks)",
	"guest_boot":       "  QEMU launch -> ready marker on console",
	"after_marker":     "  ready marker -> Start returns (agent, SSH key)",
	"guest_uptime":     "  guest kernel uptime at the marker",
	"first_command":    "first command (echo, sh -lc)",
	"warm_command":     "warm command (echo, sh -lc)",
	"stop":             "stop (clean power-off)",
	"delete":           "delete",
	"full":             "full lifecycle (create -> output -> deleted)",
	"agent_true":       "agent: true (sh -lc, as vm.Run)",
	"agent_argv_true":  "agent: true (argv, no shell)",
	"agent_sh_true":    "agent: sh -c true (no login profile)",
	"ssh_cli_true":     "ssh binary: true",
	"ssh_session_true": "Go ssh session: true",
	"agent_1mib":       "agent: 1 MiB output",
	"ssh_cli_1mib":     "ssh binary: 1 MiB output",
	"ssh_session_1mib": "Go ssh session: 1 MiB output",
}

func label(name string) string {
	if l, ok := labels[name]; ok {
		return l
	}
	return name
}

// report prints the results as tables.
func report(out io.Writer, r *Results) {
	m := r.Meta
	fmt.Fprintf(out, "\nSmolVM benchmark: image %s, %d MiB, %d vCPUs, accel %s, %d runs, %d commands per latency row\n",
		m.Image, m.MemMiB, m.VCPUs, m.Accel, m.Runs, m.Cmds)
	fmt.Fprintf(out, "%s; %d host CPUs; load average %s at the start, %s at the end; %.0f s\n",
		m.QEMUVersion, m.HostCPUs, m.LoadAvgStart, m.LoadAvgEnd, m.DurationS)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := func(title string) {
		fmt.Fprintf(w, "\n%s\tn\tmin\tp50\tp90\tp99\tmax\t\n", title)
	}
	row := func(name string, s Stats) {
		fmt.Fprintf(w, "%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t\n", name, s.N, s.Min, s.P50, s.P90, s.P99, s.Max)
	}
	// tabwriter right-aligns every column; pad names to left-align them.
	pad := func(rows []NamedStats) int {
		n := 0
		for _, r := range rows {
			n = max(n, len(label(r.Name)))
		}
		return n
	}
	left := func(s string, n int) string { return s + strings.Repeat(" ", max(0, n-len(s))) }

	if l := r.Lifecycle; l != nil && len(l.Phases) > 0 {
		rows := append([]NamedStats{l.Phases[0], l.Phases[1]}, l.StartSplit...)
		rows = append(rows, l.Phases[2:]...)
		n := pad(rows)
		header(left("LIFECYCLE, ms ("+l.Image+")", n))
		for _, s := range rows {
			row(left(label(s.Name), n), s.Stats)
		}
	}
	if l := r.Lifecycle; l != nil && l.Baseline != nil {
		bl := l.Baseline
		n := 44
		header(left("BARE QEMU BASELINE, ms", n))
		row(left("bare QEMU: launch -> ready marker", n), bl.BootToReady)
		row(left("  guest kernel uptime at the marker", n), bl.GuestUptime)
		w.Flush()
		fmt.Fprintf(out, "  Start / bare boot-to-ready: %.2fx (%+.0f ms, p50); guest boot under SmolVM / bare: %.2fx\n",
			bl.StartRatio, bl.StartOverheadMs, bl.GuestBootRatio)
		for _, x := range []struct {
			name string
			m    *memory
		}{{"tb-size=64 (as SmolVM)", bl.MemTB64}, {"QEMU's default tb-size", bl.MemDefaultTB}} {
			if x.m != nil {
				fmt.Fprintf(out, "  bare QEMU idle, %s: %s\n", x.name, x.m.breakdown())
			}
		}
	}
	if s := r.SSH; s != nil {
		n := pad(s.Rows)
		header(left("AGENT VS SSH, ms (default image)", n))
		for _, x := range s.Rows {
			row(left(label(x.Name), n), x.Stats)
		}
		w.Flush()
		for _, x := range s.Ratios {
			fmt.Fprintf(out, "  %s: %.1fx at p50, %.1fx at p99\n", x.Name, x.P50, x.P99)
		}
	}
	if len(r.Concurrency) > 0 {
		fmt.Fprintf(w, "\nCONCURRENCY (%s)\tVMs\tall ready ms\tstart p50 ms\tanswered\tfailed\tPSS max MiB\tRSS max MiB\tdelete all ms\t\n", m.Image)
		for _, p := range r.Concurrency {
			fmt.Fprintf(w, "\t%d\t%.0f\t%.0f\t%d\t%d\t%.1f\t%.1f\t%.0f\t\n",
				p.N, p.AllReadyMs, p.Start.P50, p.Answered, p.Failures, p.PSSMaxMiB, p.RSSMaxMiB, p.DeleteAllMs)
		}
		w.Flush()
		for _, p := range r.Concurrency {
			if p.N == 1 && len(p.Mem) == 1 {
				fmt.Fprintf(out, "  one idle VM: %s\n", p.Mem[0].breakdown())
			}
		}
		fmt.Fprintf(out, "  per-VM host memory is QEMU's PSS alone: SmolVM runs no daemon and the CLI exits (this benchmark process: %.0f MiB RSS, not per VM)\n", m.BenchRSSMiB)
	}
	if t := r.Transfer; t != nil {
		n := 24
		header(left(fmt.Sprintf("TRANSFER %d MiB, ms", t.MiB), n))
		row(left("vm.Upload", n), t.Upload)
		row(left("vm.Download", n), t.Download)
		w.Flush()
		fmt.Fprintf(out, "  upload %.1f MiB/s, download %.1f MiB/s (p50)\n", t.UploadMiBps, t.DownloadMiBps)
	}
	if a := r.API; a != nil {
		reportAPI(out, w, header, row, left, a)
	}
	w.Flush()
	if r.Snapshot != nil {
		reportSnapshot(out, r.Snapshot)
	}
	fmt.Fprintln(out, "\nTARGETS")
	for _, t := range r.Targets {
		verdict := "not measured"
		if t.Met != nil {
			verdict = map[bool]string{true: "MET", false: "NOT MET"}[*t.Met]
		}
		fmt.Fprintf(out, "  %-13s %s: want %s\n", "["+verdict+"]", t.Name, t.Want)
		fmt.Fprintf(out, "  %13s got %s\n", "", t.Got)
		if t.Note != "" {
			fmt.Fprintf(out, "  %13s %s\n", "", t.Note)
		}
	}
	for _, e := range r.Errors {
		fmt.Fprintln(out, "ERROR:", e)
	}
}
