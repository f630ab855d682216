// Package agent is the host side of the guest agent channel: a Client that
// speaks the protocol of package proto to the agent running inside a VM, and
// the transports that reach it (a QEMU virtio-serial chardev socket,
// Firecracker's hybrid vsock, and AF_VSOCK).
//
// Beyond Exec, Upload and Download the Client runs commands on guest
// terminals (StartTerminal), manages background processes that outlive the
// connection (StartProcess, ListProcesses, AttachProcess, WriteProcess,
// SignalProcess, WaitProcess), calls the guest file system (Stat, List,
// Mkdir, Move, Remove, ReadFile, WriteFile, Watch), moves directory trees as
// tar streams (UploadDir, DownloadDir, with ExtractTar refusing entries that
// would escape the target) and waits for guest ports (WaitPort). Every byte
// from the guest is bounded: by flow-control windows, by explicit limits
// (MaxOutputBytes, ListOptions.MaxEntries, ReadFile's bound, TarLimits), and
// by ending the session on protocol violations.
//
// Errors carry the kinds of package proto (proto.ErrNotFound,
// proto.ErrUnavailable, ...); check them with errors.Is.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Client is a session with a guest agent. It is safe for concurrent use:
// many requests may run at once over its one connection.
//
// The guest is not trusted. Every frame it sends either counts against a
// window the client granted or is bounded by the number of requests in
// progress; anything else (an empty DATA frame, data on a wrong channel,
// data beyond the window, a frame type only hosts send) is a protocol error
// that ends the session. The read loop never writes: window grants and
// cancellations are queued (coalesced per request, so the queue is bounded)
// for a writer goroutine, and every blocking write honours its caller's
// context, so a guest that stops reading cannot block the client.
type Client struct {
	conn io.ReadWriteCloser
	dec  *proto.Decoder
	done chan struct{} // closed when the read loop and the writer have ended
	dead chan struct{} // closed by fail: the session is over

	qmu   sync.Mutex
	queue []*outItem    // guarded by qmu; frames for the writer, in order
	qwake chan struct{} // 1-buffered: the queue grew

	nextID atomic.Uint32
	info   atomic.Pointer[Info] // the last Health answer

	mu    sync.Mutex
	calls map[uint32]*call // guarded by mu
	err   error            // guarded by mu; why the session ended
	once  sync.Once        // closes dead
}

// call is one request in progress.
type call struct {
	id       uint32
	in       *proto.Inbox  // guest-to-host data
	credit   *proto.Window // host-to-guest send window; closed when the response arrives
	response chan []byte   // receives the RESPONSE payload; buffered

	// Guarded by Client.qmu: window to grant and whether a grant or a
	// cancel is queued, so each call has at most one of each in the queue.
	grant        int
	grantQueued  bool
	cancelQueued bool
}

// outItem is one entry of the write queue: an encoded frame with a waiter,
// or a grant or cancel of a call computed when written.
type outItem struct {
	frame    []byte
	done     chan error // buffered; receives the write's outcome
	canceled bool       // guarded by Client.qmu; the waiter left before the write
	grantFor *call
	cancel   *call
}

// errResponded closes a call's window once its response has arrived.
var errResponded = errors.New("response received")

// closeFlush bounds how long Close waits for its BYE to be written.
const closeFlush = time.Second

// NewClient opens a session on conn: it writes the resync padding and a HELLO
// with a fresh nonce, then discards everything the guest sends until the
// HELLO_ACK carrying that nonce. The Client owns conn from then on. If ctx ends
// before the handshake completes, conn is closed.
func NewClient(ctx context.Context, conn io.ReadWriteCloser) (*Client, error) {
	return newClient(ctx, conn, nil)
}

// Connect opens a session on conn as NewClient does and asks the agent for
// its health (see Health) in the same write as the HELLO: the answer
// follows the HELLO_ACK, a round trip sooner than a Health call after
// NewClient. A nil error means the agent answers requests.
func Connect(ctx context.Context, conn io.ReadWriteCloser) (*Client, Info, error) {
	var cl *call
	c, err := newClient(ctx, conn, func(c *Client) []byte {
		payload, _ := proto.MarshalRequest(proto.MethodHealth, nil)
		cl = c.newCall()
		c.calls[cl.id] = cl
		b, _ := proto.AppendFrame(nil, proto.Frame{Type: proto.TypeRequest, Stream: cl.id, Payload: payload})
		return b
	})
	if err != nil {
		return nil, Info{}, err
	}
	var res proto.HealthResult
	if err := c.wait(ctx, cl, &res); err != nil {
		c.Close()
		return nil, Info{}, fmt.Errorf("agent %s: %w", proto.MethodHealth, err)
	}
	return c, c.storeHealth(res), nil
}

// newClient opens a session on conn; after, if set, returns frames to
// write right after the HELLO (their calls registered), before the
// HELLO_ACK arrives.
func newClient(ctx context.Context, conn io.ReadWriteCloser, after func(*Client) []byte) (*Client, error) {
	nonce, err := proto.NewNonce()
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &Client{
		conn:  conn,
		dec:   proto.NewDecoder(conn),
		done:  make(chan struct{}),
		dead:  make(chan struct{}),
		qwake: make(chan struct{}, 1),
		calls: make(map[uint32]*call),
	}
	var pipelined []byte
	if after != nil {
		pipelined = after(c)
	}
	handshake := make(chan error, 1)
	go func() { handshake <- c.handshake(nonce, pipelined) }()
	select {
	case err = <-handshake:
	case <-ctx.Done():
		conn.Close()
		<-handshake
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent handshake: %w", unavailable(err))
	}
	var loops sync.WaitGroup
	loops.Go(c.readLoop)
	loops.Go(c.writeLoop)
	go func() { loops.Wait(); close(c.done) }()
	return c, nil
}

// handshake sends HELLO, followed by the frames in pipelined in the same
// write, and waits for the matching HELLO_ACK.
func (c *Client) handshake(nonce proto.Nonce, pipelined []byte) error {
	var hello bytes.Buffer
	if err := proto.WriteHello(&hello, proto.TypeHello, proto.Hello{Nonce: nonce, Version: proto.Version}); err != nil {
		return err
	}
	hello.Write(pipelined)
	if _, err := c.conn.Write(hello.Bytes()); err != nil {
		return err
	}
	for {
		f, err := c.dec.Next()
		if err != nil {
			return err
		}
		if f.Type != proto.TypeHelloAck {
			continue // stale frame of an earlier session
		}
		h, err := proto.ParseHello(f.Payload)
		if err != nil || h.Nonce != nonce {
			continue
		}
		if h.Version != proto.Version {
			return fmt.Errorf("%w: guest speaks protocol %d, host %d", proto.ErrUnsupported, h.Version, proto.Version)
		}
		return nil
	}
}

// unavailable maps transport errors to proto.ErrUnavailable, keeping kinds
// and context errors.
func unavailable(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || proto.KindOf(err) != proto.ErrInternal {
		return err
	}
	return fmt.Errorf("%w: %w", proto.ErrUnavailable, err)
}

// Close ends the session: the guest abandons it (killing its foreground
// commands; background processes keep running) and the connection is
// closed. Requests in progress fail with proto.ErrUnavailable. Close waits
// at most about a second for the guest to take the BYE.
func (c *Client) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeFlush)
	_ = c.write(ctx, proto.Frame{Type: proto.TypeBye})
	cancel()
	c.fail(fmt.Errorf("%w: client closed", proto.ErrUnavailable))
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		err = nil
	}
	return err
}

// Done returns a channel that is closed when the session has ended, because
// of Close, a protocol error, or a failed connection.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the session ended, or nil while it is running.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// fail ends the session with err (the first reason wins): the connection
// is closed, which ends both loops, and every call fails.
func (c *Client) fail(err error) {
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		calls := c.calls
		c.calls = nil
		c.mu.Unlock()
		close(c.dead)
		c.conn.Close()
		for _, cl := range calls {
			cl.in.Abort(err)
			cl.credit.Close(err)
		}
	})
}

// readLoop dispatches incoming frames until the connection fails or the
// guest breaks the protocol. It never blocks: inboxes are bounded by the
// windows granted, and it never writes.
func (c *Client) readLoop() {
	for {
		f, err := c.dec.Next()
		if err != nil {
			// Calls in progress end with this: their outcome in the guest
			// is unknown.
			c.fail(fmt.Errorf("%w: connection closed (the VM stopped, was restored or its agent restarted; calls in progress were abandoned): %w", proto.ErrUnavailable, err))
			return
		}
		if err := c.dispatch(f); err != nil {
			c.fail(fmt.Errorf("%w: session ended: %w", proto.ErrUnavailable, err))
			return
		}
	}
}

// dispatch handles one frame from the guest; an error is a protocol
// violation.
func (c *Client) dispatch(f proto.Frame) error {
	switch f.Type {
	case proto.TypeData:
		if len(f.Payload) == 0 || (f.Channel != proto.ChanOut && f.Channel != proto.ChanErr) {
			return fmt.Errorf("%w: DATA frame of %d bytes on channel %d (stream %d)", proto.ErrProtocol, len(f.Payload), f.Channel, f.Stream)
		}
	case proto.TypeWindow:
		if _, err := proto.ParseWindow(f.Payload); err != nil {
			return err
		}
	case proto.TypeResponse, proto.TypeEOF, proto.TypeHelloAck:
	default:
		return fmt.Errorf("%w: unexpected %s frame from the guest", proto.ErrProtocol, f.Type)
	}
	if f.Stream > c.nextID.Load() {
		return fmt.Errorf("%w: %s frame for stream %d, never opened", proto.ErrProtocol, f.Type, f.Stream)
	}
	c.mu.Lock()
	cl := c.calls[f.Stream]
	if f.Type == proto.TypeResponse && cl != nil {
		delete(c.calls, f.Stream)
	}
	c.mu.Unlock()
	if cl == nil {
		return nil // a finished or canceled call: late frames cost nothing
	}
	switch f.Type {
	case proto.TypeData:
		return cl.in.Push(proto.Chunk{Channel: f.Channel, Data: f.Payload})
	case proto.TypeWindow:
		n, _ := proto.ParseWindow(f.Payload)
		cl.credit.Add(int(n))
	case proto.TypeResponse:
		cl.response <- f.Payload // buffered, and the call is gone: at most once
		cl.in.CloseWrite()
		cl.credit.Close(errResponded)
	}
	return nil
}

// writeLoop writes queued frames until the session ends, batching what
// has queued up into one write.
func (c *Client) writeLoop() {
	var buf []byte
	for {
		select {
		case <-c.qwake:
		case <-c.dead:
			c.failQueued()
			return
		}
		for {
			var items []*outItem
			buf, items = c.takeQueue(buf[:0])
			if len(buf) == 0 {
				break
			}
			_, err := c.conn.Write(buf)
			if err != nil {
				err = fmt.Errorf("%w: write: %w", proto.ErrUnavailable, err)
			}
			for _, it := range items {
				it.done <- err
			}
			if err != nil {
				c.fail(err)
				c.failQueued()
				return
			}
		}
	}
}

// takeQueue empties the queue into buf and returns the items whose
// waiters want to know the outcome.
func (c *Client) takeQueue(buf []byte) ([]byte, []*outItem) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	var waiting []*outItem
	for _, it := range c.queue {
		switch {
		case it.grantFor != nil:
			cl := it.grantFor
			cl.grantQueued = false
			n := cl.grant
			cl.grant = 0
			buf, _ = proto.AppendFrame(buf, proto.Frame{Type: proto.TypeWindow, Stream: cl.id, Payload: proto.WindowPayload(uint32(n))})
		case it.cancel != nil:
			buf, _ = proto.AppendFrame(buf, proto.Frame{Type: proto.TypeCancel, Stream: it.cancel.id})
		case !it.canceled:
			buf = append(buf, it.frame...)
			waiting = append(waiting, it)
		}
	}
	clear(c.queue)
	c.queue = c.queue[:0]
	return buf, waiting
}

// failQueued fails the waiters of frames that will never be written.
func (c *Client) failQueued() {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	for _, it := range c.queue {
		if it.done != nil {
			it.done <- proto.ErrUnavailable
		}
	}
	c.queue = nil
}

// enqueue appends it to the write queue and wakes the writer.
func (c *Client) enqueue(it *outItem) {
	c.queue = append(c.queue, it)
	select {
	case c.qwake <- struct{}{}:
	default:
	}
}

// write sends one frame and waits until it is written, the session ends,
// or ctx is done (then the frame is dropped if not yet taken).
func (c *Client) write(ctx context.Context, f proto.Frame) error {
	b, err := proto.AppendFrame(nil, f)
	if err != nil {
		return err
	}
	it := &outItem{frame: b, done: make(chan error, 1)}
	c.qmu.Lock()
	select {
	case <-c.dead:
		c.qmu.Unlock()
		return c.sessionErr()
	default:
	}
	c.enqueue(it)
	c.qmu.Unlock()
	select {
	case err := <-it.done:
		if err != nil {
			return c.sessionErr()
		}
		return nil
	case <-ctx.Done():
		c.qmu.Lock()
		it.canceled = true
		c.qmu.Unlock()
		return ctx.Err()
	}
}

// sessionErr returns why the session ended.
func (c *Client) sessionErr() error {
	if err := c.Err(); err != nil {
		return err
	}
	return proto.ErrUnavailable
}

// grant queues a WINDOW frame returning n bytes of cl's window to the
// guest; it never blocks, and grants not yet written are merged.
func (c *Client) grant(cl *call, n int) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	cl.grant += n
	if !cl.grantQueued {
		cl.grantQueued = true
		c.enqueue(&outItem{grantFor: cl})
	}
}

// start registers a call and sends its request.
func (c *Client) start(ctx context.Context, method string, args any) (*call, error) {
	payload, err := proto.MarshalRequest(method, args)
	if err != nil {
		return nil, err
	}
	cl := c.newCall()
	c.mu.Lock()
	if c.calls == nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.calls[cl.id] = cl
	c.mu.Unlock()
	if err := c.write(ctx, proto.Frame{Type: proto.TypeRequest, Stream: cl.id, Payload: payload}); err != nil {
		c.forget(cl)
		return nil, err
	}
	return cl, nil
}

// newCall returns a call with the next stream id, not yet registered.
func (c *Client) newCall() *call {
	return &call{
		id:       c.nextID.Add(1),
		in:       proto.NewInbox(proto.InitialWindow),
		credit:   proto.NewWindow(proto.InitialWindow),
		response: make(chan []byte, 1),
	}
}

// forget drops a call that will not be completed.
func (c *Client) forget(cl *call) {
	c.mu.Lock()
	if c.calls != nil {
		delete(c.calls, cl.id)
	}
	c.mu.Unlock()
	cl.in.Abort(proto.ErrCanceled)
	cl.credit.Close(proto.ErrCanceled)
}

// cancel asks the guest to abort cl and forgets it. It never blocks.
func (c *Client) cancel(cl *call) {
	c.qmu.Lock()
	if !cl.cancelQueued {
		cl.cancelQueued = true
		c.enqueue(&outItem{cancel: cl})
	}
	c.qmu.Unlock()
	c.forget(cl)
}

// wait waits for cl's response and decodes it into result (may be nil).
func (c *Client) wait(ctx context.Context, cl *call, result any) error {
	select {
	case p := <-cl.response:
		return proto.UnmarshalResponse(p, result)
	case <-c.dead:
		select {
		case p := <-cl.response:
			return proto.UnmarshalResponse(p, result)
		default:
		}
		return c.sessionErr()
	case <-ctx.Done():
		c.cancel(cl)
		return ctx.Err()
	}
}

// roundTrip runs a request without stream data.
func (c *Client) roundTrip(ctx context.Context, method string, args, result any) error {
	cl, err := c.start(ctx, method, args)
	if err != nil {
		return fmt.Errorf("agent %s: %w", method, err)
	}
	if err := c.wait(ctx, cl, result); err != nil {
		return fmt.Errorf("agent %s: %w", method, err)
	}
	return nil
}

// drain delivers cl's incoming data to the writers (by channel) until the
// response has arrived, granting window back as it goes.
func (c *Client) drain(ctx context.Context, cl *call, writers map[proto.Channel]io.Writer) error {
	for {
		ch, err := cl.in.Pop(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if w := writers[ch.Channel]; w != nil {
			if _, err := w.Write(ch.Data); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
		}
		cl.in.Grant(len(ch.Data))
		c.grant(cl, len(ch.Data))
	}
}

// send streams r to the guest on ChanIn of cl, then sends EOF. It stops
// early, without error, when the response arrives first.
func (c *Client) send(ctx context.Context, cl *call, r io.Reader) error {
	buf := make([]byte, proto.ChunkSize)
	for {
		n, rerr := r.Read(buf)
		for off := 0; off < n; {
			k, err := cl.credit.Acquire(ctx, n-off)
			if errors.Is(err, errResponded) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := c.write(ctx, proto.Frame{Type: proto.TypeData, Channel: proto.ChanIn, Stream: cl.id, Payload: buf[off : off+k]}); err != nil {
				return err
			}
			off += k
		}
		if errors.Is(rerr, io.EOF) {
			return c.write(ctx, proto.Frame{Type: proto.TypeEOF, Channel: proto.ChanIn, Stream: cl.id})
		}
		if rerr != nil {
			return fmt.Errorf("read input: %w", rerr)
		}
	}
}
