package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	_ "image/png" // image.DecodeConfig of the plot
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestMain builds the agent and the minimal and default images (SSH needs
// the default one) while the network is reachable, then re-runs the tests
// in a private network namespace that vmtest creates and deletes.
func TestMain(m *testing.M) { vmtest.MainWith(m, smolvm.ImageMinimal, smolvm.ImageDefault) }

// TestBenchEndToEnd runs every section of the benchmark once, with the
// smallest settings, in the test's namespace, so that the command cannot
// rot. It checks the shape of the results, not their values: timings on a
// shared CI machine mean nothing.
func TestBenchEndToEnd(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dataDir, outDir := t.TempDir(), t.TempDir()
	jsonPath, plotPath := filepath.Join(outDir, "bench.json"), filepath.Join(outDir, "bench.png")
	t.Cleanup(func() { assertNothingLeft(t, dataDir) })

	cfg, err := parseFlags([]string{
		"-n", "1", "--concurrency", "1", "--cmds", "1", "--transfer-mib", "1", "--settle", "1s",
		"--image-dir", vmtest.CacheDir(), "--data-dir", dataDir, "--json", jsonPath, "--plot", plotPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	// vmtest's namespace was made by `ip netns add`, so runInside's own
	// check (this process is in /run/netns/NAME) holds as for the
	// benchmark's namespace: no bypass.
	res, err := runInside(ctx, cfg, vmtest.Netns())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("benchmark ran in %.1fs", time.Since(start).Seconds())

	checkResults(t, res, cfg)
	checkJSON(t, jsonPath, res)
	checkPNG(t, plotPath)

	// --from-json boots nothing and plots the saved results again.
	replayPlot := filepath.Join(outDir, "replay.png")
	if err := replay(config{fromJSON: jsonPath, plotPath: replayPlot}); err != nil {
		t.Fatalf("replay: %v", err)
	}
	checkPNG(t, replayPlot)
}

// TestRunInsideRefuses checks that the in-namespace entry point boots
// nothing unless this process runs in the namespace it is named.
func TestRunInsideRefuses(t *testing.T) {
	cfg := config{runs: 1, cmds: 1, transferMiB: 1, image: "minimal", dataDir: t.TempDir(), skip: map[string]bool{}}
	for _, ns := range []string{"", "smolvm-bench-no-such-netns"} {
		if res, err := runInside(t.Context(), cfg, ns); err == nil || res != nil {
			t.Errorf("runInside in namespace %q: %v, %v; want a refusal", ns, res, err)
		}
	}
}

// checkStats checks that s holds n samples in order; positive requires
// them above zero (else at least zero).
func checkStats(t *testing.T, name string, s Stats, n int, positive bool) {
	t.Helper()
	if s.N != n {
		t.Errorf("%s: %d samples, want %d", name, s.N, n)
	}
	if !(s.Min <= s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99 && s.P99 <= s.Max) {
		t.Errorf("%s: percentiles out of order: %+v", name, s)
	}
	if s.Min < 0 || positive && s.Min == 0 {
		t.Errorf("%s: min %.3f ms, want > 0 (>= 0 if not positive)", name, s.Min)
	}
}

// rows indexes named rows by name, failing on duplicates.
func rows(t *testing.T, section string, list []NamedStats) map[string]Stats {
	t.Helper()
	m := map[string]Stats{}
	for _, r := range list {
		if _, dup := m[r.Name]; dup {
			t.Errorf("%s: row %s twice", section, r.Name)
		}
		m[r.Name] = r.Stats
	}
	return m
}

// checkResults checks that every section ran with the configured sizes.
func checkResults(t *testing.T, res *Results, cfg config) {
	t.Helper()
	n := cfg.runs
	m := res.Meta
	if m.Runs != n || m.Cmds != cfg.cmds || m.Image != cfg.image || m.MemMiB != cfg.memMiB {
		t.Errorf("meta: runs %d, cmds %d, image %s, mem %d; want %d, %d, %s, %d",
			m.Runs, m.Cmds, m.Image, m.MemMiB, n, cfg.cmds, cfg.image, cfg.memMiB)
	}
	if m.Netns != vmtest.Netns() || m.QEMUVersion == "" || m.Accel == "" || m.DurationS <= 0 || m.BenchRSSMiB <= 0 {
		t.Errorf("meta incomplete: %+v", m)
	}
	if a := res.API; a == nil || a.SDKExec.N != 5*cfg.cmds || a.APIExec.N != 5*cfg.cmds || a.ListPerS <= 0 {
		t.Errorf("api section: %+v", a)
	}
	if len(res.Errors) > 0 {
		t.Errorf("errors: %q", res.Errors)
	}
	tcg := m.Accel == string(vmm.AccelTCG)

	l := res.Lifecycle
	if l == nil {
		t.Fatal("no lifecycle results")
	}
	phases := rows(t, "lifecycle", l.Phases)
	for _, name := range []string{"create", "start", "first_command", "warm_command", "stop", "delete", "full"} {
		s, ok := phases[name]
		if !ok {
			t.Errorf("lifecycle: no %s phase", name)
			continue
		}
		want := n
		if name == "warm_command" {
			want = n * cfg.cmds
		}
		checkStats(t, "lifecycle "+name, s, want, true)
	}
	split := rows(t, "start split", l.StartSplit)
	for _, name := range []string{"pre_launch", "guest_boot", "after_marker", "guest_uptime"} {
		s, ok := split[name]
		if !ok {
			t.Errorf("start split: no %s row", name)
			continue
		}
		// pre_launch has 10 ms resolution: a fast one reads 0.
		checkStats(t, "start split "+name, s, n, name != "pre_launch")
	}

	bl := l.Baseline
	if bl == nil {
		t.Fatal("no bare QEMU baseline")
	}
	checkStats(t, "bare boot to ready", bl.BootToReady, n, true)
	checkStats(t, "bare guest uptime", bl.GuestUptime, n, true)
	if bl.StartRatio <= 0 || bl.GuestBootRatio <= 0 || len(bl.Args) == 0 {
		t.Errorf("baseline: start ratio %v, guest boot ratio %v, %d args", bl.StartRatio, bl.GuestBootRatio, len(bl.Args))
	}
	if bl.MemTB64 == nil || bl.MemTB64.PSSMiB <= 0 {
		t.Errorf("baseline: no memory with tb-size=64: %+v", bl.MemTB64)
	}
	if tcg && (bl.MemDefaultTB == nil || bl.MemDefaultTB.PSSMiB <= 0) {
		t.Errorf("baseline: no memory with the default tb-size under TCG: %+v", bl.MemDefaultTB)
	}

	s := res.SSH
	if s == nil {
		t.Fatal("no agent vs SSH results")
	}
	sshRows := rows(t, "ssh", s.Rows)
	for _, name := range []string{
		"agent_true", "ssh_cli_true", "ssh_session_true", "agent_argv_true", "agent_sh_true",
		"agent_1mib", "ssh_cli_1mib", "ssh_session_1mib",
	} {
		if r, ok := sshRows[name]; !ok {
			t.Errorf("ssh: no %s row", name)
		} else {
			checkStats(t, "ssh "+name, r, cfg.cmds, true)
		}
	}
	if len(s.Ratios) != 6 {
		t.Errorf("ssh: %d ratios, want 6", len(s.Ratios))
	}
	for _, r := range s.Ratios {
		if r.P50 <= 0 || r.P99 <= 0 {
			t.Errorf("ssh ratio %s: %+v", r.Name, r)
		}
	}

	if len(res.Concurrency) != len(cfg.concurrency) {
		t.Fatalf("concurrency: %d points, want %d", len(res.Concurrency), len(cfg.concurrency))
	}
	for i, p := range res.Concurrency {
		want := cfg.concurrency[i]
		if p.N != want || p.Answered != want || p.Failures != 0 || len(p.Errors) > 0 || len(p.Mem) != want {
			t.Errorf("concurrency %d: N %d, %d answered, %d failed (%q), %d memory readings",
				want, p.N, p.Answered, p.Failures, p.Errors, len(p.Mem))
		}
		checkStats(t, "concurrency start", p.Start, want, true)
		if p.AllReadyMs <= 0 || p.DeleteAllMs <= 0 || p.PSSMaxMiB <= 0 || p.RSSMaxMiB < p.PSSMaxMiB {
			t.Errorf("concurrency %d: all ready %.0f ms, delete all %.0f ms, PSS max %.1f MiB, RSS max %.1f MiB",
				want, p.AllReadyMs, p.DeleteAllMs, p.PSSMaxMiB, p.RSSMaxMiB)
		}
		for _, mem := range p.Mem {
			if mem.PSSMiB <= 0 || mem.GuestRAMMiB <= 0 {
				t.Errorf("concurrency %d: memory %+v", want, mem)
			}
		}
		if tcg && !p.TBSizeBounded {
			t.Errorf("concurrency %d: QEMU ran without tb-size under TCG", want)
		}
	}

	tr := res.Transfer
	if tr == nil {
		t.Fatal("no transfer results")
	}
	if tr.MiB != cfg.transferMiB || tr.Image != cfg.image || tr.UploadMiBps <= 0 || tr.DownloadMiBps <= 0 {
		t.Errorf("transfer: %+v", tr)
	}
	checkStats(t, "upload", tr.Upload, n, true)
	checkStats(t, "download", tr.Download, n, true)

	// Every target but "8 VMs at once" (not asked for) was measured.
	var names []string
	for _, tg := range res.Targets {
		names = append(names, tg.Name)
		if measured := tg.Met != nil; measured != (tg.Name != "concurrency") || tg.Got == "" {
			t.Errorf("target %s: measured %v, got %q", tg.Name, measured, tg.Got)
		}
	}
	if want := []string{"boot_to_ready", "warm_agent_vs_ssh", "idle_vm_memory", "concurrency"}; !slices.Equal(names, want) {
		t.Errorf("targets %v, want %v", names, want)
	}
}

// checkJSON checks that the file --json wrote decodes to res.
func checkJSON(t *testing.T, path string, res *Results) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got Results
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	// The start time loses its monotonic reading and location on the way.
	if !got.Meta.Started.Equal(res.Meta.Started) {
		t.Errorf("json: started %v, want %v", got.Meta.Started, res.Meta.Started)
	}
	want := *res
	want.Meta.Started, got.Meta.Started = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Errorf("json does not decode to the results:\ngot  %s\nwant %s", g, w)
	}
}

// checkPNG checks that path is a PNG image with a size.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("%s: not a PNG (starts %q)", path, b[:min(len(b), 8)])
	}
	c, format, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil || format != "png" || c.Width <= 0 || c.Height <= 0 {
		t.Errorf("%s: %s %dx%d, %v", path, format, c.Width, c.Height, err)
	}
}

// assertNothingLeft checks that the benchmark left no QEMU process (its
// VMs' and the bare runs' all live under the data directory), no VM, no
// bare run directory and no TAP device behind; it kills what it finds.
func assertNothingLeft(t *testing.T, dataDir string) {
	if pids := vmtest.ProcessesOf(dataDir); len(pids) > 0 {
		t.Errorf("QEMU processes left: %v", pids)
		for _, p := range pids {
			vmm.KillProcess(p, 0)
		}
	}
	ctx := context.Background()
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if vms, err := h.List(ctx, smolvm.ListOptions{}); err != nil || len(vms) > 0 {
		t.Errorf("VMs left: %v (%v)", vms, err)
		h.Cleanup(ctx, smolvm.CleanupOptions{All: true})
	}
	ents, _ := os.ReadDir(dataDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "bare-") {
			t.Errorf("bare QEMU directory left: %s", e.Name())
		}
	}
	for _, sub := range []string{"vms", "logs"} {
		if ents, _ := os.ReadDir(filepath.Join(dataDir, sub)); len(ents) > 0 {
			t.Errorf("%s left: %v", sub, ents)
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Error(err)
	}
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, "smol") || i.Name == bareTAP {
			t.Errorf("link left: %s", i.Name)
		}
	}
}
