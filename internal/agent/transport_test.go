package agent_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/agent/server"
)

// fakeFirecracker imitates Firecracker's hybrid vsock Unix socket: each
// connection starts with "CONNECT <port>\n"; a known port gets "OK <n>\n" and
// is then served by the agent, others are closed.
func fakeFirecracker(t *testing.T, e *testEnv, port uint32) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(conn)
				line, err := r.ReadString('\n')
				if err != nil || line != fmt.Sprintf("CONNECT %d\n", port) {
					conn.Close()
					return
				}
				fmt.Fprintf(conn, "OK 1073741824\n")
				if r.Buffered() > 0 {
					t.Errorf("host sent %d bytes before the OK", r.Buffered())
				}
				_ = server.Serve(ctx, conn, e.options(t))
			}()
		}
	}()
	t.Cleanup(func() { cancel(); ln.Close(); stopped(t, 10*time.Second, "the hybrid vsock listener to stop", done) })
	return path
}

func TestDialFirecrackerVsock(t *testing.T) {
	e := newTestEnv(t)
	path := fakeFirecracker(t, e, proto.DefaultVsockPort)
	ctx := ctxT(t, 30*time.Second)
	conn, err := agent.DialFirecrackerVsock(ctx, path, proto.DefaultVsockPort)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, conn)
	var out strings.Builder
	if _, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"echo", "via vsock"}}, nil, &out, nil); err != nil || out.String() != "via vsock\n" {
		t.Fatalf("Exec = %v, %q", err, out.String())
	}

	if _, err := agent.DialFirecrackerVsock(ctx, path, 9999); !errors.Is(err, proto.ErrUnavailable) {
		t.Errorf("refused port: err = %v, want ErrUnavailable", err)
	}
	if _, err := agent.DialFirecrackerVsock(ctx, filepath.Join(t.TempDir(), "none"), 1); !errors.Is(err, proto.ErrUnavailable) {
		t.Errorf("missing socket: err = %v, want ErrUnavailable", err)
	}
}

func TestDialFirecrackerVsockContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mute.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts, never answers
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := agent.DialFirecrackerVsock(ctx, path, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}

func TestVsockLoopback(t *testing.T) {
	const port = 52000
	l, err := server.ListenVsock(port)
	if err != nil {
		t.Skipf("AF_VSOCK unavailable here: %v", err)
	}
	e := newTestEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = server.New(e.options(t)).ServeListener(ctx, l) }()
	defer func() { cancel(); stopped(t, 10*time.Second, "ServeListener to return", done) }()
	conn, err := agent.DialVsock(ctxT(t, time.Second), unix.VMADDR_CID_LOCAL, port)
	if err != nil {
		t.Skipf("vsock loopback unavailable here: %v", err)
	}
	c := newClient(t, conn)
	if _, err := c.Health(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareSocketDir(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "a", "b")
	loose := filepath.Join(base, "loose")
	if err := os.Mkdir(loose, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o777)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	link := filepath.Join(base, "link")
	os.Symlink(loose, link)
	tests := []struct {
		name string
		dir  string
		kind error
	}{
		{"new", fresh, nil},
		{"tightened", loose, nil},
		{"file", file, proto.ErrInvalidArgument},
		{"symlink", link, proto.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := agent.PrepareSocketDir(tt.dir)
			if tt.kind != nil {
				if !errors.Is(err, tt.kind) {
					t.Fatalf("err = %v, want %v", err, tt.kind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(tt.dir)
			if err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("mode = %v, %v; want 0700", fi.Mode(), err)
			}
		})
	}
}

func TestSecureSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := agent.SecureSocket(sock); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, want 0600", fi.Mode().Perm())
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	if err := agent.SecureSocket(file); !errors.Is(err, proto.ErrInvalidArgument) {
		t.Fatalf("regular file: err = %v", err)
	}
}
