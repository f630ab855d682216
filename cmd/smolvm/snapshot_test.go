package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestSnapshotsCLI takes a snapshot of one booted VM and drives clones,
// restore in place, stop --save, bad input and a killed snapshot through
// the CLI. Only the template boots; everything else is restored.
func TestSnapshotsCLI(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	t.Cleanup(func() { cli(t, dir, "cleanup", "--all") })
	must := func(r result, what string) result {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", what, r.code, r.stdout, r.stderr)
		}
		return r
	}
	run := func(id, script string) string {
		t.Helper()
		return strings.TrimSpace(must(cli(t, dir, "exec", id, "--", script), "exec "+id+": "+script).stdout)
	}
	info := func(id string) smolvm.VMInfo {
		t.Helper()
		var inf smolvm.VMInfo
		r := must(cli(t, dir, "info", id, "--json"), "info "+id)
		if err := json.Unmarshal([]byte(r.stdout), &inf); err != nil {
			t.Fatal(err)
		}
		return inf
	}

	// Unknown snapshots: exit 3.
	for _, argv := range [][]string{{"snapshot", "info", "nope"}, {"snapshot", "rm", "nope"}, {"create", "--from-snapshot", "nope"}} {
		if r := cli(t, dir, argv...); r.code != 3 || !strings.Contains(r.stderr, "nope") {
			t.Fatalf("%v: want exit 3 naming it: %+v", argv, r)
		}
	}

	small := []string{"--image", "minimal", "--memory", "256", "--vcpus", "1"}
	must(cli(t, dir, append([]string{"create", "--name", "tpl", "--start"}, small...)...), "create tpl")
	// A stopped VM cannot be snapshotted: exit 4.
	must(cli(t, dir, append([]string{"create", "--name", "idle"}, small...)...), "create idle")
	if r := cli(t, dir, "snapshot", "create", "idle", "--name", "x"); r.code != 4 || !strings.Contains(r.stderr, "running") {
		t.Fatalf("snapshot of a stopped VM: %+v", r)
	}
	must(cli(t, dir, "delete", "idle"), "delete idle")

	// State in memory only: a tmpfs file and a background process.
	run("tpl", "mkdir -p /mnt/t && mount -t tmpfs tmpfs /mnt/t && echo in-memory > /mnt/t/f && echo on-disk > /root/d && sync")
	run("tpl", "setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
	sleepPID := run("tpl", "pidof sleep")
	if sleepPID == "" {
		t.Fatal("no background sleep in the template")
	}

	// A command in flight through the agent while the snapshot is taken
	// (issue 16): it ends normally on the template, with all its output.
	// Its clones resume it mid-way; see below.
	busy := startCLI(t, dir, "exec", "tpl", "--", "echo started; sleep 5; echo late")
	busy.waitLine(t, "started", time.Minute)

	var snap smolvm.SnapshotInfo
	r := must(cli(t, dir, "snapshot", "create", "tpl", "--name", "s1", "--json"), "snapshot create")
	if r := busy.wait(t, time.Minute); r.code != 0 || r.stdout != "started\nlate\n" {
		t.Fatalf("a command in flight during the snapshot, on the template: %+v", r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &snap); err != nil || snap.Name != "s1" || snap.VMID != "tpl" || snap.MemSizeMiB != 256 || snap.SizeBytes <= 0 {
		t.Fatalf("snapshot create --json: %v %+v", err, r)
	}
	t.Logf("snapshot: %d ms pause, %.1f MiB on disk, format %s", snap.PauseMillis, float64(snap.SizeBytes)/(1<<20), snap.Format)
	if got := run("tpl", "cat /mnt/t/f"); got != "in-memory" {
		t.Fatalf("template after the snapshot: %q", got)
	}
	if r := cli(t, dir, "snapshot", "create", "tpl", "--name", "s1"); r.code != 1 || !strings.Contains(r.stderr, "exists") {
		t.Fatalf("duplicate snapshot name: %+v", r)
	}
	var list []smolvm.SnapshotInfo
	r = must(cli(t, dir, "snapshot", "list", "--json"), "snapshot list")
	if json.Unmarshal([]byte(r.stdout), &list) != nil || len(list) != 1 || list[0].Name != "s1" {
		t.Fatalf("snapshot list: %+v", r)
	}
	must(cli(t, dir, "snapshot", "info", "s1"), "snapshot info")

	// Let the snapshot age, so a clone that kept its clock would be behind.
	time.Sleep(3 * time.Second)

	// Different memory size: a clear error, nothing made.
	if r := cli(t, dir, "create", "--from-snapshot", "s1", "--name", "bad", "--memory", "512"); r.code != 2 || !strings.Contains(r.stderr, "mem_size_mib") {
		t.Fatalf("clone with another memory size: %+v", r)
	}

	tplInfo := info("tpl")
	clones := []string{"c1", "c2"}
	seen := map[string]string{tplInfo.Network.GuestIP(): "tpl", tplInfo.Network.GuestMAC(): "tpl"}
	random := map[string]bool{}
	for _, id := range clones {
		start := time.Now()
		var inf smolvm.VMInfo
		r := must(cli(t, dir, "create", "--from-snapshot", "s1", "--name", id, "--start", "--json", "-e", "CLONE="+id), "clone "+id)
		if err := json.Unmarshal([]byte(r.stdout), &inf); err != nil || inf.Status != smolvm.StateRunning || inf.Config.MemSizeMiB != 256 {
			t.Fatalf("clone %s: %v %+v", id, err, r)
		}
		t.Logf("clone %s running in %v", id, time.Since(start))
		ip, mac := inf.Network.GuestIP(), inf.Network.GuestMAC()
		for _, k := range []string{ip, mac} {
			if other, dup := seen[k]; dup {
				t.Fatalf("clone %s shares %s with %s", id, k, other)
			}
			seen[k] = id
		}
		if got := run(id, "cat /mnt/t/f /root/d"); got != "in-memory\non-disk" {
			t.Fatalf("%s: files from before the snapshot: %q", id, got)
		}
		if id == "c1" {
			// The command in flight at the snapshot resumed in the clone
			// but belonged to a session of the template's host: the new
			// session abandoned it, and its output ("late", due about 5 s
			// of guest time after the snapshot) never shows up in a new
			// command's.
			if got := run(id, "sleep 6; echo fresh"); got != "fresh" {
				t.Fatalf("%s: a new command's output after the stale one's end: %q", id, got)
			}
		}
		if got := run(id, "echo $CLONE"); got != id {
			t.Fatalf("%s: env var given at create: %q", id, got)
		}
		if got := run(id, "kill -0 "+sleepPID+" && echo alive"); got != "alive" {
			t.Fatalf("%s: background process: %q", id, got)
		}
		// The guest took its own identity.
		if got := run(id, "cat /sys/class/net/eth0/address; ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; hostname"); got != strings.ToLower(mac)+"\ninet "+ip+"\n"+id {
			t.Fatalf("%s: guest identity %q, want %s %s %s", id, got, mac, ip, id)
		}
		before := time.Now().Unix()
		g, err := strconv.ParseInt(run(id, "date +%s"), 10, 64)
		after := time.Now().Unix()
		if err != nil || g < before-2 || g > after+2 {
			t.Fatalf("%s: guest clock %d, host %d..%d", id, g, before, after)
		}
		// Reseeded: the agent says so on the console, and two clones draw
		// different random bytes.
		if logs := must(cli(t, dir, "logs", id), "logs").stdout; !strings.Contains(logs, "rng reseeded true") {
			t.Errorf("%s: console does not show the RNG reseed:\n%s", id, logs)
		}
		random[run(id, "head -c 16 /dev/urandom | od -An -tx1")] = true
		// Its network works with its own identity (the host's anti-spoofing
		// rules drop anything else): it reaches its gateway.
		if r := cli(t, dir, "exec", id, "--", "ping -c 1 -W 5 "+inf.Network.GatewayIP()); r.code != 0 {
			t.Fatalf("%s: ping of its gateway: %+v", id, r)
		}
	}
	if len(random) != 2 {
		t.Errorf("clones drew the same random bytes: %v", random)
	}
	// Clones cannot reach each other.
	if r := cli(t, dir, "exec", "c1", "--", "ping -c 1 -W 2 "+info("c2").Network.GuestIP()); r.code == 0 {
		t.Errorf("c1 reached c2: %+v", r)
	}

	// A snapshot that a not-yet-started clone needs cannot be removed.
	must(cli(t, dir, "create", "--from-snapshot", "s1", "--name", "later"), "clone not started")
	if r := cli(t, dir, "snapshot", "rm", "s1"); r.code != 4 || !strings.Contains(r.stderr, "later") {
		t.Fatalf("rm of a snapshot a pending clone needs: %+v", r)
	}
	must(cli(t, dir, "delete", "later"), "delete later")

	// Restore in place brings back deleted files. A command in flight
	// meanwhile fails at once with a clear error (it ran in the guest
	// that the restore threw away), and the next command works.
	run("tpl", "rm /mnt/t/f /root/d; echo gone > /root/new")
	busy = startCLI(t, dir, "exec", "tpl", "--", "echo started; sleep 60; echo late")
	busy.waitLine(t, "started", time.Minute)
	must(cli(t, dir, "snapshot", "restore", "tpl", "s1"), "restore")
	r = busy.wait(t, 20*time.Second)
	if r.code == 0 || strings.Contains(r.stdout, "late") || !strings.Contains(r.stderr, "tpl") {
		t.Fatalf("a command in flight during a restore: %+v", r)
	}
	t.Logf("in flight during a restore: exit %d: %s", r.code, strings.TrimSpace(r.stderr))
	if got := run("tpl", "cat /mnt/t/f /root/d; ls /root/new 2>&1 || true"); !strings.HasPrefix(got, "in-memory\non-disk\n") || !strings.Contains(got, "No such file") {
		t.Fatalf("after restore: %q", got)
	}
	if got := info("tpl"); got.Network.GuestIP() != tplInfo.Network.GuestIP() || got.Status != smolvm.StateRunning {
		t.Fatalf("restored VM changed identity: %+v", got)
	}

	// stop --save frees the VMM; start resumes with the tmpfs intact.
	run("c1", "echo saved-too >> /mnt/t/f")
	must(cli(t, dir, "stop", "--save", "c1"), "stop --save")
	if inf := info("c1"); !inf.Saved || inf.Status != smolvm.StateStopped || inf.PID != 0 {
		t.Fatalf("saved VM info: %+v", inf)
	}
	must(cli(t, dir, "start", "c1"), "start saved")
	if got := run("c1", "cat /mnt/t/f"); got != "in-memory\nsaved-too" {
		t.Fatalf("after resume: %q", got)
	}
	if inf := info("c1"); inf.Saved || inf.Status != smolvm.StateRunning {
		t.Fatalf("resumed VM info: %+v", inf)
	}

	// Removing a snapshot that running clones came from is safe: their
	// memory maps keep the pages.
	must(cli(t, dir, "snapshot", "rm", "s1"), "rm s1")
	if got := run("c2", "cat /mnt/t/f; cat /bin/busybox > /dev/null && echo ok"); got != "in-memory\nok" {
		t.Fatalf("clone after its snapshot was removed: %q", got)
	}

	// A snapshot of a clone (its RAM is a private mapping: saved in the
	// state), tampered with and truncated: clear errors, nothing made.
	must(cli(t, dir, "snapshot", "create", "c2", "--name", "s2"), "snapshot of a clone")
	var s2 smolvm.SnapshotInfo
	json.Unmarshal([]byte(must(cli(t, dir, "snapshot", "info", "s2", "--json"), "info s2").stdout), &s2)
	state := filepath.Join(s2.Path, "state")
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	os.WriteFile(state, b, 0o600)
	if r := cli(t, dir, "create", "--from-snapshot", "s2", "--name", "bad", "--start"); r.code == 0 || !strings.Contains(r.stderr, "modified") {
		t.Fatalf("tampered snapshot: %+v", r)
	}
	os.Truncate(state, int64(len(b)/2))
	if r := cli(t, dir, "create", "--from-snapshot", "s2", "--name", "bad", "--start"); r.code == 0 || !strings.Contains(r.stderr, "truncated") {
		t.Fatalf("truncated snapshot: %+v", r)
	}
	if r := cli(t, dir, "info", "bad"); r.code != 3 {
		t.Fatalf("a refused clone was left: %+v", r)
	}
	must(cli(t, dir, "snapshot", "rm", "s2"), "rm s2")

	// SIGKILL during snapshot create: after cleanup nothing is half-made
	// and the VM runs.
	for _, d := range []time.Duration{150 * time.Millisecond, 400 * time.Millisecond} {
		killed := killAfter(t, dir, d, "snapshot", "create", "tpl", "--name", "k")
		must(cli(t, dir, "cleanup"), "cleanup")
		ents, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		r := must(cli(t, dir, "snapshot", "list", "--json"), "list")
		json.Unmarshal([]byte(r.stdout), &list)
		switch {
		case len(list) == 0 && len(names) == 0:
		case len(list) == 1 && len(names) == 1 && names[0] == "k":
			must(cli(t, dir, "snapshot", "rm", "k"), "rm k")
		default:
			t.Fatalf("killed=%v after %v: snapshots %v, files %v", killed, d, list, names)
		}
		if got := run("tpl", "cat /mnt/t/f"); got != "in-memory" || info("tpl").Status != smolvm.StateRunning {
			t.Fatalf("template after a killed snapshot: %q", got)
		}
	}
	// SIGKILL during a clone's create or restore: after cleanup the clone
	// is gone or stopped, and a start brings it up.
	must(cli(t, dir, "snapshot", "create", "tpl", "--name", "s3"), "snapshot s3")
	for i, d := range []time.Duration{300 * time.Millisecond, 900 * time.Millisecond} {
		id := fmt.Sprintf("kc%d", i)
		killed := killAfter(t, dir, d, "create", "--from-snapshot", "s3", "--name", id, "--start")
		must(cli(t, dir, "cleanup"), "cleanup")
		r := cli(t, dir, "info", id, "--json")
		if r.code == 3 {
			continue // the create was undone
		}
		var inf smolvm.VMInfo
		json.Unmarshal([]byte(r.stdout), &inf)
		if inf.Status != smolvm.StateRunning {
			must(cli(t, dir, "start", id), fmt.Sprintf("start %s (killed=%v after %v, status %s)", id, killed, d, inf.Status))
		}
		if got := run(id, "cat /mnt/t/f"); got != "in-memory" {
			t.Fatalf("%s after a killed clone: %q", id, got)
		}
		must(cli(t, dir, "delete", id), "delete "+id)
	}
	must(cli(t, dir, "snapshot", "rm", "s3"), "rm s3")

	// SIGKILL during stop --save: after cleanup the VM runs or is saved,
	// and it comes back with its memory either way.
	for _, d := range []time.Duration{200 * time.Millisecond, 600 * time.Millisecond} {
		killed := killAfter(t, dir, d, "stop", "--save", "c2")
		must(cli(t, dir, "cleanup"), "cleanup")
		if inf := info("c2"); inf.Status != smolvm.StateRunning {
			must(cli(t, dir, "start", "c2"), fmt.Sprintf("start c2 (killed=%v after %v, status %s, saved %v)", killed, d, inf.Status, inf.Saved))
		}
		if got := run("c2", "cat /mnt/t/f"); got != "in-memory" {
			t.Fatalf("c2 after a killed stop --save: %q", got)
		}
		if _, err := os.Stat(filepath.Join(dir, "vms", "c2", "saved.tmp")); err == nil {
			t.Fatal("cleanup left saved.tmp")
		}
	}
	for _, id := range []string{"tpl", "c1", "c2"} {
		must(cli(t, dir, "delete", id), fmt.Sprint("delete ", id))
	}
}
