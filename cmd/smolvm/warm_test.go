package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestWarmTemplateCLI drives the warm path as a user would: the first
// `create --image minimal --start` builds the image's template, later ones
// restore it, --cold and configurations that change the guest's devices
// boot cold, a rebuilt image gets a new template (the old one goes), and a
// killed template build leaves nothing after cleanup. The image is a
// private copy, so changing it touches no other test.
func TestWarmTemplateCLI(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	imgDir := t.TempDir()
	if out, err := exec.Command("cp", "-a", "--sparse=always", filepath.Join(vmtest.CacheDir(), "minimal"), imgDir+"/").CombinedOutput(); err != nil {
		t.Fatalf("copy the minimal image: %v: %s", err, out)
	}
	t.Setenv(smolvm.WarmEnv, "on")
	t.Setenv(smolvm.ImageDirEnv, imgDir)
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
	create := func(id string, extra ...string) (smolvm.VMInfo, result, time.Duration) {
		t.Helper()
		argv := append([]string{"create", "--name", id, "--start", "--json", "--image", "minimal", "--memory", "256", "--vcpus", "1"}, extra...)
		t0 := time.Now()
		r := must(cli(t, dir, argv...), "create "+id)
		d := time.Since(t0)
		var inf smolvm.VMInfo
		if err := json.Unmarshal([]byte(r.stdout), &inf); err != nil || inf.Status != smolvm.StateRunning {
			t.Fatalf("create %s: %v %+v", id, err, r)
		}
		return inf, r, d
	}
	snapDirs := func() []string {
		ents, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	hidden := func(want string) {
		t.Helper()
		var list []smolvm.SnapshotInfo
		r := must(cli(t, dir, "snapshot", "list", "--json"), "snapshot list")
		if json.Unmarshal([]byte(r.stdout), &list) != nil || len(list) != 0 {
			t.Fatalf("templates must not be listed as snapshots: %s", r.stdout)
		}
		r = must(cli(t, dir, "snapshot", "list", "--templates", "--json"), "snapshot list --templates")
		if json.Unmarshal([]byte(r.stdout), &list) != nil || len(list) != 1 || list[0].Name != want || list[0].Image != "minimal" || list[0].MemSizeMiB != 256 {
			t.Fatalf("snapshot list --templates: want only %s: %s", want, r.stdout)
		}
		// A reserved name: no user command reaches it.
		if r := cli(t, dir, "snapshot", "rm", want); r.code != 2 {
			t.Fatalf("snapshot rm of a template: %+v", r)
		}
	}

	// First use: the template is built, then the VM restored from it.
	w1, r, first := create("w1")
	if !strings.HasPrefix(w1.Template, "warm.") || !strings.Contains(r.stderr, "building warm template for image minimal (first use)") {
		t.Fatalf("first create: template %q, stderr:\n%s", w1.Template, r.stderr)
	}
	if got := snapDirs(); len(got) != 1 || got[0] != w1.Template {
		t.Fatalf("snapshot directories after the first create: %v, want [%s]", got, w1.Template)
	}
	hidden(w1.Template)
	// What w1 writes, in memory and on disk, stays w1's: the next VM made
	// from the template does not see it.
	run("w1", "echo w1-disk > /root/from-w1 && sync && mkdir -p /mnt/t && mount -t tmpfs tmpfs /mnt/t && echo w1-only > /mnt/t/f")
	// The same template again, without a build.
	w2, r, second := create("w2")
	if w2.Template != w1.Template || strings.Contains(r.stderr, "building") {
		t.Fatalf("second create: template %q (want %q), stderr:\n%s", w2.Template, w1.Template, r.stderr)
	}
	if out := must(cli(t, dir, "info", "w2"), "info").stdout; !strings.Contains(out, "Template:") || !strings.Contains(out, w1.Template) {
		t.Fatalf("info does not say w2 started warm:\n%s", out)
	}
	// Cold, for comparison: --cold, and a configuration the template does
	// not fit (a grown disk) boot the image.
	c1, _, cold := create("c1", "--cold")
	d1, _, _ := create("d1", "--disk-size", "128")
	for _, inf := range []smolvm.VMInfo{c1, d1} {
		if inf.Template != "" {
			t.Fatalf("%s booted cold but says template %q", inf.VMID, inf.Template)
		}
	}
	t.Logf("create --start: first use (template build + restore) %v, warm %v, cold %v", first.Round(time.Millisecond), second.Round(time.Millisecond), cold.Round(time.Millisecond))

	// Two warm VMs: own identity, own memory.
	if w1.Network.GuestIP() == w2.Network.GuestIP() || w1.Network.GuestMAC() == w2.Network.GuestMAC() {
		t.Fatalf("warm VMs share an address: %+v %+v", w1.Network, w2.Network)
	}
	for _, inf := range []smolvm.VMInfo{w1, w2} {
		want := strings.ToLower(inf.Network.GuestMAC()) + "\ninet " + inf.Network.GuestIP() + "\n" + inf.VMID
		if got := run(inf.VMID, "cat /sys/class/net/eth0/address; ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; hostname"); got != want {
			t.Fatalf("%s: guest identity %q, want %q", inf.VMID, got, want)
		}
	}
	if got := run("w2", "cat /mnt/t/f 2>/dev/null || echo absent; cat /root/from-w1 2>/dev/null || echo absent"); got != "absent\nabsent" {
		t.Fatalf("w2 sees w1's files: %q", got)
	}
	if got := run("w1", "cat /mnt/t/f"); got != "w1-only" {
		t.Fatalf("w1's tmpfs file: %q", got)
	}
	if a, b := run("w1", "head -c 16 /dev/urandom | od -An -tx1"), run("w2", "head -c 16 /dev/urandom | od -An -tx1"); a == b {
		t.Fatalf("warm VMs drew the same random bytes: %s", a)
	}
	for _, id := range []string{"w2", "c1", "d1"} {
		must(cli(t, dir, "delete", id), "delete "+id)
	}

	// The image is built again (here: its manifest changes): the next
	// first start builds a new template. A build killed half-way leaves
	// nothing after cleanup.
	manifest := filepath.Join(imgDir, "minimal", "manifest.json")
	b, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["built_at"] = time.Now().UTC().Format(time.RFC3339Nano)
	b, _ = json.Marshal(m)
	if err := os.WriteFile(manifest, b, 0o644); err != nil {
		t.Fatal(err)
	}
	killed := killDuringBuild(t, dir, "create", "--name", "k1", "--start", "--image", "minimal", "--memory", "256", "--vcpus", "1")
	must(cli(t, dir, "cleanup"), "cleanup after a killed template build")
	var vms []smolvm.VMInfo
	json.Unmarshal([]byte(must(cli(t, dir, "list", "--all", "--json"), "list").stdout), &vms)
	for _, v := range vms {
		if strings.HasPrefix(v.VMID, "warm-") {
			t.Fatalf("killed=%v: a template VM is left after cleanup: %+v", killed, v)
		}
	}
	if got := snapDirs(); len(got) > 2 {
		t.Fatalf("killed=%v: snapshot directories after cleanup: %v", killed, got)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "warm", "*.build")); len(left) != 0 {
		t.Fatalf("killed=%v: build markers after cleanup: %v", killed, left)
	}
	checkConsistent(t, dir)
	cli(t, dir, "delete", "--force", "k1")

	// Two first uses at once build one template.
	type made struct {
		inf smolvm.VMInfo
		r   result
		d   time.Duration
	}
	ch := make(chan made, 1)
	go func() {
		inf, r, d := create("w4")
		ch <- made{inf, r, d}
	}()
	w3, r, rebuilt := create("w3")
	w4 := <-ch
	if w3.Template == "" || w3.Template == w1.Template || w4.inf.Template != w3.Template {
		t.Fatalf("after the image changed: templates %q and %q (old %q), stderr:\n%s\n%s", w3.Template, w4.inf.Template, w1.Template, r.stderr, w4.r.stderr)
	}
	if n := strings.Count(r.stderr+w4.r.stderr, "building warm template"); n != 1 {
		t.Fatalf("two concurrent first uses built %d templates:\n%s\n%s", n, r.stderr, w4.r.stderr)
	}
	if got := snapDirs(); len(got) != 1 || got[0] != w3.Template {
		t.Fatalf("snapshot directories after the rebuild: %v, want only [%s]", got, w3.Template)
	}
	hidden(w3.Template)
	t.Logf("create --start after the image changed (killed=%v), two at once: %v and %v", killed, rebuilt.Round(time.Millisecond), w4.d.Round(time.Millisecond))
	// w1 runs on though its template is gone.
	if got := run("w1", "cat /mnt/t/f; cat /bin/busybox >/dev/null && echo ok"); got != "w1-only\nok" {
		t.Fatalf("w1 after its template was removed: %q", got)
	}
	// Removing the image removes its templates.
	for _, id := range []string{"w1", "w3", "w4"} {
		must(cli(t, dir, "delete", id), "delete "+id)
	}
	must(cli(t, dir, "image", "rm", "minimal"), "image rm")
	if got := snapDirs(); len(got) != 0 {
		t.Fatalf("templates left after image rm: %v", got)
	}
}

// killDuringBuild runs smolvm with argv and SIGKILLs it while it builds a
// warm template (its build marker exists and its template VM boots); it
// reports whether it was killed before it finished.
func killDuringBuild(t *testing.T, dir string, argv ...string) (killed bool) {
	t.Helper()
	cmd := exec.Command(filepath.Join(vmtest.Binaries(t), "smolvm"), append([]string{"--data-dir", dir}, argv...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case <-done:
			return false
		case <-deadline:
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			t.Fatal("no template build seen within 2 minutes")
		case <-time.After(20 * time.Millisecond):
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "warm", "*.build")); len(m) > 0 {
			time.Sleep(700 * time.Millisecond) // the template VM is made and booting
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			return true
		}
	}
}
