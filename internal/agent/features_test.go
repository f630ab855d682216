package agent_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/agent/server"
)

func TestBackgroundProcessAcrossConnections(t *testing.T) {
	e := newTestEnv(t)
	opts := e.options(t)
	opts.ProcBufferBytes = 4096
	srv := server.New(opts)
	connect := func() *agent.Client {
		hostEnd, guestEnd := socketpair(t)
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(t.Context(), guestEnd) }()
		t.Cleanup(func() { guestEnd.Close(); stopped(t, 10*time.Second, "Serve", done) })
		return newClient(t, hostEnd)
	}
	c1 := connect()
	ctx := ctxT(t, 60*time.Second)
	pid, err := c1.StartProcess(ctx, agent.ExecRequest{Shell: "head -c 10000 /dev/zero | tr '\\0' x; echo; echo err >&2; read line; echo got=$line; exit 7"},
		agent.ProcessOptions{Tag: "job", Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	c1.Close() // the process outlives the connection that started it
	c2 := connect()
	start := time.Now()
	procs, err := c2.ListProcesses(ctx)
	t.Logf("ListProcesses of %d: %v (in-process)", len(procs), time.Since(start))
	if err != nil || len(procs) != 1 || procs[0].Pid != pid || procs[0].Tag != "job" || !procs[0].Running {
		t.Fatalf("ListProcesses = %+v, %v", procs, err)
	}
	if err := c2.WriteProcess(ctx, pid, []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	res, err := c2.AttachProcess(ctx, pid, &out, &errOut, agent.AttachOptions{})
	if err != nil || res.ExitCode != 7 {
		t.Fatalf("AttachProcess = %+v, %v", res, err)
	}
	// 10001 bytes went through a 4096-byte ring before anyone attached.
	if !strings.Contains(out.String(), "bytes of output dropped]") || !strings.HasSuffix(out.String(), "got=hello\n") || errOut.String() != "err\n" {
		t.Fatalf("stdout %q... stderr %q", out.String()[:min(out.Len(), 80)], errOut.String())
	}
	if res, err := c2.WaitProcess(ctx, pid); err != nil || res.ExitCode != 7 {
		t.Fatalf("WaitProcess = %+v, %v", res, err)
	}
	if _, err := c2.WaitProcess(ctx, pid); !errors.Is(err, proto.ErrNotFound) {
		t.Fatalf("second wait: %v, want ErrNotFound", err)
	}
	pid, _ = c2.StartProcess(ctx, agent.ExecRequest{Argv: []string{"sleep", "100"}}, agent.ProcessOptions{})
	if err := c2.SignalProcess(ctx, pid, "TERM"); err != nil {
		t.Fatal(err)
	}
	if res, err := c2.WaitProcess(ctx, pid); err != nil || res.Signal != "SIGTERM" {
		t.Fatalf("WaitProcess after TERM = %+v, %v", res, err)
	}
	if err := c2.SignalProcess(ctx, 999999, "TERM"); !errors.Is(err, proto.ErrNotFound) {
		t.Fatalf("unknown pid: %v", err)
	}
}

func TestFilesystemCalls(t *testing.T) {
	c, _ := startPair(t)
	ctx := ctxT(t, 120*time.Second)
	dir := t.TempDir()
	odd := []string{"with space", "ünïcødé", "new\nline"}
	for _, n := range odd {
		if err := c.WriteFile(ctx, filepath.Join(dir, n), []byte(n), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("with space", filepath.Join(dir, "link"))
	if err := c.Mkdir(ctx, filepath.Join(dir, "a/b/c"), 0, true); err != nil {
		t.Fatal(err)
	}
	many := filepath.Join(dir, "a", "many")
	os.Mkdir(many, 0o755)
	for i := range 10000 {
		os.WriteFile(filepath.Join(many, "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+itoa(i)), nil, 0o644)
	}
	fi, err := c.Stat(ctx, filepath.Join(dir, "link"))
	if err != nil || fi.Type != proto.FileSymlink || fi.Target != "with space" {
		t.Fatalf("Stat(link) = %+v, %v", fi, err)
	}
	start := time.Now()
	for range 100 {
		c.Stat(ctx, filepath.Join(dir, "with space"))
	}
	t.Logf("Stat: %v each (in-process, 100 runs)", time.Since(start)/100)
	start = time.Now()
	entries, err := c.List(ctx, many, agent.ListOptions{})
	t.Logf("List of %d entries: %v (in-process)", len(entries), time.Since(start))
	if err != nil || len(entries) != 10000 {
		t.Fatalf("List = %d entries, %v", len(entries), err)
	}
	all, err := c.List(ctx, dir, agent.ListOptions{Depth: 4})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range all {
		if !strings.Contains(e.Path, "/many/") {
			names = append(names, e.Name)
		}
	}
	for _, want := range append(odd, "link", "a", "b", "c", "many") {
		if !slices.Contains(names, want) {
			t.Errorf("List depth 4 lacks %q: %q", want, names)
		}
	}
	if _, err := c.List(ctx, dir, agent.ListOptions{MaxEntries: 5, Depth: 2}); !errors.Is(err, proto.ErrResourceExhausted) {
		t.Errorf("bounded list: %v", err)
	}
	data, err := c.ReadFile(ctx, filepath.Join(dir, "new\nline"), 100)
	if err != nil || string(data) != "new\nline" {
		t.Fatalf("ReadFile = %q, %v", data, err)
	}
	if _, err := c.ReadFile(ctx, filepath.Join(dir, "new\nline"), 3); !errors.Is(err, proto.ErrResourceExhausted) {
		t.Fatalf("ReadFile over bound: %v", err)
	}
	if err := c.Move(ctx, filepath.Join(dir, "with space"), filepath.Join(dir, "ünïcødé"), true); !errors.Is(err, proto.ErrAlreadyExists) {
		t.Fatalf("Move no-replace: %v", err)
	}
	if err := c.Move(ctx, filepath.Join(dir, "with space"), filepath.Join(dir, "moved"), false); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Exists(ctx, filepath.Join(dir, "moved")); !ok {
		t.Fatal("moved file missing")
	}
	if err := c.Remove(ctx, filepath.Join(dir, "a"), false); !errors.Is(err, proto.ErrInvalidArgument) {
		t.Fatalf("non-recursive remove of a full dir: %v", err)
	}
	if err := c.Remove(ctx, filepath.Join(dir, "a"), true); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Exists(ctx, filepath.Join(dir, "a")); ok {
		t.Fatal("removed dir still exists")
	}
	for _, bad := range []string{"", "relative/path"} {
		if _, err := c.Stat(ctx, bad); !errors.Is(err, proto.ErrInvalidArgument) {
			t.Errorf("Stat(%q) = %v", bad, err)
		}
	}
}

func itoa(i int) string { return fmtInt(i) }

func fmtInt(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestWatch(t *testing.T) {
	c, _ := startPair(t)
	ctx := ctxT(t, 60*time.Second)
	dir := t.TempDir()
	w, err := c.Watch(ctx, dir, agent.WatchOptions{Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	time.Sleep(100 * time.Millisecond) // let the watch on the new directory settle
	os.WriteFile(filepath.Join(dir, "sub", "f"), []byte("x"), 0o644)
	os.Rename(filepath.Join(dir, "sub", "f"), filepath.Join(dir, "sub", "g"))
	os.Remove(filepath.Join(dir, "sub", "g"))
	want := []agent.FsEvent{
		{Op: "created", Path: filepath.Join(dir, "sub"), Dir: true},
		{Op: "created", Path: filepath.Join(dir, "sub", "f")},
		{Op: "modified", Path: filepath.Join(dir, "sub", "f")},
		{Op: "renamed", Path: filepath.Join(dir, "sub", "g"), OldPath: filepath.Join(dir, "sub", "f")},
		{Op: "removed", Path: filepath.Join(dir, "sub", "g")},
	}
	for _, wnt := range want {
		ev, err := w.Next(ctx)
		if err != nil || ev != wnt {
			t.Fatalf("event = %+v, %v; want %+v", ev, err, wnt)
		}
	}
}

func TestDirectoryTransfer(t *testing.T) {
	c, _ := startPair(t)
	ctx := ctxT(t, 120*time.Second)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "d/e"), 0o750)
	os.WriteFile(filepath.Join(src, "d/e/file with space"), []byte("content"), 0o640)
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
	os.WriteFile(filepath.Join(src, "big"), big, 0o600)
	os.Symlink("../outside", filepath.Join(src, "d/link"))
	mtime := time.Unix(1700000000, 123456789)
	os.Chtimes(filepath.Join(src, "d/e/file with space"), mtime, mtime)
	guest := filepath.Join(t.TempDir(), "up")
	start := time.Now()
	st, err := c.UploadDir(ctx, src, guest)
	d := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("UploadDir: %d entries, %d bytes in %v: %.0f MiB/s (in-process)", st.Entries, st.Bytes, d, float64(st.Bytes)/(1<<20)/d.Seconds())
	back := filepath.Join(t.TempDir(), "back")
	if _, err := c.DownloadDir(ctx, guest, back, agent.TarLimits{}); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{guest, back} {
		fi, err := os.Stat(filepath.Join(root, "d/e/file with space"))
		if err != nil || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
			t.Errorf("%s: file %v, %v", root, fi, err)
		}
		if l, err := os.Readlink(filepath.Join(root, "d/link")); err != nil || l != "../outside" {
			t.Errorf("%s: link %q, %v", root, l, err)
		}
		if b, _ := os.ReadFile(filepath.Join(root, "big")); !bytes.Equal(b, big) {
			t.Errorf("%s: big file differs", root)
		}
	}
	if _, err := c.DownloadDir(ctx, guest, filepath.Join(t.TempDir(), "small"), agent.TarLimits{MaxBytes: 1 << 20}); !errors.Is(err, proto.ErrResourceExhausted) {
		t.Errorf("bounded download: %v", err)
	}
}

func TestWaitPort(t *testing.T) {
	c, _ := startPair(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	errc := make(chan error, 1)
	go func() { errc <- c.WaitPort(ctxT(t, 30*time.Second), port) }()
	select {
	case err := <-errc:
		t.Fatalf("WaitPort returned before the listen: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	ln, err = net.Listen("tcp", ln.Addr().String())
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	defer ln.Close()
	if err := recv(t, 10*time.Second, "WaitPort", errc); err != nil {
		t.Fatal(err)
	}
	short := ctxT(t, 200*time.Millisecond)
	if err := c.WaitPort(short, 1); !errors.Is(err, short.Err()) && short.Err() == nil {
		t.Fatalf("WaitPort on a closed port: %v", err)
	}
}
