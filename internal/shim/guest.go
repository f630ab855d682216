package shim

import (
	"context"
	"fmt"
	"sync"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/agent"
)

// guest is the shim's connection to the VM's agent, for the background
// process calls (start, attach, input, signal, resize, wait, list) the
// SDK does not offer yet. The SDK's VM handle lets go of its own
// connection (Release) before the shim dials: the agent's channel serves
// one host connection at a time. TODO: use the SDK's process API
// (StartProcess, Attach, ...) once it lands, and drop this bridge.
type guest struct {
	vm *smolvm.VM

	mu sync.Mutex
	c  *agent.Client // guarded by mu; nil when closed
}

// client returns a live agent connection, dialing if needed.
func (g *guest) client(ctx context.Context) (*agent.Client, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.c != nil {
		select {
		case <-g.c.Done():
			g.c.Close()
			g.c = nil
		default:
			return g.c, nil
		}
	}
	g.vm.Release()
	path := g.vm.Info().Sockets.Agent
	if path == "" {
		return nil, fmt.Errorf("VM %s has no agent socket", g.vm.ID())
	}
	conn, err := agent.DialUnix(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("dial the agent: %w", err)
	}
	c, err := agent.NewClient(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("agent handshake: %w", err)
	}
	g.c = c
	return c, nil
}

// close drops the connection, so that the SDK can reach the agent (the
// power-off of Delete).
func (g *guest) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.c != nil {
		g.c.Close()
		g.c = nil
	}
}
