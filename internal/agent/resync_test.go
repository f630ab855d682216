package agent_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// virtioRelay imitates QEMU's virtio-serial chardev socket: one persistent
// byte stream to the guest, and a Unix socket that host processes connect to
// one at a time. Like QEMU, it never pushes back on the guest for long: guest
// output is forwarded to the connected host (queued without bound, standing
// in for the chardev and socket buffers) and dropped while no host is
// connected, including what was still queued for a host that went away, so a
// host can see the tail of a frame whose head went to its predecessor. Host
// bytes are copied to the guest as they come, so a host that dies mid-write
// leaves a partial frame in the guest's stream.
type virtioRelay struct {
	path  string
	ln    net.Listener
	guest net.Conn // the relay's end of the persistent stream

	mu    sync.Mutex
	host  *hostLink   // the connected host, or nil; guarded by mu
	links []*hostLink // every host accepted so far; guarded by mu

	dropped  atomic.Int64 // guest bytes dropped while no host was connected
	accepted chan struct{}
	done     chan struct{} // closed when both relay goroutines have stopped
}

func newVirtioRelay(t *testing.T, guest net.Conn) *virtioRelay {
	t.Helper()
	path := filepath.Join(t.TempDir(), "virtio.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	r := &virtioRelay{path: path, ln: ln, guest: guest, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(r.acceptHosts)
	wg.Go(r.readGuest)
	go func() { wg.Wait(); close(r.done) }()
	t.Cleanup(func() {
		ln.Close()
		guest.Close()
		r.mu.Lock()
		if r.host != nil {
			r.host.conn.Close()
		}
		r.mu.Unlock()
		stopped(t, 10*time.Second, "the virtio relay to stop", r.done)
	})
	return r
}

// acceptHosts serves hosts one at a time, as QEMU's chardev socket does.
func (r *virtioRelay) acceptHosts() {
	for {
		conn, err := r.ln.Accept()
		if err != nil {
			return
		}
		h := &hostLink{conn: conn, wake: make(chan struct{}, 1)}
		writer := make(chan struct{})
		go func() { defer close(writer); h.writeLoop() }()
		r.mu.Lock()
		r.host = h
		r.links = append(r.links, h)
		r.mu.Unlock()
		_, _ = io.Copy(r.guest, conn) // until the host goes away
		r.mu.Lock()
		r.host = nil
		r.mu.Unlock()
		h.close()
		<-writer // bounded: h.close closed the connection it writes to
	}
}

// readGuest drains the guest stream for as long as it exists.
func (r *virtioRelay) readGuest() {
	buf := make([]byte, 7001) // an odd size, so frames are split
	for {
		n, err := r.guest.Read(buf)
		if n > 0 {
			r.mu.Lock()
			h := r.host
			r.mu.Unlock()
			if h == nil || !h.push(buf[:n]) {
				r.dropped.Add(int64(n))
			}
		}
		if err != nil {
			return
		}
	}
}

// hosts returns the number of hosts accepted so far.
func (r *virtioRelay) hosts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.links)
}

// delivered returns the number of guest bytes forwarded to the i-th host
// (counting from 1).
func (r *virtioRelay) delivered(i int) int64 {
	r.mu.Lock()
	h := r.links[i-1]
	r.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pushed
}

// hostLink is the relay's end of one host connection.
type hostLink struct {
	conn net.Conn
	wake chan struct{} // 1-buffered: the queue changed

	mu     sync.Mutex
	queue  []byte // guest bytes not yet written to the host; guarded by mu
	pushed int64  // guest bytes queued for the host in all; guarded by mu
	gone   bool   // guarded by mu
}

// push queues p for the host; it reports false if the host has gone.
func (h *hostLink) push(p []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		return false
	}
	h.queue = append(h.queue, p...)
	h.pushed += int64(len(p))
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return true
}

// close drops the queue and ends writeLoop.
func (h *hostLink) close() {
	h.mu.Lock()
	h.gone = true
	h.queue = nil
	h.mu.Unlock()
	h.conn.Close()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes queued guest bytes to the host until it goes away.
func (h *hostLink) writeLoop() {
	for {
		h.mu.Lock()
		p, gone := h.queue, h.gone
		h.queue = nil
		h.mu.Unlock()
		if gone {
			return
		}
		if len(p) == 0 {
			<-h.wake
			continue
		}
		if _, err := h.conn.Write(p); err != nil {
			return
		}
	}
}

// injector wraps the guest's side of the stream so a test can slip stale
// bytes between the server's frames. sem serialises writes like a mutex, but
// inject gives up instead of waiting forever.
type injector struct {
	net.Conn
	sem chan struct{} // 1-buffered; holds a token while a write is in progress
}

func newInjector(c net.Conn) *injector { return &injector{Conn: c, sem: make(chan struct{}, 1)} }

func (w *injector) Write(p []byte) (int, error) {
	w.sem <- struct{}{}
	defer func() { <-w.sem }()
	return w.Conn.Write(p)
}

// inject writes p to the guest stream between two of the server's writes.
func (w *injector) inject(t *testing.T, p []byte) {
	t.Helper()
	const d = 10 * time.Second
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case w.sem <- struct{}{}:
	case <-timer.C:
		t.Fatalf("inject: a server write to the guest stream has been blocked for %v; nothing drains the stream", d)
	}
	defer func() { <-w.sem }()
	w.Conn.SetWriteDeadline(time.Now().Add(d))
	defer w.Conn.SetWriteDeadline(time.Time{})
	if _, err := w.Conn.Write(p); err != nil {
		t.Fatalf("inject: %v", err)
	}
}

// frame encodes a frame for injection.
func frame(t *testing.T, f proto.Frame) []byte {
	t.Helper()
	b, err := proto.AppendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVirtioSerialReconnect(t *testing.T) {
	e := newTestEnv(t)
	relayEnd, guestEnd := socketpair(t)
	guest := newInjector(guestEnd)
	serveConn(t, guest, e.options(t))
	relay := newVirtioRelay(t, relayEnd)
	ctx := ctxT(t, 60*time.Second)

	// Host A starts a command that streams endlessly, then dies mid-stream.
	connA, err := agent.DialUnix(ctx, relay.path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.NewClient(ctx, connA)
	if err != nil {
		t.Fatal(err)
	}
	outA := newFirstLineWriter()
	var received atomic.Int64
	enough := make(chan struct{})
	var once sync.Once
	errA := make(chan error, 1)
	go func() {
		w := writerFunc(func(p []byte) (int, error) {
			outA.Write(p[:min(len(p), 64)])
			if received.Add(int64(len(p))) > 1<<20 {
				once.Do(func() { close(enough) })
			}
			return len(p), nil
		})
		_, err := a.Exec(ctx, agent.ExecRequest{Shell: "echo $$; while :; do echo stale-output-of-session-A; done"}, nil, w, nil)
		errA <- err
	}()
	pgidA := pgidFrom(t, outA)
	recv(t, 30*time.Second, "1 MiB of session A's output", enough)
	connA.Close() // no BYE: the host process crashed
	if err := recv(t, 10*time.Second, "A's Exec to fail", errA); !errors.Is(err, proto.ErrUnavailable) {
		t.Fatalf("A's Exec err = %v, want ErrUnavailable", err)
	}

	// A host that dies in the middle of writing a request.
	connDying, err := agent.DialUnix(ctx, relay.path)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := proto.MarshalRequest(proto.MethodExec, proto.ExecArgs{Shell: "touch " + filepath.Join(e.dir, "must-not-exist") + "; " + strings.Repeat(": ;", 5000)})
	partial := frame(t, proto.Frame{Type: proto.TypeRequest, Stream: 7, Payload: req})
	if c, ok := connDying.(net.Conn); ok {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := connDying.Write(partial[:len(partial)-100]); err != nil {
		t.Fatal(err)
	}
	connDying.Close()

	// Host B connects. Before its HELLO, the guest stream carries stale bytes
	// toward it: whatever session A still sends, a cut DATA frame, a RESPONSE
	// for the stream id B will use first, and a HELLO_ACK with another nonce.
	// They are injected once the relay has accepted B, so that they reach B
	// rather than being dropped.
	connB, err := agent.DialUnix(ctx, relay.path)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the relay to accept host B", func() bool { return relay.hosts() == 3 })
	cut := frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanOut, Stream: 1, Payload: bytes.Repeat([]byte("Z"), 30000)})
	guest.inject(t, cut[:len(cut)/2])
	guest.inject(t, frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanOut, Stream: 1, Payload: []byte("stale stdout\n")}))
	guest.inject(t, frame(t, proto.Frame{Type: proto.TypeResponse, Stream: 1, Payload: proto.MarshalResponse(proto.ExecResult{ExitCode: 99}, nil)}))
	guest.inject(t, frame(t, proto.Frame{Type: proto.TypeHelloAck, Payload: proto.Hello{Version: proto.Version}.Marshal()}))

	// Host B gets a clean session.
	b := newClient(t, connB)
	stale := relay.delivered(3) - proto.ResyncSize - proto.HeaderSize - 18
	t.Logf("host B skipped %d stale bytes before its HELLO_ACK; %d guest bytes dropped without a host", stale, relay.dropped.Load())
	if stale < int64(len(cut)/2) {
		t.Errorf("only %d stale bytes reached host B; the test lost its point", stale)
	}
	var out, errOut bytes.Buffer
	res, err := b.Exec(ctx, agent.ExecRequest{Argv: []string{"echo", "hello from B"}}, nil, &out, &errOut)
	if err != nil || res.ExitCode != 0 || out.String() != "hello from B\n" || errOut.Len() != 0 {
		t.Fatalf("B's Exec = %+v, %v, stdout %q, stderr %q", res, err, out.String(), errOut.String())
	}
	out.Reset()
	if _, err := b.Exec(ctx, agent.ExecRequest{Argv: []string{"seq", "1", "50000"}}, nil, &out, nil); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := 1; i <= 50000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if out.String() != want.String() {
		t.Fatalf("B's seq output differs: %d bytes, want %d", out.Len(), want.Len())
	}
	// Session A's command was killed when B's session began.
	waitFor(t, 10*time.Second, "session A's command to die", func() bool { return !groupAlive(t, pgidA) })
	if _, err := os.Stat(filepath.Join(e.dir, "must-not-exist")); err == nil {
		t.Error("the half-written request was executed")
	}

	// B leaves cleanly; host C connects on the same stream.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	connC, err := agent.DialUnix(ctx, relay.path)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, connC)
	out.Reset()
	if _, err := c.Exec(ctx, agent.ExecRequest{Shell: "echo C"}, nil, &out, nil); err != nil || out.String() != "C\n" {
		t.Fatalf("C's Exec = %v, %q", err, out.String())
	}
}

func TestNetPipe(t *testing.T) {
	e := newTestEnv(t)
	hostEnd, guestEnd := net.Pipe()
	serveConn(t, guestEnd, e.options(t))
	c := newClient(t, hostEnd)
	ctx := ctxT(t, 30*time.Second)
	var out bytes.Buffer
	in := strings.Repeat("net.Pipe has no buffer at all\n", 20000)
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat"}}, strings.NewReader(in), &out, nil)
	if err != nil || res.ExitCode != 0 || out.String() != in {
		t.Fatalf("Exec = %+v, %v, %d bytes", res, err, out.Len())
	}
	path := filepath.Join(e.dir, "pipe.txt")
	if err := c.Upload(ctx, path, strings.NewReader(in), 0o644, false); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if _, err := c.Download(ctx, path, &out); err != nil || out.String() != in {
		t.Fatalf("Download = %v, %d bytes", err, out.Len())
	}
}

func TestServeListenerManyHosts(t *testing.T) {
	e := newTestEnv(t)
	path := startUnixServer(t, e)
	ctx := ctxT(t, 30*time.Second)
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := agent.DialUnix(ctx, path)
			if err != nil {
				t.Error(err)
				return
			}
			c, err := agent.NewClient(ctx, conn)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			var out bytes.Buffer
			if _, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"echo", fmt.Sprint(i)}}, nil, &out, nil); err != nil || out.String() != fmt.Sprintf("%d\n", i) {
				t.Errorf("host %d: %v %q", i, err, out.String())
			}
		}()
	}
	wg.Wait()
}
