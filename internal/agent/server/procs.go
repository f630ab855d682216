package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Defaults for background processes.
const (
	DefaultMaxProcs        = 256     // tracked processes, running or exited
	DefaultMaxExitedProcs  = 64      // exited processes kept for a later wait or list
	DefaultProcBufferBytes = 1 << 20 // output ring per stream
	maxProcBufferBytes     = 64 << 20
)

// procTable tracks the background processes started through the agent. It
// belongs to the Server, so processes outlive the connection that started
// them and any connection can attach.
type procTable struct {
	mu    sync.Mutex
	procs map[int]*bgProc // guarded by mu
}

// bgProc is one background process.
type bgProc struct {
	pid   int
	argv  []string
	tag   string
	start time.Time
	ctl   controller
	outs  []*ring       // ChanOut, ChanErr (one ring for a terminal)
	done  chan struct{} // closed once exited and its output collected

	inMu  chan struct{} // 1-buffered semaphore over stdin
	stdin *os.File      // guarded by inMu; nil once closed or never opened
	// sharedIn: stdin is the terminal controller, closed with the output.
	sharedIn bool

	mu       sync.Mutex
	result   proto.ExecResult // guarded by mu; valid once exited
	exitedAt time.Time        // guarded by mu; zero while running
}

// info describes p for MethodProcList.
func (p *bgProc) info() proto.ProcInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	pi := proto.ProcInfo{Pid: p.pid, Argv: p.argv, Tag: p.tag, StartUnixNano: p.start.UnixNano(), Pty: p.ctl.tty != nil, Running: p.exitedAt.IsZero()}
	if !pi.Running {
		res := p.result
		pi.Exit = &res
	}
	return pi
}

// get returns the process pid or a NotFound error.
func (t *procTable) get(pid int) (*bgProc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.procs[pid]; p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("%w: no background process with pid %d", proto.ErrNotFound, pid)
}

// reapLocked drops exited processes, oldest exit first, until at most keep
// exited ones remain; t.mu must be held.
func (t *procTable) reapLocked(keep int) {
	var exited []*bgProc
	for _, p := range t.procs {
		p.mu.Lock()
		if !p.exitedAt.IsZero() {
			exited = append(exited, p)
		}
		p.mu.Unlock()
	}
	if len(exited) <= keep {
		return
	}
	sort.Slice(exited, func(i, j int) bool { return exitTime(exited[i]).Before(exitTime(exited[j])) })
	for _, p := range exited[:len(exited)-keep] {
		delete(t.procs, p.pid)
	}
}

func exitTime(p *bgProc) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitedAt
}

// procStart starts a background process (proto.MethodProcStart).
func (s *Server) procStart(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.ProcStartArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	size := a.BufferBytes
	switch {
	case size == 0:
		size = s.opts.ProcBufferBytes
	case size < 0 || size > maxProcBufferBytes:
		return nil, fmt.Errorf("%w: proc.start: buffer_bytes %d not in 1..%d", proto.ErrInvalidArgument, size, maxProcBufferBytes)
	}
	cmd, err := s.command(a.Exec)
	if err != nil {
		return nil, err
	}
	t := &s.procs
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.procs) >= s.opts.MaxProcs {
		t.reapLocked(0)
		if len(t.procs) >= s.opts.MaxProcs {
			return nil, fmt.Errorf("%w: proc.start: %d background processes are running (the limit)", proto.ErrResourceExhausted, len(t.procs))
		}
	}
	ch, err := spawn(cmd, a.Exec)
	if err != nil {
		return nil, err
	}
	p := &bgProc{
		pid: ch.ctl.pgid, argv: cmd.Args, tag: a.Tag, start: time.Now(), ctl: ch.ctl,
		done: make(chan struct{}), inMu: make(chan struct{}, 1), stdin: ch.stdin,
		sharedIn: ch.sharedIn,
	}
	if a.Exec.Pty != nil {
		p.argv = append([]string{cmd.Path}, cmd.Args[1:]...)
	}
	for range ch.outs {
		p.outs = append(p.outs, newRing(size))
	}
	t.procs[p.pid] = p // a stale exited entry with a reused pid is replaced
	go s.supervise(p, ch, a.Exec.TimeoutMillis)
	return proto.ProcStartResult{Pid: p.pid}, nil
}

// supervise collects p's output into its rings, waits for it to exit, and
// records the result.
func (s *Server) supervise(p *bgProc, ch *child, timeoutMillis int64) {
	var pumps sync.WaitGroup
	outs := make([]*output, len(ch.outs))
	for i, f := range ch.outs {
		outs[i] = &output{f: f, tty: ch.ctl.tty != nil}
		r := p.outs[i]
		pumps.Go(func() {
			outs[i].pump(func(b []byte) error { r.write(b); return nil })
		})
	}
	ch.stdin = nil // owned by p now
	res, err := ch.wait(nil, timeoutMillis)
	if err != nil {
		s.opts.Logf("agent: background process %d: %v", p.pid, err)
		res.ExitCode = -1
	}
	for _, o := range outs {
		o.exited()
	}
	pumps.Wait()
	ch.close()
	for _, r := range p.outs {
		r.close()
	}
	p.closeStdin()
	p.mu.Lock()
	p.result = res
	p.exitedAt = time.Now()
	p.mu.Unlock()
	close(p.done)
	s.procs.mu.Lock()
	s.procs.reapLocked(s.opts.MaxExitedProcs)
	s.procs.mu.Unlock()
}

// closeStdin closes p's stdin once nobody writes to it.
func (p *bgProc) closeStdin() {
	p.inMu <- struct{}{}
	defer func() { <-p.inMu }()
	if p.stdin != nil && !p.sharedIn {
		p.stdin.Close()
	}
	p.stdin = nil
}

// writeStdin writes data to p's stdin, giving up when st ends.
func (p *bgProc) writeStdin(st *stream, data []byte) error {
	select {
	case p.inMu <- struct{}{}:
	case <-st.ctx.Done():
		return fmt.Errorf("%w: stdin of process %d", proto.ErrCanceled, p.pid)
	}
	defer func() { <-p.inMu }()
	if p.stdin == nil {
		return fmt.Errorf("%w: process %d has no open stdin", proto.ErrInvalidArgument, p.pid)
	}
	f := p.stdin
	stop := context.AfterFunc(st.ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
	defer func() {
		stop()
		_ = f.SetWriteDeadline(time.Time{})
	}()
	if _, err := f.Write(data); err != nil {
		if st.ctx.Err() != nil {
			return fmt.Errorf("%w: stdin of process %d", proto.ErrCanceled, p.pid)
		}
		return fmt.Errorf("stdin of process %d: %w", p.pid, err)
	}
	return nil
}

// procList streams the tracked processes (proto.MethodProcList).
func (s *Server) procList(st *stream, _ json.RawMessage) (any, error) {
	s.procs.mu.Lock()
	procs := make([]*bgProc, 0, len(s.procs.procs))
	for _, p := range s.procs.procs {
		procs = append(procs, p)
	}
	s.procs.mu.Unlock()
	sort.Slice(procs, func(i, j int) bool { return procs[i].start.Before(procs[j].start) })
	lw := newLineWriter(st)
	for _, p := range procs {
		if err := lw.encode(p.info()); err != nil {
			return nil, err
		}
	}
	return nil, lw.flush()
}

// procInput writes to a process's stdin (proto.MethodProcInput).
func (s *Server) procInput(st *stream, raw json.RawMessage) (any, error) {
	var a proto.ProcInputArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.procs.get(a.Pid)
	if err != nil {
		return nil, err
	}
	if len(a.Data) > 0 {
		if err := p.writeStdin(st, a.Data); err != nil {
			return nil, err
		}
	}
	if a.Close {
		p.closeStdin()
	}
	return nil, nil
}

// procSignal signals a process's group (proto.MethodProcSignal).
func (s *Server) procSignal(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.ProcSignalArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.procs.get(a.Pid)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
		return nil, fmt.Errorf("%w: process %d has exited", proto.ErrNotFound, a.Pid)
	default:
	}
	if a.Signal == "" && a.Resize == nil {
		return nil, fmt.Errorf("%w: proc.signal: neither signal nor resize given", proto.ErrInvalidArgument)
	}
	return nil, p.ctl.apply(proto.Control{Signal: a.Signal, Resize: a.Resize})
}

// procWait waits for a process and reaps it (proto.MethodProcWait).
func (s *Server) procWait(st *stream, raw json.RawMessage) (any, error) {
	var a proto.PidArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.procs.get(a.Pid)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-st.ctx.Done():
		return nil, fmt.Errorf("%w: wait for process %d", proto.ErrCanceled, a.Pid)
	}
	s.procs.mu.Lock()
	if s.procs.procs[p.pid] == p {
		delete(s.procs.procs, p.pid)
	}
	s.procs.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	return proto.ProcExit{Exited: true, Result: p.result}, nil
}

// procAttach streams a process's output, replay first, and feeds it input
// (proto.MethodProcAttach).
func (s *Server) procAttach(st *stream, raw json.RawMessage) (any, error) {
	var a proto.ProcAttachArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.procs.get(a.Pid)
	if err != nil {
		return nil, err
	}
	st.control.Store(&p.ctl)
	if a.Stdin {
		go func() {
			for {
				c, err := st.in.Pop(st.ctx)
				if err != nil {
					return // EOF ends this attachment's input only
				}
				_ = p.writeStdin(st, c.Data)
				st.grant(len(c.Data))
			}
		}()
	}
	var wg sync.WaitGroup
	for i, r := range p.outs {
		wg.Go(func() { follow(st, r, proto.ChanOut+proto.Channel(i), a.NoReplay) })
	}
	wg.Wait()
	if st.ctx.Err() != nil {
		return nil, fmt.Errorf("%w: attachment to process %d", proto.ErrCanceled, a.Pid)
	}
	<-p.done // closed right after the rings: the exit is being recorded
	p.mu.Lock()
	defer p.mu.Unlock()
	return proto.ProcExit{Exited: true, Result: p.result}, nil
}

// follow sends r's content on channel ch of st from the oldest byte held
// (or the newest, with noReplay) until r ends or st is canceled. Bytes that
// were overwritten before they could be sent become a marker line.
func follow(st *stream, r *ring, ch proto.Channel, noReplay bool) {
	off := r.oldest()
	if noReplay {
		off = r.end()
	} else if off > 0 {
		// Output was dropped before this attachment: say how much.
		if st.send(ch, droppedMarker(off)) != nil {
			return
		}
	}
	buf := make([]byte, proto.ChunkSize)
	for {
		n, lost, ended, wake := r.readAt(off, buf)
		if lost > 0 {
			if st.send(ch, droppedMarker(lost)) != nil {
				return
			}
			off += lost
		}
		if n > 0 {
			if st.send(ch, buf[:n]) != nil {
				return
			}
			off += int64(n)
			continue
		}
		if ended {
			return
		}
		select {
		case <-wake:
		case <-st.ctx.Done():
			return
		}
	}
}
