package agent_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/agent/server"
)

func TestHealth(t *testing.T) {
	c, _ := startPair(t)
	info, err := c.Health(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != "test-1.0" || info.Protocol != proto.Version {
		t.Errorf("info = %+v", info)
	}
	for _, m := range []string{proto.MethodExec, proto.MethodUpload, proto.MethodEnvSet, proto.MethodPowerOff} {
		if !slices.Contains(info.Capabilities, m) {
			t.Errorf("capabilities %v lack %s", info.Capabilities, m)
		}
	}
	if err := c.Sync(ctxT(t, 30*time.Second)); err != nil {
		t.Errorf("Sync: %v", err)
	}
}

func TestPowerOff(t *testing.T) {
	c, e := startPair(t)
	if err := c.PowerOff(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.powerOffs:
	case <-time.After(10 * time.Second):
		t.Fatal("PowerOff hook not called")
	}
}

func TestPowerOffUnsupported(t *testing.T) {
	e := newTestEnv(t)
	opts := e.options(t)
	opts.PowerOff = nil
	hostEnd, guestEnd := socketpair(t)
	serveConn(t, guestEnd, opts)
	c := newClient(t, hostEnd)
	if err := c.PowerOff(ctxT(t, 10*time.Second)); !errors.Is(err, proto.ErrUnsupported) {
		t.Fatalf("err = %v, want ErrUnsupported", err)
	}
}

func TestClosedChannelIsUnavailable(t *testing.T) {
	e := newTestEnv(t)
	hostEnd, guestEnd := socketpair(t)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = server.Serve(ctx, guestEnd, e.options(t)) }()
	c := newClient(t, hostEnd)

	// A request in flight when the guest goes away fails too.
	errc := make(chan error, 1)
	out := newFirstLineWriter()
	go func() {
		_, err := c.Exec(ctxT(t, 60*time.Second), agent.ExecRequest{Shell: "echo up; sleep 100"}, nil, out, nil)
		errc <- err
	}()
	recv(t, 10*time.Second, "the command's first line", out.line)
	stop()
	recv(t, 10*time.Second, "server.Serve to return", done)
	if err := recv(t, 10*time.Second, "the in-flight Exec to fail", errc); !errors.Is(err, proto.ErrUnavailable) {
		t.Errorf("in-flight Exec err = %v, want ErrUnavailable", err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client not done after the channel closed")
	}
	if _, err := c.Health(ctxT(t, 10*time.Second)); !errors.Is(err, proto.ErrUnavailable) {
		t.Fatalf("Health err = %v, want ErrUnavailable", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	hostEnd, guestEnd := socketpair(t)
	defer guestEnd.Close()
	go func() { // a guest that reads but never answers
		buf := make([]byte, 4096)
		for {
			if _, err := guestEnd.Read(buf); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := agent.NewClient(ctx, hostEnd); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}
