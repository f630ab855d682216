package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// fakeGuest is a hostile guest on the far end of a socketpair: it answers
// the handshake and then sends whatever the test scripts.
type fakeGuest struct {
	t    *testing.T
	conn net.Conn
	dec  *proto.Decoder
}

// startFakeGuest connects a client to a fake guest and completes the handshake.
func startFakeGuest(t *testing.T) (*agent.Client, *fakeGuest) {
	t.Helper()
	hostEnd, guestEnd := socketpair(t)
	g := &fakeGuest{t: t, conn: guestEnd, dec: proto.NewDecoder(guestEnd)}
	t.Cleanup(func() { guestEnd.Close() })
	acked := make(chan error, 1)
	go func() {
		for {
			f, err := g.dec.Next()
			if err != nil {
				acked <- err
				return
			}
			if f.Type == proto.TypeHello {
				h, _ := proto.ParseHello(f.Payload)
				acked <- proto.WriteHello(guestEnd, proto.TypeHelloAck, h)
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, hostEnd)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if err := recv(t, 10*time.Second, "the fake guest's handshake", acked); err != nil {
		t.Fatalf("fake guest handshake: %v", err)
	}
	return c, g
}

// request reads frames until the next REQUEST and returns its stream id.
func (g *fakeGuest) request() uint32 {
	g.t.Helper()
	g.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer g.conn.SetReadDeadline(time.Time{})
	for {
		f, err := g.dec.Next()
		if err != nil {
			g.t.Fatalf("fake guest: read: %v", err)
		}
		if f.Type == proto.TypeRequest {
			return f.Stream
		}
	}
}

// rawHeader builds a frame header with a valid header checksum claiming
// length bytes of payload with checksum crc.
func rawHeader(typ proto.Type, stream, length, crc uint32) []byte {
	h := make([]byte, proto.HeaderSize)
	copy(h, "\xa5SVM")
	h[4] = byte(typ)
	h[5] = byte(proto.ChanOut)
	binary.BigEndian.PutUint32(h[8:], stream)
	binary.BigEndian.PutUint32(h[12:], length)
	binary.BigEndian.PutUint32(h[16:], crc)
	binary.BigEndian.PutUint32(h[20:], crc32.Checksum(h[:20], crc32.MakeTable(crc32.Castagnoli)))
	return h
}

// healthResponse is a valid RESPONSE to a health request.
func healthResponse(t *testing.T, stream uint32, version string) []byte {
	res, _ := json.Marshal(proto.HealthResult{Version: version, Protocol: proto.Version})
	payload, _ := json.Marshal(proto.Response{Result: res})
	return frame(t, proto.Frame{Type: proto.TypeResponse, Stream: stream, Payload: payload})
}

// heapInuse returns the heap in use after a garbage collection.
func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// noLeak records the goroutine count and, at cleanup, waits for it to
// come back (the client's goroutines must all end).
func noLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// The session must end on frames that would cost the host memory without
// using window, and the flood behind them must not be buffered.
func TestHostileGuestEndsSession(t *testing.T) {
	tests := []struct {
		name  string
		frame func(t *testing.T, stream uint32) []byte
	}{
		{"zero-length DATA", func(t *testing.T, id uint32) []byte {
			return frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanOut, Stream: id})
		}},
		{"DATA on the stdin channel", func(t *testing.T, id uint32) []byte {
			return frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanIn, Stream: id, Payload: []byte("x")})
		}},
		{"DATA on channel 0", func(t *testing.T, id uint32) []byte {
			return frame(t, proto.Frame{Type: proto.TypeData, Stream: id, Payload: []byte("x")})
		}},
		{"REQUEST from the guest", func(t *testing.T, id uint32) []byte {
			return frame(t, proto.Frame{Type: proto.TypeRequest, Stream: id, Payload: []byte("{}")})
		}},
		{"unknown frame type", func(t *testing.T, id uint32) []byte {
			return frame(t, proto.Frame{Type: 77, Stream: id})
		}},
		{"bad WINDOW payload", func(t *testing.T, id uint32) []byte {
			return frame(t, proto.Frame{Type: proto.TypeWindow, Stream: id, Payload: []byte("xx")})
		}},
		{"stream never opened", func(t *testing.T, id uint32) []byte {
			return frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanOut, Stream: id + 1000, Payload: []byte("x")})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noLeak(t)
			c, g := startFakeGuest(t)
			defer c.Close()
			base := heapInuse()
			errc := make(chan error, 1)
			go func() {
				_, err := c.Exec(context.Background(), agent.ExecRequest{Argv: []string{"x"}}, nil, io.Discard, io.Discard)
				errc <- err
			}()
			id := g.request()
			// 64 MiB of the bad frame: a client buffering it would grow.
			one := tt.frame(t, id)
			chunk := bytes.Repeat(one, (1<<20)/len(one)+1)
			go func() {
				for range 64 {
					if _, err := g.conn.Write(chunk); err != nil {
						return
					}
				}
			}()
			err := recv(t, 10*time.Second, "Exec to fail", errc)
			if !errors.Is(err, proto.ErrUnavailable) || !errors.Is(err, proto.ErrProtocol) {
				t.Fatalf("err = %v, want ErrUnavailable and ErrProtocol", err)
			}
			stopped(t, 10*time.Second, "the session to end", c.Done())
			if !errors.Is(c.Err(), proto.ErrProtocol) {
				t.Errorf("Err() = %v", c.Err())
			}
			if grew := int64(heapInuse()) - int64(base); grew > 8<<20 {
				t.Errorf("heap grew by %d bytes", grew)
			}
		})
	}
}

// A guest exceeding its window is cut off.
func TestHostileGuestExceedsWindow(t *testing.T) {
	noLeak(t)
	c, g := startFakeGuest(t)
	defer c.Close()
	errc := make(chan error, 1)
	block := make(chan struct{})
	defer close(block)
	stalled := writerFunc(func(p []byte) (int, error) { <-block; return len(p), nil })
	go func() {
		_, err := c.Exec(context.Background(), agent.ExecRequest{Argv: []string{"x"}}, nil, stalled, nil)
		errc <- err
	}()
	id := g.request()
	data := frame(t, proto.Frame{Type: proto.TypeData, Channel: proto.ChanOut, Stream: id, Payload: make([]byte, proto.ChunkSize)})
	go func() {
		for range proto.InitialWindow/proto.ChunkSize + 2 {
			if _, err := g.conn.Write(data); err != nil {
				return
			}
		}
	}()
	stopped(t, 10*time.Second, "the session to end", c.Done())
	if err := c.Err(); !errors.Is(err, proto.ErrProtocol) || !strings.Contains(err.Error(), "window") {
		t.Fatalf("Err() = %v, want a window violation", err)
	}
}

// Huge claimed lengths and checksum garbage are skipped without
// allocation, frames nested in a bad payload are not parsed, and the
// session goes on.
func TestHostileGuestGarbageSkipped(t *testing.T) {
	noLeak(t)
	c, g := startFakeGuest(t)
	defer c.Close()
	base := heapInuse()
	got := make(chan error, 1)
	var info agent.Info
	go func() {
		var err error
		info, err = c.Health(ctxT(t, 30*time.Second))
		got <- err
	}()
	id := g.request()
	var junk bytes.Buffer
	for range 20000 {
		junk.Write(rawHeader(proto.TypeResponse, id, 0xfffffff0, 0)) // 4 GiB claimed
	}
	// A bad payload holding a forged response: skipped whole.
	forged := healthResponse(t, id, "forged")
	bad := rawHeader(proto.TypeData, id, uint32(len(forged)), 12345)
	for range 1000 {
		junk.Write(bad)
		junk.Write(forged)
	}
	junk.Write(bytes.Repeat([]byte("\xa5SVM garbage "), 10000))
	junk.Write(healthResponse(t, id, "real"))
	if _, err := g.conn.Write(junk.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, 30*time.Second, "Health", got); err != nil {
		t.Fatalf("Health: %v", err)
	}
	if info.Version != "real" {
		t.Fatalf("version %q: a frame nested in a bad payload was parsed", info.Version)
	}
	if grew := int64(heapInuse()) - int64(base); grew > 8<<20 {
		t.Errorf("heap grew by %d bytes", grew)
	}
	select {
	case <-c.Done():
		t.Fatalf("session ended: %v", c.Err())
	default:
	}
}

// A guest that never reads cannot block the client: with the socket
// buffer full and the writer stuck, calls still honour their context, Close
// returns, memory stays bounded and no goroutine is left.
func TestHostileGuestNeverReads(t *testing.T) {
	noLeak(t)
	c, _ := startFakeGuest(t) // the fake guest reads nothing after the handshake
	base := heapInuse()
	start := time.Now()
	// 32 commands with 64 MiB of stdin each: 32 windows of 256 KiB are far
	// more than the socket buffer holds, so the writer blocks.
	const n = 32
	errs := make(chan error, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat"}}, io.LimitReader(zeros{}, 64<<20), io.Discard, nil)
			errs <- err
		}()
	}
	for range n {
		if err := recv(t, 10*time.Second, "Exec to give up", errs); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Exec err = %v, want DeadlineExceeded", err)
		}
	}
	// The writer is stuck: a new request cannot be written, and gives up too.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Health(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Health err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("calls took %v against a guest that never reads", d)
	}
	if grew := int64(heapInuse()) - int64(base); grew > 16<<20 {
		t.Errorf("heap grew by %d bytes", grew)
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	recv(t, 5*time.Second, "Close to return", closed)
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestLimitedWriter(t *testing.T) {
	var b bytes.Buffer
	w := agent.NewLimitedWriter(&b, 5)
	for _, s := range []string{"ab", "cde", "fgh", ""} {
		if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if b.String() != "abcde" || !w.Truncated() || w.Dropped() != 3 {
		t.Fatalf("kept %q, truncated %v, dropped %d", b.String(), w.Truncated(), w.Dropped())
	}
	w = agent.NewLimitedWriter(io.Discard, 5)
	w.Write([]byte("abcde"))
	if w.Truncated() {
		t.Fatal("exactly the limit is not truncation")
	}
}

func TestExecMaxOutputBytes(t *testing.T) {
	c, _ := startPair(t)
	var out, errOut bytes.Buffer
	res, err := c.Exec(ctxT(t, 60*time.Second), agent.ExecRequest{
		Shell:          "head -c 3000000 /dev/zero; echo short >&2; exit 4",
		MaxOutputBytes: 1000,
	}, nil, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 4 || !res.StdoutTruncated || res.StderrTruncated {
		t.Fatalf("result %+v, want exit 4 with stdout truncated only", res)
	}
	if out.Len() != 1000 || errOut.String() != "short\n" {
		t.Fatalf("kept %d stdout bytes and stderr %q", out.Len(), errOut.String())
	}
}
