// Package server is the guest side of the agent channel: it runs inside the
// VM as part of the PID-1 agent binary and serves the protocol of package
// proto on virtio-serial and vsock streams.
//
// Background processes (proc.* methods) belong to the Server, not to a
// session: they keep running when the connection that started them closes,
// their output is kept in bounded ring buffers, and any connection served by
// the same Server can attach. Terminals come from internal/guest/pty and
// file watches from internal/guest/fswatch.
//
// The package must not import net (directly or transitively) so that the
// agent binary links statically even with cgo enabled: vsock is used through
// golang.org/x/sys/unix, the virtio-serial port is a plain file, and users are
// resolved by parsing /etc/passwd.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Default paths used when the Options leave them empty.
const (
	DefaultEnvFile    = "/etc/profile.d/smolvm_env.sh"
	DefaultPasswdFile = "/etc/passwd"
	DefaultGroupFile  = "/etc/group"
	DefaultShell      = "/bin/sh"
	DefaultVirtioPort = "/dev/virtio-ports/" + proto.VirtioPortName
	// DefaultVirtioClassDir is where the kernel lists virtio-serial ports.
	DefaultVirtioClassDir = "/sys/class/virtio-ports"
)

// Options configure a Server. The zero value serves with the defaults above,
// without power-off support.
type Options struct {
	// Version is reported by the health request.
	Version string
	// EnvFile is the shell file persisting environment variables; default
	// DefaultEnvFile. Login shells must source it (/etc/profile.d does).
	EnvFile string
	// PasswdFile and GroupFile resolve user names; defaults /etc/passwd and
	// /etc/group.
	PasswdFile, GroupFile string
	// Shell runs shell-string commands as `Shell -lc script`; default /bin/sh.
	Shell string
	// PowerOff is called, after the answer is sent, when the host requests a
	// power-off. Nil makes the request fail with proto.ErrUnsupported.
	PowerOff func()
	// Logf receives diagnostic messages; nil discards them.
	Logf func(format string, args ...any)
	// VirtioPort is the virtio-serial device Run serves; default
	// DefaultVirtioPort.
	VirtioPort string
	// VirtioWait is how long Run waits for VirtioPort to appear; default 5s.
	VirtioWait time.Duration
	// VsockPort is the vsock port Run listens on; 0 disables vsock.
	VsockPort uint32
	// VsockAnyPeer accepts vsock connections from any source port; by
	// default only peers on a privileged port (< 1024: root on the host)
	// are served. See PeerAllowed.
	VsockAnyPeer bool
	// MaxProcs bounds the background processes tracked at once, running or
	// exited; default DefaultMaxProcs.
	MaxProcs int
	// MaxExitedProcs bounds the exited processes kept until waited for;
	// older ones are reaped first. Default DefaultMaxExitedProcs.
	MaxExitedProcs int
	// ProcBufferBytes is the default output ring size per stream of a
	// background process; default DefaultProcBufferBytes.
	ProcBufferBytes int

	// Images (user images' run defaults):

	// Ready, if set, is called once by Run when it serves the host's
	// channel: the virtio-serial port, or vsock where the guest has no
	// virtio-serial ports (see VirtioClassDir). The guest's init prints
	// the ready marker after it.
	Ready func()
	// VirtioClassDir lists the guest's virtio-serial ports; default
	// DefaultVirtioClassDir.
	VirtioClassDir string

	// ImageConfigFile is the user image's run configuration, whose env,
	// user and workdir are the defaults of every command; default
	// imagecfg.File (missing: no defaults).
	ImageConfigFile string
}

// Server serves agent requests. Create it with New; one Server may serve many
// streams at once.
type Server struct {
	opts    Options
	started time.Time
	envMu   sync.Mutex // serialises reads and writes of opts.EnvFile
	procs   procTable  // background processes, shared by all connections
}

// New returns a Server using opts, with defaults filled in.
func New(opts Options) *Server {
	if opts.EnvFile == "" {
		opts.EnvFile = DefaultEnvFile
	}
	if opts.PasswdFile == "" {
		opts.PasswdFile = DefaultPasswdFile
	}
	if opts.GroupFile == "" {
		opts.GroupFile = DefaultGroupFile
	}
	if opts.Shell == "" {
		opts.Shell = DefaultShell
	}
	if opts.VirtioPort == "" {
		opts.VirtioPort = DefaultVirtioPort
	}
	if opts.VirtioWait == 0 {
		opts.VirtioWait = 5 * time.Second
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.MaxProcs <= 0 {
		opts.MaxProcs = DefaultMaxProcs
	}
	if opts.MaxExitedProcs <= 0 {
		opts.MaxExitedProcs = DefaultMaxExitedProcs
	}
	if opts.ProcBufferBytes <= 0 {
		opts.ProcBufferBytes = DefaultProcBufferBytes
	}
	return &Server{opts: opts, started: time.Now(), procs: procTable{procs: map[int]*bgProc{}}}
}

// Serve serves one stream with a new Server; see Server.Serve.
func Serve(ctx context.Context, conn io.ReadWriteCloser, opts Options) error {
	return New(opts).Serve(ctx, conn)
}

// Serve serves conn until it fails, reaches EOF, or ctx is done; it closes
// conn on return. Host sessions come and go on conn: each HELLO abandons the
// previous session (its commands are killed) and starts a new one. Frames
// before the first HELLO are ignored.
//
// The read loop never writes and never waits for a writer: a writer of an
// abandoned session may be blocked on conn until the new host drains it (on
// virtio-serial, output written while no host is connected waits for the
// next one), and the new host may be writing more before it reads. The
// HELLO_ACK is therefore written by its own goroutine, and the new session's
// frames wait for it, not the read loop.
func (s *Server) Serve(ctx context.Context, conn io.ReadWriteCloser) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var acks sync.WaitGroup
	defer acks.Wait() // after conn.Close, which ends a blocked HELLO_ACK write
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	w := &wire{w: conn}
	ackErr := make(chan error, 1) // the first failed HELLO_ACK write
	dec := proto.NewDecoder(conn)
	var cur *session
	var skippedBefore int64 // decoder's skipped count at the previous HELLO
	defer func() {
		if cur != nil {
			cur.close()
		}
	}()
	for {
		f, err := dec.Next()
		if err != nil {
			select {
			case err := <-ackErr:
				return fmt.Errorf("agent server: write HELLO_ACK: %w", err)
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("agent server: read: %w", err)
		}
		switch f.Type {
		case proto.TypeHello:
			h, err := proto.ParseHello(f.Payload)
			if err != nil {
				s.opts.Logf("agent: ignoring bad HELLO: %v", err)
				continue
			}
			if cur != nil {
				cur.close() // never waits for the session's writers
			}
			cur = newSession(ctx, s, w)
			sess := cur
			acks.Go(func() {
				if err := w.hello(sess, h.Nonce); err != nil {
					select {
					case ackErr <- err:
					default:
					}
					cancel() // closes conn, ending the read loop
				}
			})
			// The resync padding is expected garbage; report anything beyond it.
			if stale := dec.Skipped() - skippedBefore - proto.ResyncSize; stale > 0 {
				s.opts.Logf("agent: new session after %d stale bytes", stale)
			}
			skippedBefore = dec.Skipped()
		case proto.TypeBye:
			if cur != nil {
				cur.close()
				cur = nil
			}
		default:
			if cur != nil {
				cur.handle(f)
			}
		}
	}
}

// wire serialises frame writes on a connection and drops frames of closed
// sessions, so that nothing of an abandoned session follows a HELLO_ACK. mu is
// held across blocking writes, so the read loop must never take it.
type wire struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte // guarded by mu
	err error  // guarded by mu; first write error, sticky
}

// send writes f once sess's HELLO_ACK is written, unless sess is closed.
func (w *wire) send(sess *session, f proto.Frame) error {
	select {
	case <-sess.acked:
	case <-sess.ctx.Done():
		return proto.ErrUnavailable
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if sess.closed.Load() {
		return proto.ErrUnavailable
	}
	if w.err != nil {
		return w.err
	}
	b, err := proto.AppendFrame(w.buf[:0], f)
	if err != nil {
		return err
	}
	w.buf = b
	if _, err := w.w.Write(b); err != nil {
		w.err = fmt.Errorf("%w: %v", proto.ErrUnavailable, err)
		return w.err
	}
	return nil
}

// hello writes the resync padding and a HELLO_ACK echoing nonce for sess,
// then lets sess's frames follow. It writes nothing if sess was abandoned
// meanwhile: a later HELLO_ACK is on its way.
func (w *wire) hello(sess *session, nonce proto.Nonce) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if sess.closed.Load() {
		return nil
	}
	if w.err != nil {
		return w.err
	}
	if err := proto.WriteHello(w.w, proto.TypeHelloAck, proto.Hello{Nonce: nonce, Version: proto.Version}); err != nil {
		w.err = fmt.Errorf("%w: %v", proto.ErrUnavailable, err)
		return w.err
	}
	close(sess.acked)
	return nil
}
