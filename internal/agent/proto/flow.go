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

// numChannels bounds the Channel values an Inbox accepts.
const numChannels = int(ChanErr) + 1

// Inbox is the receive side of a stream's flow control. It holds at most
// the window the receiver granted, and its memory is that many bytes plus a
// constant: data is coalesced into one buffer per channel, so many tiny
// frames cost no more than one large one. Order is kept within a channel;
// across channels, Pop returns the channel whose oldest pending byte arrived
// first. The connection's read loop pushes without blocking; a consumer
// pops, delivers, and then grants the delivered bytes back to the sender. It
// is safe for concurrent use.
type Inbox struct {
	mu    sync.Mutex
	bufs  [numChannels][]byte // guarded by mu; pending bytes per channel
	since [numChannels]uint64 // guarded by mu; arrival number of each buffer's first byte
	seq   uint64              // guarded by mu; arrival counter
	size  int                 // guarded by mu; bytes pending or popped and not granted
	limit int                 // bytes the sender may have in flight
	eof   bool                // guarded by mu; set by CloseWrite
	err   error               // guarded by mu; set by Abort
	wake  chan struct{}       // guarded by mu
}

// NewInbox returns an inbox that accepts limit bytes beyond those popped
// and granted back.
func NewInbox(limit int) *Inbox {
	return &Inbox{limit: limit, wake: make(chan struct{})}
}

// Push queues c. It fails with ErrProtocol if c is empty (an empty DATA
// frame costs the receiver work without using window), names an unknown
// channel, exceeds the sender's window, or follows EOF. It never blocks.
func (b *Inbox) Push(c Chunk) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.err != nil:
		return nil // aborted: drop silently
	case len(c.Data) == 0:
		return fmt.Errorf("%w: empty DATA frame", ErrProtocol)
	case c.Channel == 0 || int(c.Channel) >= numChannels:
		return fmt.Errorf("%w: DATA on unknown channel %d", ErrProtocol, c.Channel)
	case b.eof:
		return fmt.Errorf("%w: data after EOF", ErrProtocol)
	case b.size+len(c.Data) > b.limit:
		return fmt.Errorf("%w: peer exceeded its window (%d+%d > %d)", ErrProtocol, b.size, len(c.Data), b.limit)
	}
	buf := b.bufs[c.Channel]
	if len(buf) == 0 {
		b.seq++
		b.since[c.Channel] = b.seq
		buf = c.Data[:len(c.Data):len(c.Data)] // adopt; a later append copies
	} else {
		buf = append(buf, c.Data...)
	}
	b.bufs[c.Channel] = buf
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
		b.bufs = [numChannels][]byte{}
		b.signal()
	}
}

// signal wakes the consumer; b.mu must be held.
func (b *Inbox) signal() {
	close(b.wake)
	b.wake = make(chan struct{})
}

// oldest returns the channel with the oldest pending data, or 0; b.mu must be held.
func (b *Inbox) oldest() Channel {
	best := 0
	for ch := 1; ch < numChannels; ch++ {
		if len(b.bufs[ch]) > 0 && (best == 0 || b.since[ch] < b.since[best]) {
			best = ch
		}
	}
	return Channel(best)
}

// Pop returns the pending data of one channel, waiting for some. The popped
// bytes still count against the window until the consumer calls Grant.
func (b *Inbox) Pop(ctx context.Context) (Chunk, error) {
	for {
		b.mu.Lock()
		if b.err != nil {
			err := b.err
			b.mu.Unlock()
			return Chunk{}, err
		}
		if ch := b.oldest(); ch != 0 {
			c := Chunk{Channel: ch, Data: b.bufs[ch]}
			b.bufs[ch] = nil
			b.mu.Unlock()
			return c, nil
		}
		if b.eof {
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
