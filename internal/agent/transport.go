package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// DialUnix connects to a Unix socket, such as the socket of a QEMU
// virtio-serial chardev (`-chardev socket,path=...,server=on,wait=off`).
func DialUnix(ctx context.Context, path string) (io.ReadWriteCloser, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", proto.ErrUnavailable, path, err)
	}
	return conn, nil
}

// maxConnectReply bounds the reply line of Firecracker's CONNECT handshake.
const maxConnectReply = 64

// DialFirecrackerVsock connects to a guest vsock port through Firecracker's
// hybrid vsock: it connects to the Unix socket udsPath (the vsock device's
// uds_path), writes "CONNECT <port>\n" and expects "OK <host port>\n"; after
// that the connection is the guest's stream.
func DialFirecrackerVsock(ctx context.Context, udsPath string, port uint32) (io.ReadWriteCloser, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", proto.ErrUnavailable, udsPath, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err = firecrackerConnect(conn, port)
	if !stop() {
		err = ctx.Err() // the deadline we forced explains the failure
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: vsock port %d via %s: %w", proto.ErrUnavailable, port, udsPath, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// firecrackerConnect performs the CONNECT handshake on conn. It reads the
// reply one byte at a time so no guest bytes are consumed.
func firecrackerConnect(conn net.Conn, port uint32) error {
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return err
	}
	var line []byte
	b := make([]byte, 1)
	for len(line) < maxConnectReply {
		if _, err := io.ReadFull(conn, b); err != nil {
			return fmt.Errorf("CONNECT reply: %w", err)
		}
		if b[0] == '\n' {
			reply := string(line)
			if !strings.HasPrefix(reply, "OK ") {
				return fmt.Errorf("CONNECT refused: %q", reply)
			}
			return nil
		}
		line = append(line, b[0])
	}
	return fmt.Errorf("CONNECT reply too long: %q", line)
}

// DialVsock connects to port on the VM with context id cid over AF_VSOCK
// (QEMU's vhost-vsock device).
func DialVsock(ctx context.Context, cid, port uint32) (io.ReadWriteCloser, error) {
	f, err := dialVsock(ctx, cid, port)
	if err != nil {
		return nil, fmt.Errorf("%w: vsock %d:%d: %w", proto.ErrUnavailable, cid, port, err)
	}
	return f, nil
}

func dialVsock(ctx context.Context, cid, port uint32) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if err := bindPrivileged(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	err = unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d:%d", cid, port))
	if err == nil {
		return f, nil
	}
	// Wait for the connection to complete, as long as ctx allows.
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	var connErr error
	polled := false
	err = rc.Write(func(fd uintptr) bool {
		if !polled {
			polled = true
			return false // wait for writability first
		}
		v, gerr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if gerr != nil {
			connErr = gerr
		} else if v != 0 {
			connErr = syscall.Errno(v)
		}
		return true
	})
	if err == nil {
		err = connErr
	}
	if err != nil {
		f.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	_ = f.SetWriteDeadline(time.Time{})
	return f, nil
}

// PrepareSocketDir creates dir for agent and VMM sockets with mode 0700 (or
// tightens an existing one), so only the owner can reach the sockets in it.
// It refuses a symlink or a directory owned by another user.
func PrepareSocketDir(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("socket dir: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: socket dir %s is not a directory", proto.ErrInvalidArgument, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: socket dir %s is owned by uid %d", proto.ErrPermission, dir, st.Uid)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	return nil
}

// SecureSocket sets mode 0600 on the Unix socket at path (created by QEMU or
// Firecracker), after checking that it is a socket.
func SecureSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%w: %s is not a socket", proto.ErrInvalidArgument, path)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	return nil
}

// privilegedPorts is the range of vsock source ports the host binds
// before connecting to an agent: ports below 1024 need
// CAP_NET_BIND_SERVICE, and the agent serves no other peers, so the agent
// channel is root's only (see server.PeerAllowed).
const (
	privilegedPortLow  = 512
	privilegedPortHigh = 1023
)

// bindPrivileged binds fd to a free privileged vsock port, starting at a
// random one so that concurrent dials rarely collide.
func bindPrivileged(fd int) error {
	n := privilegedPortHigh - privilegedPortLow + 1
	start := rand.IntN(n)
	for i := range n {
		p := uint32(privilegedPortLow + (start+i)%n)
		err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: p})
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EADDRINUSE):
			continue
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return fmt.Errorf("bind a privileged vsock source port: %w (the agent serves only root: CAP_NET_BIND_SERVICE is needed)", err)
		default:
			return fmt.Errorf("bind vsock source port %d: %w", p, err)
		}
	}
	return fmt.Errorf("bind a privileged vsock source port: all of %d-%d are in use", privilegedPortLow, privilegedPortHigh)
}
