package agent_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/server"
)

// testEnv is a guest stand-in: a temporary directory with the agent's files.
type testEnv struct {
	dir       string
	envFile   string
	powerOffs chan struct{} // receives one value per PowerOff hook call
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	dir := t.TempDir()
	return &testEnv{
		dir:       dir,
		envFile:   filepath.Join(dir, "etc", "profile.d", "smolvm_env.sh"),
		powerOffs: make(chan struct{}, 10),
	}
}

// options returns server options rooted in the test directory.
func (e *testEnv) options(t testing.TB) server.Options {
	return server.Options{
		Version:  "test-1.0",
		EnvFile:  e.envFile,
		PowerOff: func() { e.powerOffs <- struct{}{} },
		Logf:     func(format string, args ...any) { t.Logf("server: "+format, args...) },
	}
}

// socketpair returns two connected stream sockets.
func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// serveConn runs a server on conn until the test ends.
func serveConn(t testing.TB, conn io.ReadWriteCloser, opts server.Options) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = server.Serve(ctx, conn, opts)
	}()
	t.Cleanup(func() { cancel(); stopped(t, 10*time.Second, "server.Serve to return", done) })
}

// newClient performs the handshake on conn and closes the client at cleanup.
func newClient(t testing.TB, conn io.ReadWriteCloser) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, conn)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startPair returns a client connected over a socketpair to a fresh server.
func startPair(t testing.TB) (*agent.Client, *testEnv) {
	t.Helper()
	e := newTestEnv(t)
	hostEnd, guestEnd := socketpair(t)
	serveConn(t, guestEnd, e.options(t))
	return newClient(t, hostEnd), e
}

// netListener adapts a net.Listener to server.Listener.
type netListener struct{ net.Listener }

func (l netListener) Accept() (io.ReadWriteCloser, error) { return l.Listener.Accept() }

// startUnixServer serves every connection to a Unix socket, the way the
// agent serves vsock, and returns the socket's path.
func startUnixServer(t testing.TB, e *testEnv) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = server.New(e.options(t)).ServeListener(ctx, netListener{ln})
	}()
	t.Cleanup(func() { cancel(); stopped(t, 10*time.Second, "ServeListener to return", done) })
	return path
}

// ctxT returns a context that ends with the test or after d.
func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// recv waits up to d for a value from ch, failing the test with what it was
// waiting for if none comes: no wait in these tests may hang.
func recv[T any](t testing.TB, d time.Duration, what string, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", d, what)
		panic("unreachable")
	}
}

// stopped waits up to d for done to close, for cleanups: it reports a
// goroutine that does not stop instead of hanging the test binary.
func stopped(t testing.TB, d time.Duration, what string, done <-chan struct{}) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Errorf("timed out after %v waiting for %s", d, what)
	}
}

// lockedBuffer is a concurrency-safe bytes buffer.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// groupAlive reports whether any process other than a zombie is in process
// group pgid.
func groupAlive(t testing.TB, pgid int) bool {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state ppid pgrp ...
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 3 {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// waitFor polls cond with backoff until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(delay)
	}
}

// firstLineWriter captures output and reports its first line on a channel.
type firstLineWriter struct {
	lockedBuffer
	once sync.Once
	line chan string
}

func newFirstLineWriter() *firstLineWriter { return &firstLineWriter{line: make(chan string, 1)} }

func (w *firstLineWriter) Write(p []byte) (int, error) {
	n, err := w.lockedBuffer.Write(p)
	if s := w.String(); strings.Contains(s, "\n") {
		w.once.Do(func() { w.line <- s[:strings.IndexByte(s, '\n')] })
	}
	return n, err
}

// pgidFrom parses a pid printed by a test command.
func pgidFrom(t testing.TB, w *firstLineWriter) int {
	t.Helper()
	select {
	case s := <-w.line:
		pid, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("bad pid line %q", s)
		}
		return pid
	case <-time.After(10 * time.Second):
		t.Fatal("command printed no pid")
	}
	return 0
}

var errBoom = errors.New("boom")
