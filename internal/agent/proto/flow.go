package proto

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// Window is the send side of a stream's flow control: the number of data
// bytes the peer still accepts. Senders take from it with Acquire; WINDOW
// frames from the peer give back with Add. It is safe for concurrent use.
type Window struct {
	mu    sync.Mutex
	avail int           // guarded by mu
	err   error         // guarded by mu; set by Close
	wake  chan struct{} // guarded by mu; closed and replaced on every change
}

// maxWindow caps the window so a hostile peer cannot overflow it.
const maxWindow = 1 << 30

// NewWindow returns a window holding n bytes.
func NewWindow(n int) *Window {
	return &Window{avail: n, wake: make(chan struct{})}
}

// Add grants n more bytes.
func (w *Window) Add(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.avail = min(w.avail+n, maxWindow)
	w.signal()
}

// Close makes pending and future Acquire calls fail with err.
func (w *Window) Close(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		w.signal()
	}
}

// signal wakes all waiters; w.mu must be held.
func (w *Window) signal() {
	close(w.wake)
	w.wake = make(chan struct{})
}

// Acquire waits until the window is open and takes between 1 and want bytes
// from it, returning how many it took.
func (w *Window) Acquire(ctx context.Context, want int) (int, error) {
	for {
		w.mu.Lock()
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			return 0, err
		}
		if w.avail > 0 {
			n := min(want, w.avail)
			w.avail -= n
			w.mu.Unlock()
			return n, nil
		}
		wake := w.wake
		w.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Chunk is a piece of stream data received on a channel.
type Chunk struct {
	// Channel is the channel the data arrived on.
	Channel Channel
	// Data is the received bytes.
	Data []byte
}

// Inbox is the receive side of a stream's flow control: a queue of chunks
// that holds at most the window the receiver granted. The connection's read
// loop pushes without blocking; a consumer pops, delivers, and then grants the
// delivered bytes back to the sender. It is safe for concurrent use.
type Inbox struct {
	mu    sync.Mutex
	queue []Chunk       // guarded by mu
	size  int           // guarded by mu; bytes in queue
	limit int           // bytes the sender may have in flight
	eof   bool          // guarded by mu; set by CloseWrite
	err   error         // guarded by mu; set by Abort
	wake  chan struct{} // guarded by mu
}

// NewInbox returns an inbox that accepts limit bytes beyond those popped
// and granted back.
func NewInbox(limit int) *Inbox {
	return &Inbox{limit: limit, wake: make(chan struct{})}
}

// Push queues c. It fails with ErrProtocol if the sender exceeded its window
// or sent after EOF; it never blocks.
func (b *Inbox) Push(c Chunk) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.err != nil:
		return nil // aborted: drop silently
	case b.eof:
		return fmt.Errorf("%w: data after EOF", ErrProtocol)
	case b.size+len(c.Data) > b.limit:
		return fmt.Errorf("%w: peer exceeded its window (%d+%d > %d)", ErrProtocol, b.size, len(c.Data), b.limit)
	}
	b.queue = append(b.queue, c)
	b.size += len(c.Data)
	b.signal()
	return nil
}

// Grant raises the limit by n bytes, matching a WINDOW frame sent to the peer.
// Consumers call it for each chunk they have delivered.
func (b *Inbox) Grant(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.size -= n
}

// CloseWrite marks the end of the data; Pop returns io.EOF once the queue
// is drained.
func (b *Inbox) CloseWrite() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.eof = true
	b.signal()
}

// Abort discards queued data; Pop returns err from now on.
func (b *Inbox) Abort(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
		b.queue = nil
		b.signal()
	}
}

// signal wakes the consumer; b.mu must be held.
func (b *Inbox) signal() {
	close(b.wake)
	b.wake = make(chan struct{})
}

// Pop returns the next chunk, waiting for one. The popped bytes still count
// against the window until the consumer calls Grant.
func (b *Inbox) Pop(ctx context.Context) (Chunk, error) {
	for {
		b.mu.Lock()
		switch {
		case b.err != nil:
			err := b.err
			b.mu.Unlock()
			return Chunk{}, err
		case len(b.queue) > 0:
			c := b.queue[0]
			b.queue[0] = Chunk{}
			b.queue = b.queue[1:]
			b.mu.Unlock()
			return c, nil
		case b.eof:
			b.mu.Unlock()
			return Chunk{}, io.EOF
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return Chunk{}, ctx.Err()
		}
	}
}
