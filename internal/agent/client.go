// Package agent is the host side of the guest agent channel: a Client that
// speaks the protocol of package proto to the agent running inside a VM, and
// the transports that reach it (a QEMU virtio-serial chardev socket,
// Firecracker's hybrid vsock, and AF_VSOCK).
//
// Errors carry the kinds of package proto (proto.ErrNotFound,
// proto.ErrUnavailable, ...); check them with errors.Is.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Client is a session with a guest agent. It is safe for concurrent use:
// many requests may run at once over its one connection.
type Client struct {
	conn io.ReadWriteCloser
	dec  *proto.Decoder
	done chan struct{} // closed when the read loop ends

	wmu  sync.Mutex
	wbuf []byte // guarded by wmu
	werr error  // guarded by wmu; first write error, sticky

	nextID atomic.Uint32

	mu    sync.Mutex
	calls map[uint32]*call // guarded by mu
	err   error            // guarded by mu; why the session ended
}

// call is one request in progress.
type call struct {
	id       uint32
	in       *proto.Inbox  // guest-to-host data
	credit   *proto.Window // host-to-guest send window; closed when the response arrives
	response chan []byte   // receives the RESPONSE payload; buffered
}

// errResponded closes a call's window once its response has arrived.
var errResponded = errors.New("response received")

// NewClient opens a session on conn: it writes the resync padding and a HELLO
// with a fresh nonce, then discards everything the guest sends until the
// HELLO_ACK carrying that nonce. The Client owns conn from then on. If ctx ends
// before the handshake completes, conn is closed.
func NewClient(ctx context.Context, conn io.ReadWriteCloser) (*Client, error) {
	nonce, err := proto.NewNonce()
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &Client{
		conn:  conn,
		dec:   proto.NewDecoder(conn),
		done:  make(chan struct{}),
		calls: make(map[uint32]*call),
	}
	handshake := make(chan error, 1)
	go func() { handshake <- c.handshake(nonce) }()
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
	go c.readLoop()
	return c, nil
}

// handshake sends HELLO and waits for the matching HELLO_ACK.
func (c *Client) handshake(nonce proto.Nonce) error {
	if err := proto.WriteHello(c.conn, proto.TypeHello, proto.Hello{Nonce: nonce, Version: proto.Version}); err != nil {
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

// Close ends the session: the guest abandons it (killing its commands) and
// the connection is closed. Requests in progress fail with
// proto.ErrUnavailable.
func (c *Client) Close() error {
	_ = c.write(proto.Frame{Type: proto.TypeBye})
	err := c.conn.Close()
	<-c.done
	return err
}

// Done returns a channel that is closed when the session has ended, because
// of Close or because the connection failed.
func (c *Client) Done() <-chan struct{} { return c.done }

// readLoop dispatches incoming frames until the connection fails. It never
// blocks on a consumer: inboxes are bounded by the windows granted.
func (c *Client) readLoop() {
	var err error
	for {
		var f proto.Frame
		f, err = c.dec.Next()
		if err != nil {
			break
		}
		c.mu.Lock()
		cl := c.calls[f.Stream]
		if f.Type == proto.TypeResponse {
			delete(c.calls, f.Stream)
		}
		c.mu.Unlock()
		if cl == nil {
			continue
		}
		switch f.Type {
		case proto.TypeData:
			if perr := cl.in.Push(proto.Chunk{Channel: f.Channel, Data: f.Payload}); perr != nil {
				cl.in.Abort(perr)
			}
		case proto.TypeWindow:
			if n, werr := proto.ParseWindow(f.Payload); werr == nil {
				cl.credit.Add(int(n))
			}
		case proto.TypeResponse:
			cl.response <- f.Payload
			cl.in.CloseWrite()
			cl.credit.Close(errResponded)
		}
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%w: connection closed: %w", proto.ErrUnavailable, err)
	calls := c.calls
	c.calls = nil
	c.mu.Unlock()
	for _, cl := range calls {
		cl.in.Abort(c.err)
		cl.credit.Close(c.err)
	}
	close(c.done)
}

// write sends one frame.
func (c *Client) write(f proto.Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	b, err := proto.AppendFrame(c.wbuf[:0], f)
	if err != nil {
		return err
	}
	c.wbuf = b
	if _, err := c.conn.Write(b); err != nil {
		c.werr = fmt.Errorf("%w: write: %v", proto.ErrUnavailable, err)
		c.conn.Close() // the read loop ends too
		return c.werr
	}
	return nil
}

// start registers a call and sends its request.
func (c *Client) start(method string, args any) (*call, error) {
	payload, err := proto.MarshalRequest(method, args)
	if err != nil {
		return nil, err
	}
	cl := &call{
		id:       c.nextID.Add(1),
		in:       proto.NewInbox(proto.InitialWindow),
		credit:   proto.NewWindow(proto.InitialWindow),
		response: make(chan []byte, 1),
	}
	c.mu.Lock()
	if c.calls == nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.calls[cl.id] = cl
	c.mu.Unlock()
	if err := c.write(proto.Frame{Type: proto.TypeRequest, Stream: cl.id, Payload: payload}); err != nil {
		c.forget(cl)
		return nil, err
	}
	return cl, nil
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

// cancel asks the guest to abort cl and forgets it.
func (c *Client) cancel(cl *call) {
	_ = c.write(proto.Frame{Type: proto.TypeCancel, Stream: cl.id})
	c.forget(cl)
}

// wait waits for cl's response and decodes it into result (may be nil).
func (c *Client) wait(ctx context.Context, cl *call, result any) error {
	select {
	case p := <-cl.response:
		return proto.UnmarshalResponse(p, result)
	case <-c.done:
		select {
		case p := <-cl.response:
			return proto.UnmarshalResponse(p, result)
		default:
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.err
	case <-ctx.Done():
		c.cancel(cl)
		return ctx.Err()
	}
}

// roundTrip runs a request without stream data.
func (c *Client) roundTrip(ctx context.Context, method string, args, result any) error {
	cl, err := c.start(method, args)
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
		if err := c.write(proto.Frame{Type: proto.TypeWindow, Stream: cl.id, Payload: proto.WindowPayload(uint32(len(ch.Data)))}); err != nil {
			return err
		}
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
			if err := c.write(proto.Frame{Type: proto.TypeData, Channel: proto.ChanIn, Stream: cl.id, Payload: buf[off : off+k]}); err != nil {
				return err
			}
			off += k
		}
		if errors.Is(rerr, io.EOF) {
			return c.write(proto.Frame{Type: proto.TypeEOF, Channel: proto.ChanIn, Stream: cl.id})
		}
		if rerr != nil {
			return fmt.Errorf("read input: %w", rerr)
		}
	}
}
