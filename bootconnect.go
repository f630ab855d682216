package smolvm

import (
	"context"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// earlyWait bounds how long Start waits, after the ready marker, for a
// connection begun while the guest booted before it connects anew.
const earlyWait = agentAttempt

// earlyConn is an agent connection begun while the guest boots (see
// connectEarly).
type earlyConn struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when c and err are set
	c      *agent.Client
	err    error
}

// connectEarly starts connecting to the agent while the guest boots, over
// the backend's buffered channel (virtio-serial): the HELLO and health
// check wait in the channel until the agent server opens it, so the
// handshake is done by the time the init prints the ready marker instead
// of starting then. It returns nil when the backend has no such channel.
// One connection, no retries: nothing stacks up while the guest boots.
func connectEarly(ctx context.Context, be vmm.Backend, inst vmm.Instance) *earlyConn {
	var d *vmm.Dialer
	for _, x := range be.AgentDialers(inst) {
		if x.Buffered {
			d = &x
			break
		}
	}
	if d == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	e := &earlyConn{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.c, e.err = dialOne(ctx, *d)
	}()
	return e
}

// take returns the connection once it is made, waiting at most d; nil if
// it failed or took longer (then it is abandoned).
func (e *earlyConn) take(ctx context.Context, d time.Duration) *agent.Client {
	if e == nil {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-e.done:
	case <-t.C:
	case <-ctx.Done():
	}
	e.abandon()
	if e.err != nil {
		return nil
	}
	return e.c
}

// abandon stops the attempt and waits for it to end; a connection it made
// is then the caller's (see take) or closed here (after abandon alone).
func (e *earlyConn) abandon() {
	if e == nil {
		return
	}
	e.cancel()
	<-e.done
}

// close abandons the attempt and closes what it made.
func (e *earlyConn) close() {
	if e == nil {
		return
	}
	e.abandon()
	if e.c != nil {
		e.c.Close()
	}
}

// useClient makes c the VM's cached agent connection, closing the one it
// replaces.
func (vm *VM) useClient(c *agent.Client) {
	vm.mu.Lock()
	old := vm.ac
	vm.ac = c
	vm.mu.Unlock()
	if old != nil && old != c {
		old.Close()
	}
}
