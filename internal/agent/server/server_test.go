package server

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// rawHost speaks raw frames to a server, for protocol edge cases the
// client never produces.
type rawHost struct {
	t    *testing.T
	conn net.Conn
	dec  *proto.Decoder
}

func newRawHost(t *testing.T) *rawHost {
	t.Helper()
	host, guest := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = Serve(ctx, guest, Options{EnvFile: t.TempDir() + "/env.sh"}) }()
	t.Cleanup(func() { cancel(); host.Close(); <-done })
	return &rawHost{t: t, conn: host, dec: proto.NewDecoder(host)}
}

func (h *rawHost) send(f proto.Frame) {
	h.t.Helper()
	b, err := proto.AppendFrame(nil, f)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.conn.Write(b); err != nil {
		h.t.Fatal(err)
	}
}

// next returns the next frame other than WINDOW.
func (h *rawHost) next() proto.Frame {
	h.t.Helper()
	h.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := h.dec.Next()
		if err != nil {
			h.t.Fatalf("read: %v", err)
		}
		if f.Type != proto.TypeWindow {
			return f
		}
	}
}

func (h *rawHost) hello() {
	h.t.Helper()
	nonce, _ := proto.NewNonce()
	go proto.WriteHello(h.conn, proto.TypeHello, proto.Hello{Nonce: nonce, Version: proto.Version})
	f := h.next()
	if got, _ := proto.ParseHello(f.Payload); f.Type != proto.TypeHelloAck || got.Nonce != nonce {
		h.t.Fatalf("got %v, want HELLO_ACK with our nonce", f.Type)
	}
}

func TestRawProtocol(t *testing.T) {
	h := newRawHost(t)
	// Frames before a HELLO belong to no session and are ignored.
	h.send(proto.Frame{Type: proto.TypeRequest, Stream: 1, Payload: []byte(`{"method":"health"}`)})
	h.hello()

	tests := []struct {
		name    string
		payload string
		kind    error
	}{
		{"bad JSON", `{"method":`, proto.ErrInvalidArgument},
		{"unknown method", `{"method":"format-disk"}`, proto.ErrUnsupported},
		{"bad args", `{"method":"exec","args":{"argv":"not a list"}}`, proto.ErrInvalidArgument},
		{"ok", `{"method":"health"}`, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := uint32(10 + i)
			h.send(proto.Frame{Type: proto.TypeRequest, Stream: id, Payload: []byte(tt.payload)})
			f := h.next()
			if f.Type != proto.TypeResponse || f.Stream != id {
				t.Fatalf("got %v for stream %d", f.Type, f.Stream)
			}
			if err := proto.UnmarshalResponse(f.Payload, nil); !errors.Is(err, tt.kind) && !(tt.kind == nil && err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.kind)
			}
		})
	}
}

func TestRawWindowViolationAbortsStream(t *testing.T) {
	h := newRawHost(t)
	h.hello()
	args, _ := proto.MarshalRequest(proto.MethodExec, proto.ExecArgs{Argv: []string{"sleep", "100"}, Stdin: true})
	h.send(proto.Frame{Type: proto.TypeRequest, Stream: 1, Payload: args})
	chunk := make([]byte, proto.MaxPayload)
	// More than InitialWindow without waiting for WINDOW frames; sleep never reads.
	go func() {
		for range proto.InitialWindow/proto.MaxPayload + 2 {
			b, _ := proto.AppendFrame(nil, proto.Frame{Type: proto.TypeData, Channel: proto.ChanIn, Stream: 1, Payload: chunk})
			h.conn.Write(b)
		}
	}()
	f := h.next()
	if f.Type != proto.TypeResponse {
		t.Fatalf("got %v, want RESPONSE", f.Type)
	}
	if err := proto.UnmarshalResponse(f.Payload, nil); !errors.Is(err, proto.ErrCanceled) {
		t.Fatalf("err = %v, want the stream aborted", err)
	}
}

// flakyPort returns EOF between reads, like a virtio-serial port without host.
type flakyPort struct {
	io.ReadWriteCloser
	eofs int
}

func (p *flakyPort) Read(b []byte) (int, error) {
	if p.eofs > 0 {
		p.eofs--
		return 0, io.EOF
	}
	return p.ReadWriteCloser.Read(b)
}

func TestPersistentPortWaitsThroughEOF(t *testing.T) {
	r, w := net.Pipe()
	defer r.Close()
	go func() { w.Write([]byte("data")); w.Close() }()
	p := &persistentPort{ReadWriteCloser: &flakyPort{ReadWriteCloser: r, eofs: 3}}
	b := make([]byte, 8)
	n, err := p.Read(b)
	if err != nil || string(b[:n]) != "data" {
		t.Fatalf("Read = %q, %v", b[:n], err)
	}
}

func TestRunWithoutTransport(t *testing.T) {
	err := Run(context.Background(), Options{VirtioPort: t.TempDir() + "/absent", VirtioWait: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no transport") {
		t.Fatalf("err = %v", err)
	}
}

// A HELLO must be served while a writer of the abandoned session is blocked
// on the stream, even if the new host writes more before it reads: the read
// loop must not wait for that writer. net.Pipe has no buffer, so a writer
// blocks as soon as the host stops reading.
func TestHelloWhileAbandonedWriterBlocked(t *testing.T) {
	h := newRawHost(t)
	h.hello()
	args, _ := proto.MarshalRequest(proto.MethodExec, proto.ExecArgs{Argv: []string{"sh", "-c", "while :; do echo stale; done"}})
	h.send(proto.Frame{Type: proto.TypeRequest, Stream: 1, Payload: args})
	if f := h.next(); f.Type != proto.TypeData || f.Stream != 1 {
		t.Fatalf("got %v for stream %d, want DATA for stream 1", f.Type, f.Stream)
	}
	// The host stops reading: the command's output pump blocks in a write.

	// A new host sends HELLO, a request, and 4 MiB more before it reads.
	nonce, _ := proto.NewNonce()
	var b []byte
	b = proto.AppendResync(b)
	b, _ = proto.AppendFrame(b, proto.Frame{Type: proto.TypeHello, Payload: proto.Hello{Nonce: nonce, Version: proto.Version}.Marshal()})
	b, _ = proto.AppendFrame(b, proto.Frame{Type: proto.TypeRequest, Stream: 7, Payload: []byte(`{"method":"health"}`)})
	filler := make([]byte, proto.MaxPayload)
	for range 4 << 20 / proto.MaxPayload {
		b, _ = proto.AppendFrame(b, proto.Frame{Type: proto.TypeData, Channel: proto.ChanIn, Stream: 99, Payload: filler})
	}
	h.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := h.conn.Write(b); err != nil {
		t.Fatalf("the server stopped reading while a writer of the abandoned session was blocked: %v", err)
	}
	h.conn.SetWriteDeadline(time.Time{})

	// Stale frames of the old session may come first, then our HELLO_ACK,
	// then the response: nothing of the new session precedes its HELLO_ACK.
	for {
		f := h.next()
		if f.Type == proto.TypeResponse && f.Stream == 7 {
			t.Fatal("RESPONSE of the new session before its HELLO_ACK")
		}
		if f.Type != proto.TypeHelloAck {
			continue
		}
		if got, _ := proto.ParseHello(f.Payload); got.Nonce == nonce {
			break
		}
	}
	for {
		f := h.next()
		if f.Type == proto.TypeData && f.Stream == 1 {
			t.Fatal("DATA of the abandoned session after the new HELLO_ACK")
		}
		if f.Type == proto.TypeResponse && f.Stream == 7 {
			if err := proto.UnmarshalResponse(f.Payload, nil); err != nil {
				t.Fatalf("health: %v", err)
			}
			return
		}
	}
}
