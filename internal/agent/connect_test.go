package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// firstWrite records the first Write on a connection.
type firstWrite struct {
	io.ReadWriteCloser
	first chan []byte
}

func (f *firstWrite) Write(p []byte) (int, error) {
	select {
	case f.first <- append([]byte(nil), p...):
	default:
	}
	return f.ReadWriteCloser.Write(p)
}

// TestConnectPipelinesHealth: Connect's HELLO and its health request go
// out in one write, before the guest answered anything, and the session
// then works as one from NewClient.
func TestConnectPipelinesHealth(t *testing.T) {
	env := newTestEnv(t)
	host, guest := socketpair(t)
	serveConn(t, guest, env.options(t))
	conn := &firstWrite{ReadWriteCloser: host, first: make(chan []byte, 1)}
	ctx := context.Background()
	c, info, err := agent.Connect(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if info.Version != "test-1.0" || !c.Has(proto.CapabilityBootSSHKey) || c.Has("no.such") {
		t.Fatalf("info %+v", info)
	}
	dec := proto.NewDecoder(bytes.NewReader(<-conn.first))
	var types []proto.Type
	for {
		f, err := dec.Next()
		if err != nil {
			break
		}
		types = append(types, f.Type)
	}
	if len(types) != 2 || types[0] != proto.TypeHello || types[1] != proto.TypeRequest {
		t.Fatalf("first write holds %v, want HELLO and REQUEST", types)
	}
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("a call after Connect: %v", err)
	}
}

// TestConnectCanceled: a Connect whose context ends while the guest says
// nothing returns the context's error and closes the connection.
func TestConnectCanceled(t *testing.T) {
	host, guest := socketpair(t)
	defer guest.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := agent.Connect(ctx, host); !errors.Is(err, context.Canceled) {
		t.Fatalf("Connect: %v", err)
	}
}
