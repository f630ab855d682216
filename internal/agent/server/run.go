package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Run serves the agent as the guest's init needs it: on the virtio-serial
// port (waiting up to Options.VirtioWait for the device to appear) and on
// vsock when Options.VsockPort is set and AF_VSOCK works. It returns when ctx
// is done, or with an error when neither transport is available.
func Run(ctx context.Context, opts Options) error {
	return New(opts).Run(ctx)
}

// Run is the method form of the package-level Run.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	serving := 0
	ready := sync.OnceFunc(func() {
		if s.opts.Ready != nil {
			s.opts.Ready()
		}
	})
	if s.opts.VsockPort != 0 {
		l, err := ListenVsock(s.opts.VsockPort)
		if err != nil {
			s.opts.Logf("agent: no vsock: %v", err)
		} else {
			l.AnyPeer = s.opts.VsockAnyPeer
			serving++
			s.opts.Logf("agent: listening on vsock port %d", s.opts.VsockPort)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.ServeListener(ctx, l); err != nil && ctx.Err() == nil {
					s.opts.Logf("agent: vsock: %v", err)
				}
			}()
			// Without a virtio-serial device (Firecracker) vsock is the
			// channel: ready now, not after openVirtioPort's wait.
			if !virtioPortsPresent(s.opts.VirtioClassDir) {
				ready()
			}
		}
	}
	port, err := s.openVirtioPort(ctx)
	if err != nil {
		s.opts.Logf("agent: no virtio-serial port: %v", err)
	} else {
		serving++
		s.opts.Logf("agent: serving %s", s.opts.VirtioPort)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Serve(ctx, port); err != nil && ctx.Err() == nil {
				s.opts.Logf("agent: virtio-serial: %v", err)
			}
		}()
	}
	if serving == 0 {
		return fmt.Errorf("agent server: no transport: no vsock and no %s", s.opts.VirtioPort)
	}
	ready()
	<-ctx.Done()
	return ctx.Err()
}

// openVirtioPort waits for the virtio-serial device and opens it in blocking
// mode. The port persists across host connections; see persistentPort.
func (s *Server) openVirtioPort(ctx context.Context) (io.ReadWriteCloser, error) {
	deadline := time.Now().Add(s.opts.VirtioWait)
	for {
		fd, err := unix.Open(s.opts.VirtioPort, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err == nil {
			return &persistentPort{ReadWriteCloser: os.NewFile(uintptr(fd), s.opts.VirtioPort)}, nil
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENXIO) {
			return nil, fmt.Errorf("open %s: %w", s.opts.VirtioPort, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("open %s: %w", s.opts.VirtioPort, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// virtioPortsPresent reports whether the guest has virtio-serial ports
// (entries in classDir, /sys/class/virtio-ports by default).
func virtioPortsPresent(classDir string) bool {
	if classDir == "" {
		classDir = DefaultVirtioClassDir
	}
	ports, _ := filepath.Glob(filepath.Join(classDir, "vport*"))
	return len(ports) > 0
}

// reconnectPoll is how often a virtio-serial port without a host is polled.
const reconnectPoll = 20 * time.Millisecond

// persistentPort is a virtio-serial port. A read returns EOF while no host
// is connected; persistentPort hides that by waiting, so one decoder sees a
// single endless stream across host connections.
type persistentPort struct {
	io.ReadWriteCloser
}

// Read reads from the port, waiting while no host is connected.
func (p *persistentPort) Read(b []byte) (int, error) {
	for {
		n, err := p.ReadWriteCloser.Read(b)
		if n > 0 || (err != nil && !errors.Is(err, io.EOF)) {
			return n, err
		}
		time.Sleep(reconnectPoll)
	}
}
