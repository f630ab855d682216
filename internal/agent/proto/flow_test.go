package proto

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	w := NewWindow(10)
	ctx := context.Background()
	if n, err := w.Acquire(ctx, 4); n != 4 || err != nil {
		t.Fatalf("Acquire = %d, %v", n, err)
	}
	if n, _ := w.Acquire(ctx, 100); n != 6 {
		t.Fatalf("Acquire rest = %d, want 6", n)
	}
	got := make(chan int)
	go func() { n, _ := w.Acquire(ctx, 5); got <- n }()
	select {
	case <-got:
		t.Fatal("Acquire on an empty window returned")
	case <-time.After(20 * time.Millisecond):
	}
	w.Add(3)
	select {
	case n := <-got:
		if n != 3 {
			t.Fatalf("Acquire after Add = %d, want 3", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire did not return after Add")
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := w.Acquire(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	w.Close(ErrUnavailable)
	if _, err := w.Acquire(ctx, 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestInbox(t *testing.T) {
	ctx := context.Background()
	b := NewInbox(10)
	if err := b.Push(Chunk{Channel: ChanOut, Data: make([]byte, 6)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Push(Chunk{Channel: ChanOut, Data: make([]byte, 5)}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("over window: %v", err)
	}
	c, err := b.Pop(ctx)
	if err != nil || len(c.Data) != 6 || c.Channel != ChanOut {
		t.Fatalf("Pop = %+v, %v", c, err)
	}
	if err := b.Push(Chunk{Channel: ChanOut, Data: make([]byte, 5)}); !errors.Is(err, ErrProtocol) {
		t.Fatal("popped but not granted bytes must still count")
	}
	b.Grant(6)
	if err := b.Push(Chunk{Channel: ChanErr, Data: make([]byte, 10)}); err != nil {
		t.Fatalf("after Grant: %v", err)
	}
	b.CloseWrite()
	if err := b.Push(Chunk{Channel: ChanOut, Data: []byte{1}}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("after EOF: %v", err)
	}
	if c, _ := b.Pop(ctx); len(c.Data) != 10 {
		t.Fatal("queued data lost at EOF")
	}
	if _, err := b.Pop(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("Pop at EOF: %v", err)
	}
	b.Abort(ErrCanceled)
	if _, err := b.Pop(ctx); !errors.Is(err, ErrCanceled) {
		t.Fatalf("Pop after Abort: %v", err)
	}
}

func TestInboxRefusesFreeFrames(t *testing.T) {
	b := NewInbox(10)
	for _, c := range []Chunk{{Channel: ChanOut}, {Channel: ChanOut, Data: []byte{}}, {Channel: 0, Data: []byte{1}}, {Channel: 9, Data: []byte{1}}} {
		if err := b.Push(c); !errors.Is(err, ErrProtocol) {
			t.Errorf("Push(%+v) = %v, want ErrProtocol", c, err)
		}
	}
}

func TestInboxCoalesces(t *testing.T) {
	ctx := context.Background()
	b := NewInbox(1 << 20)
	// Many one-byte chunks, interleaved across channels: two buffers result.
	const n = 100000
	for i := range n {
		ch := ChanOut
		if i%2 == 1 {
			ch = ChanErr
		}
		if err := b.Push(Chunk{Channel: ch, Data: []byte{byte('a' + i%2)}}); err != nil {
			t.Fatal(err)
		}
	}
	out, err := b.Pop(ctx)
	if err != nil || out.Channel != ChanOut || len(out.Data) != n/2 || out.Data[0] != 'a' || out.Data[n/2-1] != 'a' {
		t.Fatalf("first Pop = channel %d, %d bytes, %v", out.Channel, len(out.Data), err)
	}
	errc, err := b.Pop(ctx)
	if err != nil || errc.Channel != ChanErr || len(errc.Data) != n/2 || errc.Data[0] != 'b' {
		t.Fatalf("second Pop = channel %d, %d bytes, %v", errc.Channel, len(errc.Data), err)
	}
	// Order across channels follows the first pending byte.
	b.Grant(n)
	b.Push(Chunk{Channel: ChanErr, Data: []byte("1")})
	b.Push(Chunk{Channel: ChanOut, Data: []byte("2")})
	b.Push(Chunk{Channel: ChanErr, Data: []byte("3")})
	if c, _ := b.Pop(ctx); c.Channel != ChanErr || string(c.Data) != "13" {
		t.Fatalf("Pop = %d %q, want stderr \"13\"", c.Channel, c.Data)
	}
	if c, _ := b.Pop(ctx); c.Channel != ChanOut || string(c.Data) != "2" {
		t.Fatalf("Pop = %d %q, want stdout \"2\"", c.Channel, c.Data)
	}
}

func TestModeWire(t *testing.T) {
	for _, u := range []uint32{0, 0o644, 0o755, 0o4755, 0o2750, 0o1777, 0o7777} {
		if got := ModeToWire(ModeFromWire(u)); got != u {
			t.Errorf("round trip of %o = %o", u, got)
		}
	}
}
