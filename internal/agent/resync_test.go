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
// one at a time. Bytes from the guest that a departed host did not take are
// delivered to the next host, and a host that dies mid-write leaves a partial
// frame in the guest's stream.
type virtioRelay struct {
	path  string
	ln    net.Listener
	guest net.Conn // the relay's end of the persistent stream

	delivered atomic.Int64 // bytes delivered to the current host
	done      chan struct{}
}

func newVirtioRelay(t *testing.T, guest net.Conn) *virtioRelay {
	t.Helper()
	path := filepath.Join(t.TempDir(), "virtio.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	r := &virtioRelay{path: path, ln: ln, guest: guest, done: make(chan struct{})}
	go r.run()
	t.Cleanup(func() { ln.Close(); <-r.done })
	return r
}

func (r *virtioRelay) run() {
	defer close(r.done)
	var pending []byte // guest bytes not yet delivered to any host
	for {
		conn, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.delivered.Store(0)
		pending = r.serve(conn, pending)
	}
}

// serve splices one host connection onto the guest stream until the host
// goes away; it returns the guest bytes it could not deliver.
func (r *virtioRelay) serve(conn net.Conn, pending []byte) []byte {
	hostGone := make(chan struct{})
	go func() {
		io.Copy(r.guest, conn)
		close(hostGone)
	}()
	defer func() { conn.Close(); <-hostGone }()
	buf := make([]byte, 7001) // an odd size, so frames are split
	for {
		if len(pending) > 0 {
			n, err := conn.Write(pending)
			r.delivered.Add(int64(n))
			pending = pending[n:]
			if err != nil {
				return pending
			}
			continue
		}
		select {
		case <-hostGone:
			return pending
		default:
		}
		r.guest.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		n, err := r.guest.Read(buf)
		pending = append(pending, buf[:n]...)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return pending
		}
	}
}

// injector wraps the guest's side of the stream so a test can slip stale
// bytes between the server's frames.
type injector struct {
	net.Conn
	mu sync.Mutex
}

func (w *injector) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.Conn.Write(p)
}

func (w *injector) inject(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.Conn.Write(p)
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
	guest := &injector{Conn: guestEnd}
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
	<-enough
	connA.Close() // no BYE: the host process crashed
	if err := <-errA; !errors.Is(err, proto.ErrUnavailable) {
		t.Fatalf("A's Exec err = %v, want ErrUnavailable", err)
	}

	// Stale bytes toward the next host: a cut DATA frame, a RESPONSE for the
	// stream id B will use first, and a HELLO_ACK with another nonce.
	cut := frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanOut, Stream: 1, Payload: bytes.Repeat([]byte("Z"), 30000)})
	guest.inject(cut[:len(cut)/2])
	guest.inject(frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanOut, Stream: 1, Payload: []byte("stale stdout\n")}))
	guest.inject(frame(t, proto.Frame{Type: proto.TypeResponse, Stream: 1, Payload: proto.MarshalResponse(proto.ExecResult{ExitCode: 99}, nil)}))
	guest.inject(frame(t, proto.Frame{Type: proto.TypeHelloAck, Payload: proto.Hello{Version: proto.Version}.Marshal()}))

	// A host that dies in the middle of writing a request.
	connDying, err := agent.DialUnix(ctx, relay.path)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := proto.MarshalRequest(proto.MethodExec, proto.ExecArgs{Shell: "touch " + filepath.Join(e.dir, "must-not-exist") + "; " + strings.Repeat(": ;", 5000)})
	partial := frame(t, proto.Frame{Type: proto.TypeRequest, Stream: 7, Payload: req})
	connDying.Write(partial[:len(partial)-100])
	connDying.Close()

	// Host B gets a clean session.
	connB, err := agent.DialUnix(ctx, relay.path)
	if err != nil {
		t.Fatal(err)
	}
	b := newClient(t, connB)
	stale := relay.delivered.Load() - proto.ResyncSize - proto.HeaderSize - 18
	t.Logf("host B skipped %d stale bytes before its HELLO_ACK", stale)
	if stale <= 0 {
		t.Errorf("no stale bytes reached host B; the test lost its point")
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
