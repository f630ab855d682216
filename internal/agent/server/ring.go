package server

import (
	"fmt"
	"sync"
)

// ring keeps the most recent output of a background process: a byte ring
// buffer addressed by absolute offsets, so readers that fall behind learn
// how much they missed. It is safe for concurrent use.
type ring struct {
	mu     sync.Mutex
	buf    []byte        // guarded by mu; capacity fixed at creation
	total  int64         // guarded by mu; bytes ever written
	closed bool          // guarded by mu; the writer has finished
	wake   chan struct{} // guarded by mu; closed and replaced on every change
}

func newRing(size int) *ring {
	return &ring{buf: make([]byte, size), wake: make(chan struct{})}
}

// write appends p, overwriting the oldest bytes when full. It never blocks
// on readers.
func (r *ring) write(p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := int64(len(r.buf))
	if int64(len(p)) > size {
		r.total += int64(len(p)) - size
		p = p[int64(len(p))-size:]
	}
	for len(p) > 0 {
		at := r.total % size
		n := copy(r.buf[at:], p)
		p = p[n:]
		r.total += int64(n)
	}
	r.signal()
}

// close marks the end of the output.
func (r *ring) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.signal()
}

// signal wakes readers; r.mu must be held.
func (r *ring) signal() {
	close(r.wake)
	r.wake = make(chan struct{})
}

// oldest returns the offset of the oldest byte still held.
func (r *ring) oldest() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.oldestLocked()
}

func (r *ring) oldestLocked() int64 { return max(0, r.total-int64(len(r.buf))) }

// end returns the offset after the newest byte.
func (r *ring) end() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// readAt copies bytes from offset off into p. It returns the number of
// bytes copied, the bytes lost before off (when off is older than the
// buffer, reading resumes at the oldest byte held), whether the output has
// ended with nothing more to read, and a channel that is closed on the next
// write.
func (r *ring) readAt(off int64, p []byte) (n int, lost int64, ended bool, wake <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.oldestLocked(); off < old {
		lost = old - off
		off = old
	}
	size := int64(len(r.buf))
	for n < len(p) && off < r.total {
		at := off % size
		end := min(size, at+(r.total-off))
		k := copy(p[n:], r.buf[at:end])
		n += k
		off += int64(k)
	}
	return n, lost, r.closed && off >= r.total, r.wake
}

// droppedMarker is the line an attachment sees in place of lost output.
func droppedMarker(n int64) []byte {
	return fmt.Appendf(nil, "\n[smolvm: %d bytes of output dropped]\n", n)
}
