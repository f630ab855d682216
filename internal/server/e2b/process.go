package e2b

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/server/e2b/processpb"
)

// keepaliveEvery is how often a long output stream carries a keepalive
// event, so idle proxies between the SDK and us keep it open.
const keepaliveEvery = 30 * time.Second

// maxStdinChunk bounds one SendInput payload (the SDK sends small ones).
const maxStdinChunk = 4 << 20

// processService answers process.Process calls on a sandbox's VM.
type processService struct{ h *Handler }

// connectErr maps an error's SmolVM kind onto a Connect code.
func connectErr(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	code := connect.CodeInternal
	switch {
	case errors.Is(err, ErrUnauthorized):
		code = connect.CodeUnauthenticated
	case errors.Is(err, smolvm.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, smolvm.ErrInvalidConfig):
		code = connect.CodeInvalidArgument
	case errors.Is(err, smolvm.ErrAlreadyExists):
		code = connect.CodeAlreadyExists
	case errors.Is(err, smolvm.ErrState):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, smolvm.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, smolvm.ErrUnavailable), errors.Is(err, smolvm.ErrCommandUnavailable):
		code = connect.CodeUnavailable
	}
	return connect.NewError(code, err)
}

// eventSender serialises the events of one output stream: the agent may
// deliver stdout and stderr from different goroutines.
type eventSender struct {
	mu   sync.Mutex
	send func(*processpb.ProcessEvent) error
	err  error
}

func (s *eventSender) event(ev *processpb.ProcessEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.err = s.send(ev)
	return s.err
}

// dataWriter turns writes into data events of one kind.
type dataWriter struct {
	s    *eventSender
	kind int // 1 stdout, 2 stderr, 3 pty
}

func (d dataWriter) Write(p []byte) (int, error) {
	b := append([]byte(nil), p...)
	var data processpb.ProcessEvent_DataEvent
	switch d.kind {
	case 1:
		data.Output = &processpb.ProcessEvent_DataEvent_Stdout{Stdout: b}
	case 2:
		data.Output = &processpb.ProcessEvent_DataEvent_Stderr{Stderr: b}
	default:
		data.Output = &processpb.ProcessEvent_DataEvent_Pty{Pty: b}
	}
	if err := d.s.event(&processpb.ProcessEvent{Event: &processpb.ProcessEvent_Data{Data: &data}}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// keepalive sends keepalive events until stop is closed.
func keepalive(s *eventSender, stop <-chan struct{}) {
	t := time.NewTicker(keepaliveEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if s.event(&processpb.ProcessEvent{Event: &processpb.ProcessEvent_Keepalive{Keepalive: &processpb.ProcessEvent_KeepAlive{}}}) != nil {
				return
			}
		}
	}
}

// endEvent describes how a process ended as E2B does: exit code, "exit
// status N" or "signal: NAME", and an error text for a signal.
func endEvent(st smolvm.ExitStatus) *processpb.ProcessEvent {
	end := &processpb.ProcessEvent_EndEvent{ExitCode: int32(st.ExitCode), Exited: st.Signal == "", Status: fmt.Sprintf("exit status %d", st.ExitCode)}
	if st.Signal != "" {
		end.Status = "signal: " + st.Signal
		msg := end.Status
		end.Error = &msg
	}
	return &processpb.ProcessEvent{Event: &processpb.ProcessEvent_End{End: end}}
}

func startEvent(pid int) *processpb.ProcessEvent {
	return &processpb.ProcessEvent{Event: &processpb.ProcessEvent_Start{Start: &processpb.ProcessEvent_StartEvent{Pid: uint32(pid)}}}
}

// follow streams a process's output as events until it exits, then sends
// its end event and lets the agent forget it. A deadline from the caller
// (the SDK's timeoutMs) kills the process; a disconnect leaves it running.
func follow(ctx context.Context, vm *smolvm.VM, pid int, pty, replay bool, s *eventSender) error {
	stop := make(chan struct{})
	defer close(stop)
	go keepalive(s, stop)
	ao := smolvm.AttachOptions{NoReplay: !replay}
	if pty {
		ao.Stdout = dataWriter{s, 3}
	} else {
		ao.Stdout, ao.Stderr = dataWriter{s, 1}, dataWriter{s, 2}
	}
	st, err := vm.Attach(ctx, pid, ao)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			vm.Signal(context.WithoutCancel(ctx), pid, "SIGKILL")
		}
		return connectErr(err)
	}
	if err := s.event(endEvent(st)); err != nil {
		return err
	}
	// Reap it so List stops showing it; a concurrent follower got the end
	// event from its own attachment already.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	vm.WaitProcess(wctx, pid)
	return nil
}

// Start runs a command and streams its events.
func (p *processService) Start(ctx context.Context, req *connect.Request[processpb.StartRequest], stream *connect.ServerStream[processpb.StartResponse]) error {
	vm := vmOf(ctx)
	cfg := req.Msg.GetProcess()
	if cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	po := smolvm.ProcessOptions{
		Argv: append([]string{cfg.GetCmd()}, cfg.GetArgs()...),
		Env:  cfg.GetEnvs(),
		Dir:  resolvePath(ctx, cfg.GetCwd()),
		User: userOf(ctx),
		Tag:  req.Msg.GetTag(),
		// Older SDKs send no stdin flag and expect stdin open.
		Stdin: req.Msg.Stdin == nil || req.Msg.GetStdin(),
	}
	if cfg.Cwd == nil {
		po.Dir = home(po.User)
	}
	if pty := req.Msg.GetPty(); pty != nil {
		po.Pty = true
		po.Rows, po.Cols = clampSize(pty.GetSize().GetRows()), clampSize(pty.GetSize().GetCols())
	}
	pid, err := vm.StartProcess(ctx, po)
	if err != nil {
		return connectErr(err)
	}
	s := &eventSender{send: func(ev *processpb.ProcessEvent) error { return stream.Send(&processpb.StartResponse{Event: ev}) }}
	if err := s.event(startEvent(pid)); err != nil {
		return err
	}
	return follow(ctx, vm, pid, po.Pty, true, s)
}

// clampSize bounds a terminal dimension to what a pty takes.
func clampSize(n uint32) uint16 {
	if n > 1000 {
		return 1000
	}
	return uint16(n)
}

// inputPid resolves the selector of an input or resize call, which come
// per keystroke: a pid is used as given (the agent refuses an unknown
// one), only a tag needs the process list.
func inputPid(ctx context.Context, vm *smolvm.VM, sel *processpb.ProcessSelector) (int, error) {
	if p, ok := sel.GetSelector().(*processpb.ProcessSelector_Pid); ok && p.Pid > 0 {
		return int(p.Pid), nil
	}
	pid, _, err := pidOf(ctx, vm, sel)
	return pid, err
}

// pidOf resolves a selector (pid or tag) to a running process's pid.
func pidOf(ctx context.Context, vm *smolvm.VM, sel *processpb.ProcessSelector) (int, bool, error) {
	if sel == nil {
		return 0, false, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector is required"))
	}
	ps, err := vm.Processes(ctx)
	if err != nil {
		return 0, false, connectErr(err)
	}
	for _, pr := range ps {
		if !pr.Running {
			continue
		}
		switch s := sel.GetSelector().(type) {
		case *processpb.ProcessSelector_Pid:
			if uint32(pr.Pid) == s.Pid {
				return pr.Pid, pr.Pty, nil
			}
		case *processpb.ProcessSelector_Tag:
			if pr.Tag == s.Tag {
				return pr.Pid, pr.Pty, nil
			}
		}
	}
	return 0, false, connect.NewError(connect.CodeNotFound, fmt.Errorf("process %v not found", selectorText(sel)))
}

func selectorText(sel *processpb.ProcessSelector) string {
	if t, ok := sel.GetSelector().(*processpb.ProcessSelector_Tag); ok {
		return "with tag " + t.Tag
	}
	return fmt.Sprint(sel.GetPid())
}

// Connect streams a running process's events from now on.
func (p *processService) Connect(ctx context.Context, req *connect.Request[processpb.ConnectRequest], stream *connect.ServerStream[processpb.ConnectResponse]) error {
	vm := vmOf(ctx)
	pid, pty, err := pidOf(ctx, vm, req.Msg.GetProcess())
	if err != nil {
		return err
	}
	s := &eventSender{send: func(ev *processpb.ProcessEvent) error { return stream.Send(&processpb.ConnectResponse{Event: ev}) }}
	if err := s.event(startEvent(pid)); err != nil {
		return err
	}
	return follow(ctx, vm, pid, pty, false, s)
}

// List returns the running processes started through the agent.
func (p *processService) List(ctx context.Context, req *connect.Request[processpb.ListRequest]) (*connect.Response[processpb.ListResponse], error) {
	ps, err := vmOf(ctx).Processes(ctx)
	if err != nil {
		return nil, connectErr(err)
	}
	out := &processpb.ListResponse{}
	for _, pr := range ps {
		if !pr.Running {
			continue
		}
		info := &processpb.ProcessInfo{Pid: uint32(pr.Pid), Config: &processpb.ProcessConfig{}}
		if len(pr.Argv) > 0 {
			info.Config.Cmd, info.Config.Args = pr.Argv[0], pr.Argv[1:]
		}
		if pr.Tag != "" {
			tag := pr.Tag
			info.Tag = &tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

// input returns the bytes of a ProcessInput, bounded.
func input(in *processpb.ProcessInput) ([]byte, error) {
	var b []byte
	switch v := in.GetInput().(type) {
	case *processpb.ProcessInput_Stdin:
		b = v.Stdin
	case *processpb.ProcessInput_Pty:
		b = v.Pty
	}
	if len(b) > maxStdinChunk {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("input of %d bytes exceeds %d", len(b), maxStdinChunk))
	}
	return b, nil
}

// SendInput writes to a process's stdin (or terminal).
func (p *processService) SendInput(ctx context.Context, req *connect.Request[processpb.SendInputRequest]) (*connect.Response[processpb.SendInputResponse], error) {
	vm := vmOf(ctx)
	pid, err := inputPid(ctx, vm, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	b, err := input(req.Msg.GetInput())
	if err != nil {
		return nil, err
	}
	if err := vm.SendStdin(ctx, pid, b); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&processpb.SendInputResponse{}), nil
}

// StreamInput writes a stream of inputs to one process.
func (p *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[processpb.StreamInputRequest]) (*connect.Response[processpb.StreamInputResponse], error) {
	vm := vmOf(ctx)
	pid := 0
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *processpb.StreamInputRequest_Start:
			var err error
			if pid, err = inputPid(ctx, vm, ev.Start.GetProcess()); err != nil {
				return nil, err
			}
		case *processpb.StreamInputRequest_Data:
			if pid == 0 {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("data before the start event"))
			}
			b, err := input(ev.Data.GetInput())
			if err != nil {
				return nil, err
			}
			if err := vm.SendStdin(ctx, pid, b); err != nil {
				return nil, connectErr(err)
			}
		}
	}
	if err := stream.Err(); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return connect.NewResponse(&processpb.StreamInputResponse{}), nil
}

// SendSignal sends SIGTERM or SIGKILL to a process.
func (p *processService) SendSignal(ctx context.Context, req *connect.Request[processpb.SendSignalRequest]) (*connect.Response[processpb.SendSignalResponse], error) {
	vm := vmOf(ctx)
	pid, _, err := pidOf(ctx, vm, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	var sig string
	switch req.Msg.GetSignal() {
	case processpb.Signal_SIGNAL_SIGKILL:
		sig = "SIGKILL"
	case processpb.Signal_SIGNAL_SIGTERM:
		sig = "SIGTERM"
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("signal %v is not supported", req.Msg.GetSignal()))
	}
	if err := vm.Signal(ctx, pid, sig); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&processpb.SendSignalResponse{}), nil
}

// CloseStdin closes a process's stdin.
func (p *processService) CloseStdin(ctx context.Context, req *connect.Request[processpb.CloseStdinRequest]) (*connect.Response[processpb.CloseStdinResponse], error) {
	vm := vmOf(ctx)
	pid, _, err := pidOf(ctx, vm, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := vm.CloseStdin(ctx, pid); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&processpb.CloseStdinResponse{}), nil
}

// Update resizes a process's terminal.
func (p *processService) Update(ctx context.Context, req *connect.Request[processpb.UpdateRequest]) (*connect.Response[processpb.UpdateResponse], error) {
	vm := vmOf(ctx)
	pid, err := inputPid(ctx, vm, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if pty := req.Msg.GetPty(); pty != nil {
		if err := vm.ResizeProcess(ctx, pid, clampSize(pty.GetSize().GetRows()), clampSize(pty.GetSize().GetCols())); err != nil {
			return nil, connectErr(err)
		}
	}
	return connect.NewResponse(&processpb.UpdateResponse{}), nil
}

// queryUnescape is url.QueryUnescape (kept here so control.go reads alone).
func queryUnescape(s string) (string, error) { return url.QueryUnescape(s) }
