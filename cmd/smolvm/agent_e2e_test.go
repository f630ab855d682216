package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestAgentFeatures drives terminals, background processes, the
// filesystem API and directory transfers on one real VM, through the CLI
// (each command a separate host process) and the SDK.
func TestAgentFeatures(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	t.Cleanup(func() {
		if r := cli(t, dir, "delete", "--force", "a1"); r.code != 0 || t.Failed() {
			cli(t, dir, "cleanup", "--all")
		}
	})
	// Host folders: bad input first, then a VM with one read-write and one
	// read-only folder.
	rw, ro := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(ro, "hello"), []byte("from host\n"), 0o644)
	for _, c := range []struct {
		argv []string
		code int
		want string
	}{
		{[]string{"--mount", "/no/such/dir:/mnt/x"}, 2, "/no/such/dir"},
		{[]string{"--mount", rw + ":mnt/x"}, 2, "absolute"},
		{[]string{"--mount", rw + ":/mnt/x:rx"}, 2, "mounts"},
		{[]string{"--mount", rw + ":/"}, 2, "guest path"},
		{[]string{"--mount", rw + ":/mnt/x", "--backend", "firecracker"}, 5, "not supported"},
	} {
		r := cli(t, dir, append([]string{"create", "--name", "bad", "--image", "minimal"}, c.argv...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("create %v: want exit %d and %q, got %+v", c.argv, c.code, c.want, r)
		}
	}
	if r := cli(t, dir, "list", "--all", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("bad mounts left something: %s", r.stdout)
	}
	if r := cli(t, dir, "create", "--name", "a1", "--start", "--image", "minimal", "--memory", "384", "--vcpus", "1",
		"--mount", rw+":/mnt/rw", "--mount", ro+":/mnt/ro:ro"); r.code != 0 {
		t.Fatalf("create: %+v", r)
	}
	// The minimal image's disk has few inodes: the trees live on a tmpfs.
	if r := cli(t, dir, "exec", "a1", "--", "mkdir -p /work && mount -t tmpfs -o size=160m,nr_inodes=60000 tmpfs /work"); r.code != 0 {
		t.Fatalf("tmpfs: %+v", r)
	}
	ctx := context.Background()
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vm, err := h.Get(ctx, "a1")
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Release()

	t.Run("host-folders", func(t *testing.T) { testHostFolders(t, dir, rw, ro) })
	t.Run("terminal", func(t *testing.T) { testTerminal(t, vm) })
	vm.Release()
	t.Run("shell-cli", func(t *testing.T) {
		r := cliIn(t, dir, "echo in-$((2+3))\nexit 3\n", "shell", "a1")
		if r.code != 3 || !strings.Contains(r.stdout, "in-5") {
			t.Fatalf("shell: %+v", r)
		}
		r = cli(t, dir, "exec", "-t", "a1", "--", "tty; exit 4")
		if r.code != 4 || !regexp.MustCompile(`/dev/pts/\d+`).MatchString(r.stdout) {
			t.Fatalf("exec -t: %+v", r)
		}
	})
	t.Run("shell-tty", func(t *testing.T) { testShellTTY(t, dir) })
	t.Run("background-server", func(t *testing.T) { testBackgroundServer(t, dir, vm) })
	vm.Release()
	t.Run("detached-output", func(t *testing.T) {
		r := cli(t, dir, "exec", "--detach", "a1", "--", "echo one; echo two >&2; sleep 2; echo three; exit 7")
		pid, err := strconv.Atoi(strings.TrimSpace(r.stdout))
		if r.code != 0 || err != nil {
			t.Fatalf("exec --detach: %+v", r)
		}
		time.Sleep(500 * time.Millisecond) // some output before the attachment, most likely
		r = cli(t, dir, "attach", "a1", strconv.Itoa(pid))
		if r.code != 7 || r.stdout != "one\nthree\n" || r.stderr != "two\n" {
			t.Fatalf("attach: %+v", r)
		}
	})
	t.Run("bad-input", func(t *testing.T) {
		for _, c := range []struct {
			argv []string
			code int
			want string
		}{
			{[]string{"attach", "a1", "999999"}, 3, "999999"},
			{[]string{"kill", "a1", "999999"}, 3, "999999"},
			{[]string{"kill", "a1", "abc"}, 2, "pid"},
			{[]string{"file", "stat", "a1", "relative/path"}, 2, "absolute"},
			{[]string{"file", "ls", "a1", "tmp"}, 2, "absolute"},
			{[]string{"file", "stat", "a1", "/no/such/file"}, 3, "no such file"},
			{[]string{"port", "wait", "a1", "70000"}, 2, "port"},
			{[]string{"port", "wait", "a1", "9", "--timeout", "1s"}, 6, "port wait"},
		} {
			r := cli(t, dir, c.argv...)
			if r.code != c.code || !strings.Contains(strings.ToLower(r.stderr), c.want) {
				t.Errorf("%v: want exit %d and %q, got %+v", c.argv, c.code, c.want, r)
			}
		}
	})
	tree := t.TempDir()
	t.Run("filesystem", func(t *testing.T) { testFilesystem(t, vm, tree) })
	vm.Release()
	t.Run("cli-files", func(t *testing.T) { testCLIFiles(t, dir, tree) })
	t.Run("hostile-tar", func(t *testing.T) { testHostileTar(t, vm) })
}

// syncBuffer collects a terminal's output for expect-style matching.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// expect waits for re to match the output after offset from, and returns
// the offset after the match.
func expect(t *testing.T, b *syncBuffer, from int, re string) (int, []string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		s := b.String()
		if loc := rx.FindStringSubmatchIndex(s[from:]); loc != nil {
			m := rx.FindStringSubmatch(s[from:])
			return from + loc[1], m
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q in terminal output %q", re, b.String()[from:])
	return 0, nil
}

func testTerminal(t *testing.T, vm *smolvm.VM) {
	ctx := context.Background()
	term, err := vm.Terminal(ctx, smolvm.TerminalOptions{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	out := &syncBuffer{}
	copied := make(chan error, 1)
	go func() { _, err := io.Copy(out, term); copied <- err }()
	type_ := func(s string) {
		if _, err := term.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	type_("tty\n")
	off, _ := expect(t, out, 0, `(/dev/pts/\d+)`)
	type_("stty size\n")
	off, _ = expect(t, out, off, `\n24 80\r?\n`)
	if err := term.Resize(ctx, 40, 132); err != nil {
		t.Fatal(err)
	}
	type_("stty size\n")
	off, _ = expect(t, out, off, `\n40 132\r?\n`)
	// Ctrl-C interrupts the foreground job; the shell carries on.
	start := time.Now()
	type_("sleep 100\n")
	time.Sleep(300 * time.Millisecond)
	type_("\x03")
	type_("echo after-$((20+1)) $?\n")
	off, _ = expect(t, out, off, `after-21`)
	if d := time.Since(start); d > 90*time.Second {
		t.Fatalf("Ctrl-C did not interrupt sleep 100 (%v)", d)
	}
	type_("exit 3\n")
	if err := <-copied; err != nil {
		t.Fatalf("terminal read: %v", err)
	}
	st, err := term.Wait(ctx)
	if err != nil || st.ExitCode != 3 {
		t.Fatalf("exit 3: %+v %v (output %q)", st, err, out.String()[off:])
	}
}

func testBackgroundServer(t *testing.T, dir string, vm *smolvm.VM) {
	if r := cli(t, dir, "exec", "a1", "--", "mkdir -p /www && echo hello-from-guest > /www/index.html"); r.code != 0 {
		t.Fatalf("prepare: %+v", r)
	}
	// One host process starts the server and exits.
	r := cli(t, dir, "exec", "--detach", "--tag", "web", "a1", "--", "httpd", "-f", "-p", "8080", "-h", "/www")
	pid, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if r.code != 0 || err != nil {
		t.Fatalf("exec --detach: %+v", r)
	}
	if r := cli(t, dir, "port", "wait", "a1", "8080", "--timeout", "60s"); r.code != 0 {
		t.Fatalf("port wait: %+v", r)
	}
	r = cli(t, dir, "ps", "a1", "--json")
	var ps []smolvm.ProcessInfo
	if err := json.Unmarshal([]byte(r.stdout), &ps); err != nil {
		t.Fatalf("ps --json: %v %+v", err, r)
	}
	var raw []map[string]any
	json.Unmarshal([]byte(r.stdout), &raw)
	found := false
	for i, p := range ps {
		if p.Pid == pid {
			found = true
			if p.Tag != "web" || !strings.Contains(p.Command, "httpd") || !p.Running || time.Since(p.StartedAt) > time.Hour || p.StartedAt.IsZero() {
				t.Fatalf("ps entry: %+v", p)
			}
			for _, k := range []string{"pid", "command", "started_at", "tag"} {
				if _, ok := raw[i][k]; !ok {
					t.Fatalf("ps --json lacks %q: %s", k, r.stdout)
				}
			}
		}
	}
	if !found {
		t.Fatalf("pid %d not in ps: %s", pid, r.stdout)
	}
	if r := cli(t, dir, "ps", "a1"); !strings.Contains(r.stdout, "httpd") || !strings.Contains(r.stdout, "web") {
		t.Fatalf("ps: %+v", r)
	}
	// Reached through an exposed port after the starting process is gone.
	r = cli(t, dir, "port", "expose", "a1", "8080", "--json")
	var fw struct {
		HostPort int `json:"host_port"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &fw); err != nil || fw.HostPort == 0 {
		t.Fatalf("port expose: %+v", r)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/", fw.HostPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	resp.Body.Close()
	if string(body) != "hello-from-guest\n" {
		t.Fatalf("GET: %d %q", resp.StatusCode, body)
	}
	// Killed by another host process.
	if r := cli(t, dir, "kill", "a1", strconv.Itoa(pid)); r.code != 0 {
		t.Fatalf("kill: %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := vm.WaitProcess(ctx, pid)
	if err != nil || st.ExitCode != 143 || st.Signal != "SIGTERM" {
		t.Fatalf("wait after kill: %+v %v", st, err)
	}
	if _, err := vm.WaitProcess(ctx, pid); !errors.Is(err, smolvm.ErrNotFound) {
		t.Fatalf("second wait: %v", err)
	}
	// Latency of ps through the SDK (warm connection).
	vm.Processes(ctx)
	t0 := time.Now()
	for range 20 {
		if _, err := vm.Processes(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("METRIC ps (SDK, warm): %v per call", time.Since(t0)/20)
	vm.Release() // the CLI would wait for the handle's channel
	t0 = time.Now()
	cli(t, dir, "ps", "a1")
	t.Logf("METRIC ps (CLI process): %v", time.Since(t0))
}

// oddNames are file names a tree must survive.
var oddNames = []string{"with space", "ünïcödé ☃", "new\nline", "tab\there", "-dash", "quote'\"", "back\\slash"}

// makeTree writes a host tree with odd names, symlinks, modes and many files.
func makeTree(t *testing.T, root string, many int) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub", "deeper"), 0o755))
	for i, n := range oddNames {
		must(os.WriteFile(filepath.Join(root, n), []byte(fmt.Sprintf("content %d of %q\n", i, n)), 0o644))
	}
	must(os.WriteFile(filepath.Join(root, "sub", "exec.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "sub", "private"), []byte("secret"), 0o600))
	must(os.WriteFile(filepath.Join(root, "sub", "deeper", "empty"), nil, 0o640))
	must(os.Symlink("with space", filepath.Join(root, "link-to-file")))
	must(os.Symlink("sub/deeper", filepath.Join(root, "link-to-dir")))
	must(os.Symlink("/nonexistent/target", filepath.Join(root, "dangling")))
	must(os.MkdirAll(filepath.Join(root, "big"), 0o755))
	for i := range many {
		must(os.WriteFile(filepath.Join(root, "big", fmt.Sprintf("f%05d", i)), []byte(strconv.Itoa(i)), 0o644))
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(root, "sub", "exec.sh"), old, old))
}

// treeOf describes a host tree: path -> type, mode, link target or content hash.
func treeOf(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			tgt, _ := os.Readlink(p)
			out[rel] = "link " + tgt
		case d.IsDir():
			if rel != "." {
				out[rel] = fmt.Sprintf("dir %o", fi.Mode().Perm())
			}
		default:
			b, _ := os.ReadFile(p)
			out[rel] = fmt.Sprintf("file %o %q", fi.Mode().Perm(), b)
			if strings.HasSuffix(rel, "exec.sh") {
				out[rel] += " " + fi.ModTime().UTC().Format(time.RFC3339)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func testFilesystem(t *testing.T, vm *smolvm.VM, tree string) {
	ctx := context.Background()
	const many = 10000
	makeTree(t, tree, many)
	var size int64
	filepath.WalkDir(tree, func(p string, d fs.DirEntry, _ error) error {
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			size += fi.Size()
		}
		return nil
	})
	// A bigger file makes the throughput figure mean something.
	blob := bytes.Repeat([]byte("0123456789abcdef"), 8<<20/16)
	os.WriteFile(filepath.Join(tree, "blob.bin"), blob, 0o644)
	size += int64(len(blob))

	t0 := time.Now()
	st, err := vm.UploadDir(ctx, tree, "/work/tree")
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(t0)
	t.Logf("METRIC upload dir: %d entries, %d bytes in %v = %.1f MiB/s, %.0f entries/s", st.Entries, st.Bytes, d,
		float64(st.Bytes)/d.Seconds()/(1<<20), float64(st.Entries)/d.Seconds())
	if st.Bytes != size {
		t.Fatalf("uploaded %d bytes, tree has %d", st.Bytes, size)
	}

	// Throughput on big files.
	bigDir := t.TempDir()
	for i := range 4 {
		os.WriteFile(filepath.Join(bigDir, fmt.Sprintf("b%d", i)), blob, 0o644)
	}
	t0 = time.Now()
	st, err = vm.UploadDir(ctx, bigDir, "/work/bigfiles")
	if err != nil {
		t.Fatal(err)
	}
	d = time.Since(t0)
	t.Logf("METRIC upload dir of 4 x 8 MiB: %v = %.1f MiB/s", d, float64(st.Bytes)/d.Seconds()/(1<<20))
	vm.RemoveAll(ctx, "/work/bigfiles")

	// list of 10,000 entries.
	vm.Stat(ctx, "/root")
	t0 = time.Now()
	big, err := vm.List(ctx, "/work/tree/big", smolvm.ListFilesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("METRIC list of %d entries: %v", len(big), time.Since(t0))
	if len(big) != many || big[0].Name != "f00000" || big[many-1].Path != "/work/tree/big/f09999" || big[1].Size != 1 || big[1].Type != "file" {
		t.Fatalf("list big: %d entries, first %+v", len(big), big[0])
	}
	// list with depth: every entry of the host tree, odd names intact.
	all, err := vm.List(ctx, "/work/tree", smolvm.ListFilesOptions{Depth: 3})
	if err != nil {
		t.Fatal(err)
	}
	want := treeOf(t, tree)
	got := map[string]smolvm.FileInfo{}
	for _, fi := range all {
		got[strings.TrimPrefix(fi.Path, "/work/tree/")] = fi
	}
	if len(got) != len(want) {
		t.Fatalf("list depth 3: %d entries, host tree has %d", len(got), len(want))
	}
	for rel, w := range want {
		fi, ok := got[rel]
		if !ok {
			t.Fatalf("list lacks %q", rel)
		}
		kind, _, _ := strings.Cut(w, " ")
		if map[string]string{"link": "symlink", "dir": "dir", "file": "file"}[kind] != fi.Type {
			t.Fatalf("%q: %+v, want %s", rel, fi, w)
		}
	}
	// depth 1 does not descend.
	top, err := vm.List(ctx, "/work/tree", smolvm.ListFilesOptions{Depth: 1})
	if err != nil || len(top) != len(oddNames)+6 {
		t.Fatalf("depth 1: %d entries, %v", len(top), err)
	}

	// stat, exists.
	fi, err := vm.Stat(ctx, "/work/tree/new\nline")
	if err != nil || fi.Type != "file" || fi.Mode != 0o644 || fi.Name != "new\nline" {
		t.Fatalf("stat odd name: %+v %v", fi, err)
	}
	fi, err = vm.Stat(ctx, "/work/tree/link-to-dir")
	if err != nil || fi.Type != "symlink" || fi.SymlinkTarget != "sub/deeper" {
		t.Fatalf("stat symlink: %+v %v", fi, err)
	}
	fi, err = vm.Stat(ctx, "/work/tree/sub/exec.sh")
	if err != nil || fi.Mode != 0o755 || !fi.ModTime.Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("stat mode/mtime: %+v %v", fi, err)
	}
	t0 = time.Now()
	for range 20 {
		if _, err := vm.Stat(ctx, "/work/tree/ünïcödé ☃"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("METRIC stat (SDK, warm): %v per call", time.Since(t0)/20)
	if ok, err := vm.Exists(ctx, "/work/tree/dangling"); !ok || err != nil {
		t.Fatalf("exists dangling link: %v %v", ok, err)
	}
	if ok, err := vm.Exists(ctx, "/work/tree/nope"); ok || err != nil {
		t.Fatalf("exists missing: %v %v", ok, err)
	}
	if _, err := vm.Stat(ctx, "/work/tree/nope"); !errors.Is(err, smolvm.ErrNotFound) {
		t.Fatalf("stat missing: %v", err)
	}
	var ce *smolvm.ConfigError
	if _, err := vm.Stat(ctx, "root/tree"); !errors.Is(err, smolvm.ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != "path" {
		t.Fatalf("stat relative: %v", err)
	}

	// mkdir -p, write, read, move, remove.
	if err := vm.MkdirAll(ctx, "/work/tree/new/a/b", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := vm.MkdirAll(ctx, "/work/tree/new/a/b", 0); err != nil {
		t.Fatalf("mkdir -p of an existing dir: %v", err)
	}
	if err := vm.WriteFile(ctx, "/work/tree/new/a/b/f ☃.txt", []byte("data\x00\xff"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := vm.ReadFile(ctx, "/work/tree/new/a/b/f ☃.txt", 0); err != nil || string(b) != "data\x00\xff" {
		t.Fatalf("read: %q %v", b, err)
	}
	if _, err := vm.ReadFile(ctx, "/work/tree/blob.bin", 1024); err == nil {
		t.Fatal("ReadFile past its bound succeeded")
	}
	if err := vm.Move(ctx, "/work/tree/new/a", "/work/tree/moved"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := vm.Exists(ctx, "/work/tree/moved/b/f ☃.txt"); !ok {
		t.Fatal("move lost the file")
	}
	if err := vm.Remove(ctx, "/work/tree/moved"); err == nil {
		t.Fatal("non-recursive remove of a non-empty directory succeeded")
	}
	if err := vm.RemoveAll(ctx, "/work/tree/moved"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := vm.Exists(ctx, "/work/tree/moved"); ok {
		t.Fatal("RemoveAll left the directory")
	}
	vm.RemoveAll(ctx, "/work/tree/new")

	// watch: events for changes made after Watch returns.
	if err := vm.MkdirAll(ctx, "/work/watched", 0); err != nil {
		t.Fatal(err)
	}
	w, err := vm.Watch(ctx, "/work/watched", smolvm.WatchOptions{Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.WriteFile(ctx, "/work/watched/new file", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := vm.Remove(ctx, "/work/watched/new file"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var ops []string
	for !strings.Contains(strings.Join(ops, ","), "removed /work/watched/new file") {
		ev, err := w.Next(wctx)
		if err != nil {
			t.Fatalf("watch: %v after %v", err, ops)
		}
		ops = append(ops, ev.Op+" "+ev.Path)
	}
	if !strings.Contains(strings.Join(ops, ","), "/work/watched/new file") {
		t.Fatalf("watch events: %v", ops)
	}
	w.Close()

	// Round trip: download the tree and compare modes, links and contents.
	back := filepath.Join(t.TempDir(), "back")
	t0 = time.Now()
	if _, err := vm.DownloadDir(ctx, "/work/tree", back); err != nil {
		t.Fatal(err)
	}
	t.Logf("METRIC download dir: %v", time.Since(t0))
	gotTree := treeOf(t, back)
	if len(gotTree) != len(want) {
		t.Fatalf("round trip: %d entries, want %d", len(gotTree), len(want))
	}
	var diffs []string
	for k, v := range want {
		if gotTree[k] != v {
			diffs = append(diffs, fmt.Sprintf("%q: got %s want %s", k, gotTree[k], v))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("round trip differs: %v", diffs[:min(5, len(diffs))])
	}
}

func testCLIFiles(t *testing.T, dir, tree string) {
	t0 := time.Now()
	r := cli(t, dir, "file", "ls", "a1", "/work/tree/big", "--json")
	t.Logf("METRIC file ls --json of 10,000 entries (CLI process): %v, %d bytes", time.Since(t0), len(r.stdout))
	t0 = time.Now()
	if r := cli(t, dir, "file", "stat", "a1", "/work/tree/big/f00001"); r.code != 0 {
		t.Fatalf("stat: %+v", r)
	}
	t.Logf("METRIC file stat (CLI process): %v", time.Since(t0))
	if r := cli(t, dir, "file", "mkdir", "a1", "/work/c/d/e", "/work/c/x"); r.code != 0 {
		t.Fatalf("mkdir: %+v", r)
	}
	if r := cli(t, dir, "file", "mv", "a1", "/work/c/x", "/work/c/y"); r.code != 0 {
		t.Fatalf("mv: %+v", r)
	}
	r = cli(t, dir, "file", "ls", "a1", "/work/c", "--json", "--depth", "2")
	var ents []smolvm.FileInfo
	if err := json.Unmarshal([]byte(r.stdout), &ents); err != nil || len(ents) != 3 {
		t.Fatalf("ls --json: %+v", r)
	}
	if r := cli(t, dir, "file", "ls", "a1", "/work/c"); r.stdout != "d\ny\n" {
		t.Fatalf("ls: %+v", r)
	}
	r = cli(t, dir, "file", "stat", "a1", "/work/c/y", "--json")
	var fi map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &fi); err != nil || fi["type"] != "dir" || fi["path"] != "/work/c/y" || fi["mode"] != float64(0o755) {
		t.Fatalf("stat --json: %+v", r)
	}
	if r := cli(t, dir, "file", "rm", "a1", "/work/c"); r.code == 0 {
		t.Fatalf("rm of a non-empty dir without -r: %+v", r)
	}
	if r := cli(t, dir, "file", "rm", "-r", "a1", "/work/c"); r.code != 0 {
		t.Fatalf("rm -r: %+v", r)
	}
	if r := cli(t, dir, "file", "stat", "a1", "/work/c"); r.code != 3 {
		t.Fatalf("stat after rm: %+v", r)
	}
	// Directories through the CLI.
	small := t.TempDir()
	os.MkdirAll(filepath.Join(small, "x y"), 0o750)
	os.WriteFile(filepath.Join(small, "x y", "ünï"), []byte("u"), 0o604)
	os.Symlink("x y/ünï", filepath.Join(small, "ln"))
	if r := cli(t, dir, "file", "upload", "a1", small, "/work/small"); r.code != 0 {
		t.Fatalf("upload dir: %+v", r)
	}
	back := filepath.Join(t.TempDir(), "back")
	if r := cli(t, dir, "file", "download", "a1", "/work/small", back); r.code != 0 {
		t.Fatalf("download dir: %+v", r)
	}
	w, g := treeOf(t, small), treeOf(t, back)
	if fmt.Sprint(w) != fmt.Sprint(g) {
		t.Fatalf("cli round trip: %v != %v", g, w)
	}
}

// testHostileTar feeds the SDK's extractor a tar stream read from the
// guest that tries to escape its target.
func testHostileTar(t *testing.T, vm *smolvm.VM) {
	ctx := context.Background()
	for _, name := range []string{"../escaped", "/abs-escaped", "ok/../../escaped2"} {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		tw.WriteHeader(&tar.Header{Name: "fine", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
		tw.Write([]byte("x"))
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 4, Typeflag: tar.TypeReg})
		tw.Write([]byte("evil"))
		tw.Close()
		if err := vm.WriteFile(ctx, "/work/evil.tar", b.Bytes(), 0); err != nil {
			t.Fatal(err)
		}
		parent := t.TempDir()
		dst := filepath.Join(parent, "dst")
		os.Mkdir(dst, 0o755)
		pr, pw := io.Pipe()
		go func() {
			_, err := vm.Download(ctx, "/work/evil.tar", pw)
			pw.CloseWithError(err)
		}()
		_, err := smolvm.ExtractTar(ctx, pr, dst)
		pr.Close()
		if err == nil {
			t.Fatalf("tar entry %q accepted", name)
		}
		for _, p := range []string{filepath.Join(parent, "escaped"), "/abs-escaped", filepath.Join(parent, "escaped2")} {
			if _, err := os.Lstat(p); err == nil {
				os.Remove(p)
				t.Fatalf("tar entry %q escaped to %s", name, p)
			}
		}
	}
}

func testHostFolders(t *testing.T, dir, rw, ro string) {
	r := cli(t, dir, "info", "a1", "--json")
	var inf smolvm.VMInfo
	if err := json.Unmarshal([]byte(r.stdout), &inf); err != nil || len(inf.Mounts) != 2 || inf.Mounts[1].GuestPath != "/mnt/ro" || !inf.Mounts[1].ReadOnly {
		t.Fatalf("info --json mounts: %v %+v", err, r)
	}
	if r := cli(t, dir, "exec", "a1", "--", "cat /mnt/ro/hello"); r.code != 0 || r.stdout != "from host\n" {
		t.Fatalf("read ro folder: %+v", r)
	}
	// Read-write: the guest's writes appear on the host.
	if r := cli(t, dir, "exec", "a1", "--", "mkdir /mnt/rw/sub && echo from guest > /mnt/rw/sub/f"); r.code != 0 {
		t.Fatalf("write rw folder: %+v", r)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "sub", "f")); err != nil || string(b) != "from guest\n" {
		t.Fatalf("host sees %q %v", b, err)
	}
	os.WriteFile(filepath.Join(rw, "from-host"), []byte("h"), 0o644)
	if r := cli(t, dir, "exec", "a1", "--", "cat /mnt/rw/from-host"); r.stdout != "h" {
		t.Fatalf("guest sees host write: %+v", r)
	}
	// Read-only: root in the guest cannot write, not even after remounting
	// its side read-write.
	if r := cli(t, dir, "exec", "a1", "--", "echo x > /mnt/ro/nope"); r.code == 0 {
		t.Fatalf("write to ro folder succeeded: %+v", r)
	}
	r = cli(t, dir, "exec", "a1", "--", "mount -o remount,rw /mnt/ro; echo x > /mnt/ro/nope2 || exit 9; exit 0")
	if r.code != 9 {
		t.Fatalf("write after remount rw: %+v", r)
	}
	if r := cli(t, dir, "exec", "a1", "--", "rm -f /mnt/ro/hello; chmod 777 /mnt/ro/hello; touch /mnt/ro/hello; true"); r.code != 0 {
		t.Fatalf("exec: %+v", r)
	}
	ents, _ := os.ReadDir(ro)
	if fi, err := os.Stat(filepath.Join(ro, "hello")); len(ents) != 1 || err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("ro folder changed on the host: %v %v", ents, fi)
	}
}

// openPty returns a new pseudo-terminal pair.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m, s
}

// testShellTTY runs `smolvm shell` on a host pseudo-terminal, as a user at
// a terminal would: raw mode (Ctrl-C reaches the guest instead of killing
// smolvm), the window size and its changes (SIGWINCH) follow.
func testShellTTY(t *testing.T, dir string) {
	m, s := openPty(t)
	defer m.Close()
	unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 30, Col: 100})
	cmd := exec.Command(filepath.Join(vmtest.Binaries(t), "smolvm"), "--data-dir", dir, "shell", "a1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.Env = append(os.Environ(), "TERM=xterm")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	out := &syncBuffer{}
	go io.Copy(out, m)
	type_ := func(s string) {
		if _, err := m.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	type_("stty size; echo $TERM\n")
	off, _ := expect(t, out, 0, `\n30 100\r?\nxterm\r?\n`)
	// A new size: the kernel sends smolvm SIGWINCH, smolvm resizes the guest's terminal.
	unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 50, Col: 120})
	deadline := time.Now().Add(30 * time.Second)
	for {
		type_("stty size\n")
		var m []string
		off, m = expect(t, out, off, `\n(\d+ \d+)\r?\n`)
		if m[1] == "50 120" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("size after SIGWINCH: %s", m[1])
		}
		time.Sleep(200 * time.Millisecond)
	}
	type_("sleep 100\n")
	time.Sleep(300 * time.Millisecond)
	type_("\x03")
	type_("echo after-$((20+1))\n")
	off, _ = expect(t, out, off, `after-21`)
	type_("exit 3\n")
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("shell exit: %v (output %q)", err, out.String()[off:])
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("shell did not exit: %q", out.String()[off:])
	}
}
