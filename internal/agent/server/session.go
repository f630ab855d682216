package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// session is one host session on a stream, from its HELLO to the next HELLO,
// a BYE, or the end of the stream.
type session struct {
	srv    *Server
	w      *wire
	ctx    context.Context // canceled when the session closes
	cancel context.CancelFunc
	closed atomic.Bool   // set once; read by wire.send under wire.mu
	acked  chan struct{} // closed once the session's HELLO_ACK is written

	mu      sync.Mutex
	streams map[uint32]*stream // guarded by mu
}

func newSession(ctx context.Context, srv *Server, w *wire) *session {
	ctx, cancel := context.WithCancel(ctx)
	return &session{srv: srv, w: w, ctx: ctx, cancel: cancel, acked: make(chan struct{}), streams: make(map[uint32]*stream)}
}

// close abandons the session: no frame of it is written any more, and its
// handlers are canceled (running commands are killed).
func (s *session) close() {
	s.closed.Store(true)
	s.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, st := range s.streams {
		st.abort(proto.ErrUnavailable)
		delete(s.streams, id)
	}
}

// stream is one request in progress.
type stream struct {
	sess   *session
	id     uint32
	ctx    context.Context // canceled by CANCEL, session close, or completion
	cancel context.CancelFunc
	in     *proto.Inbox  // host-to-guest data
	out    *proto.Window // guest-to-host send window
	after  func()        // run after the response is written, if set

	// control applies CONTROL frames; nil until the handler has something
	// to control.
	control atomic.Pointer[controller]
}

// abort stops the stream's handler.
func (st *stream) abort(err error) {
	st.cancel()
	st.in.Abort(err)
	st.out.Close(err)
}

// handle dispatches one frame of the session. It never blocks on handlers.
func (s *session) handle(f proto.Frame) {
	if f.Type == proto.TypeRequest {
		s.open(f)
		return
	}
	s.mu.Lock()
	st := s.streams[f.Stream]
	s.mu.Unlock()
	if st == nil {
		return // finished or unknown stream: late frames are dropped
	}
	switch f.Type {
	case proto.TypeData:
		if err := st.in.Push(proto.Chunk{Channel: f.Channel, Data: f.Payload}); err != nil {
			s.srv.opts.Logf("agent: stream %d: %v", f.Stream, err)
			st.abort(err)
		}
	case proto.TypeEOF:
		st.in.CloseWrite()
	case proto.TypeWindow:
		n, err := proto.ParseWindow(f.Payload)
		if err != nil {
			st.abort(err)
			return
		}
		st.out.Add(int(n))
	case proto.TypeCancel:
		st.cancel()
	case proto.TypeControl:
		s.controlFrame(st, f.Payload)
	default:
		s.srv.opts.Logf("agent: stream %d: unexpected %s frame", f.Stream, f.Type)
	}
}

// controlFrame applies a CONTROL frame to st's command. It only issues an
// ioctl or a kill, so it does not block the read loop.
func (s *session) controlFrame(st *stream, payload []byte) {
	k := st.control.Load()
	if k == nil {
		s.srv.opts.Logf("agent: stream %d: CONTROL frame with nothing to control", st.id)
		return
	}
	var c proto.Control
	if err := json.Unmarshal(payload, &c); err != nil {
		s.srv.opts.Logf("agent: stream %d: bad CONTROL frame: %v", st.id, err)
		return
	}
	if err := k.apply(c); err != nil {
		s.srv.opts.Logf("agent: stream %d: control: %v", st.id, err)
	}
}

// open starts a handler for a REQUEST frame.
func (s *session) open(f proto.Frame) {
	ctx, cancel := context.WithCancel(s.ctx)
	st := &stream{
		sess: s, id: f.Stream, ctx: ctx, cancel: cancel,
		in:  proto.NewInbox(proto.InitialWindow),
		out: proto.NewWindow(proto.InitialWindow),
	}
	s.mu.Lock()
	if _, dup := s.streams[f.Stream]; dup || f.Stream == 0 {
		s.mu.Unlock()
		cancel()
		s.srv.opts.Logf("agent: REQUEST for stream %d in use", f.Stream)
		return
	}
	s.streams[f.Stream] = st
	s.mu.Unlock()
	go s.serve(st, f.Payload)
}

// serve runs a request's handler and writes its response.
func (s *session) serve(st *stream, payload []byte) {
	result, err := s.dispatch(st, payload)
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
	}
	s.mu.Unlock()
	st.abort(proto.ErrCanceled)
	werr := s.w.send(s, proto.Frame{Type: proto.TypeResponse, Stream: st.id, Payload: proto.MarshalResponse(result, err)})
	if werr == nil && st.after != nil {
		st.after()
	}
}

// handler serves one method. args is the request's raw JSON arguments.
type handler func(s *Server, st *stream, args json.RawMessage) (any, error)

// handlers maps every method of proto to its handler.
var handlers = map[string]handler{
	proto.MethodExec:     (*Server).exec,
	proto.MethodUpload:   (*Server).upload,
	proto.MethodDownload: (*Server).download,
	proto.MethodEnvSet:   (*Server).envSet,
	proto.MethodEnvUnset: (*Server).envUnset,
	proto.MethodEnvList:  (*Server).envList,
	proto.MethodHealth:   (*Server).health,
	proto.MethodSync:     (*Server).sync,
	proto.MethodPowerOff: (*Server).powerOff,
	proto.MethodRestore:  (*Server).restore,

	proto.MethodProcStart:  (*Server).procStart,
	proto.MethodProcList:   (*Server).procList,
	proto.MethodProcAttach: (*Server).procAttach,
	proto.MethodProcInput:  (*Server).procInput,
	proto.MethodProcSignal: (*Server).procSignal,
	proto.MethodProcWait:   (*Server).procWait,
	proto.MethodPortWait:   (*Server).portWait,

	proto.MethodFsStat:      (*Server).fsStat,
	proto.MethodFsList:      (*Server).fsList,
	proto.MethodFsMkdir:     (*Server).fsMkdir,
	proto.MethodFsMove:      (*Server).fsMove,
	proto.MethodFsRemove:    (*Server).fsRemove,
	proto.MethodFsWatch:     (*Server).fsWatch,
	proto.MethodDirUpload:   (*Server).dirUpload,
	proto.MethodDirDownload: (*Server).dirDownload,
}

// dispatch decodes a request and runs its handler, turning panics into
// errors: the agent is PID 1 and must not crash.
func (s *session) dispatch(st *stream, payload []byte) (result any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: handler panic: %v", proto.ErrInternal, r)
		}
	}()
	var req proto.Request
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, fmt.Errorf("%w: request: %v", proto.ErrInvalidArgument, err)
	}
	h, ok := handlers[req.Method]
	if !ok {
		return nil, fmt.Errorf("%w: method %q", proto.ErrUnsupported, req.Method)
	}
	return h(s.srv, st, req.Args)
}

// decodeArgs unmarshals request arguments into v.
func decodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%w: arguments: %v", proto.ErrInvalidArgument, err)
	}
	return nil
}

// send streams data on channel ch, waiting for window as needed.
func (st *stream) send(ch proto.Channel, data []byte) error {
	for len(data) > 0 {
		n, err := st.out.Acquire(st.ctx, min(len(data), proto.ChunkSize))
		if err != nil {
			return err
		}
		if err := st.sess.w.send(st.sess, proto.Frame{Type: proto.TypeData, Channel: ch, Stream: st.id, Payload: data[:n]}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// grant returns n consumed bytes of window to the host.
func (st *stream) grant(n int) {
	if n <= 0 {
		return
	}
	st.in.Grant(n)
	err := st.sess.w.send(st.sess, proto.Frame{Type: proto.TypeWindow, Stream: st.id, Payload: proto.WindowPayload(uint32(n))})
	if err != nil && !errors.Is(err, proto.ErrUnavailable) {
		st.sess.srv.opts.Logf("agent: stream %d: window: %v", st.id, err)
	}
}

// lineWriter sends JSON lines on ChanOut, batched into chunks.
type lineWriter struct {
	st  *stream
	buf []byte
}

func newLineWriter(st *stream) *lineWriter { return &lineWriter{st: st} }

// encode queues v as one line, sending a chunk when enough has queued.
func (w *lineWriter) encode(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: encode: %v", proto.ErrInternal, err)
	}
	w.buf = append(append(w.buf, b...), '\n')
	if len(w.buf) >= proto.ChunkSize {
		return w.flush()
	}
	return nil
}

// flush sends what is queued.
func (w *lineWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.st.send(proto.ChanOut, w.buf)
	w.buf = w.buf[:0]
	return err
}
