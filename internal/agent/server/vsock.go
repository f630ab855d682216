package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Listener yields incoming host connections.
type Listener interface {
	// Accept waits for the next connection.
	Accept() (io.ReadWriteCloser, error)
	// Close stops the listener; a blocked Accept returns an error.
	Close() error
}

// VsockListener is an AF_VSOCK stream listener built on x/sys/unix.
type VsockListener struct {
	f    *os.File
	port uint32
	// AnyPeer accepts peers on any port; by default Accept drops those
	// PeerAllowed refuses.
	AnyPeer bool
}

// MaxPrivilegedPort is the highest vsock port only a privileged host
// process (CAP_NET_BIND_SERVICE) can bind.
const MaxPrivilegedPort = 1023

// PeerAllowed reports whether a vsock peer may use the agent: with
// anyPeer every peer may; otherwise only the host (CID 2) connecting from
// a privileged port, which an unprivileged local user cannot bind, so the
// agent channel is root's only.
func PeerAllowed(peer unix.Sockaddr, anyPeer bool) bool {
	if anyPeer {
		return true
	}
	vm, ok := peer.(*unix.SockaddrVM)
	return ok && vm.CID == unix.VMADDR_CID_HOST && vm.Port <= MaxPrivilegedPort
}

// ListenVsock listens on vsock port for connections from any CID.
func ListenVsock(port uint32) (*VsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen port %d: %w", port, err)
	}
	return &VsockListener{f: os.NewFile(uintptr(fd), fmt.Sprintf("vsock-listen:%d", port)), port: port}, nil
}

// Accept waits for a connection and returns it as a file.
func (l *VsockListener) Accept() (io.ReadWriteCloser, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			var peer unix.Sockaddr
			nfd, peer, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
			if aerr == nil && !PeerAllowed(peer, l.AnyPeer) {
				unix.Close(nfd) // an unprivileged peer: refused; take the next
				continue
			}
			return !errors.Is(aerr, unix.EAGAIN)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("vsock accept: %w", err)
	}
	if aerr != nil {
		return nil, fmt.Errorf("vsock accept: %w", aerr)
	}
	return os.NewFile(uintptr(nfd), fmt.Sprintf("vsock:%d", l.port)), nil
}

// Close stops the listener.
func (l *VsockListener) Close() error { return l.f.Close() }

// ServeListener accepts connections from l and serves each until ctx is done
// or Accept fails; it closes l and waits for the connections to end.
func (s *Server) ServeListener(ctx context.Context, l Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			l.Close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("agent server: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Serve(ctx, conn); err != nil && ctx.Err() == nil {
				s.opts.Logf("agent: connection: %v", err)
			}
		}()
	}
}
