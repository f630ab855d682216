package shim

import (
	"context"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// stdio names a process's FIFOs, as containerd gives them.
type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
}

// process is the init process of the task (id "") or an exec. Its fields
// up to mu are set once; the rest are guarded by mu.
type process struct {
	execID string
	spec   *specs.Process
	io     stdio
	exited chan struct{} // closed when the process has ended

	mu         sync.Mutex
	guestPid   int // the agent's pid; 0 before Start
	pid        uint32
	status     task.Status
	exitStatus uint32
	exitedAt   time.Time
	stdinFifo  io.ReadCloser // nil once closed
	stdinDone  chan struct{} // closed when the stdin copy has ended; nil without stdin
}

func newProcess(execID string, spec *specs.Process, io stdio) *process {
	return &process{execID: execID, spec: spec, io: io, exited: make(chan struct{}), status: task.Status_CREATED}
}

// state returns the process's status, pid and exit.
func (p *process) state() (task.Status, uint32, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.pid, p.exitStatus, p.exitedAt
}

// setExited records how the process ended and wakes its waiters; only the
// first call counts.
func (p *process) setExited(code int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == task.Status_STOPPED {
		return false
	}
	p.status = task.Status_STOPPED
	p.exitStatus = uint32(code)
	p.exitedAt = time.Now()
	close(p.exited)
	return true
}

// openOutputs opens the stdout and stderr FIFOs for writing (nil when not
// given; stderr is nil on a terminal). containerd holds the read ends.
func (p *process) openOutputs(ctx context.Context) (stdout, stderr io.WriteCloser, err error) {
	open := func(path string) (io.WriteCloser, error) {
		if path == "" {
			return nil, nil
		}
		return fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	}
	if stdout, err = open(p.io.stdout); err != nil {
		return nil, nil, err
	}
	if !p.io.terminal {
		if stderr, err = open(p.io.stderr); err != nil {
			if stdout != nil {
				stdout.Close()
			}
			return nil, nil, err
		}
	}
	return stdout, stderr, nil
}

// openStdin opens the stdin FIFO for reading, or returns nil when none.
// The open completes in the background when containerd's client opens the
// write end, which may be after Start returns: it is not tied to a call's
// context.
func (p *process) openStdin() (io.ReadCloser, error) {
	if p.io.stdin == "" {
		return nil, nil
	}
	f, err := fifo.OpenFifo(context.Background(), p.io.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.stdinFifo = f
	p.stdinDone = make(chan struct{})
	p.mu.Unlock()
	return f, nil
}

// closeStdin closes the stdin FIFO: the copy to the guest ends and the
// guest process sees EOF.
func (p *process) closeStdin() {
	p.mu.Lock()
	f := p.stdinFifo
	p.stdinFifo = nil
	p.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// stdinDrain bounds how long CloseIO lets the stdin copy drain what the
// client wrote before it closed its end.
const stdinDrain = 2 * time.Second

// closeInput is CloseIO: the client has closed its end of the stdin FIFO,
// so the copy reads what is left and ends at EOF; a copy that does not end
// soon (another writer holds the FIFO open) is cut.
func (p *process) closeInput() {
	p.mu.Lock()
	done := p.stdinDone
	p.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(stdinDrain):
		p.closeStdin()
	}
}
