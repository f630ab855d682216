package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	cgroupstats "github.com/containerd/cgroups/stats/v1"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Event topics, as containerd names them.
const (
	topicCreate      = "/tasks/create"
	topicStart       = "/tasks/start"
	topicExit        = "/tasks/exit"
	topicDelete      = "/tasks/delete"
	topicExecAdded   = "/tasks/exec-added"
	topicExecStarted = "/tasks/exec-started"
	topicPaused      = "/tasks/paused"
	topicResumed     = "/tasks/resumed"
)

// teardownTimeout bounds deleting a VM after its task.
const teardownTimeout = 2 * time.Minute

// service is the task service of one shim: one task, one microVM.
type service struct {
	ctx context.Context // the shim's; ends at shutdown
	pub shim.Publisher
	sd  shutdown.Service

	mu       sync.Mutex
	id       string // the task's id; empty before Create
	bundle   string
	host     *smolvm.Host
	vm       *smolvm.VM
	init     *process
	execs    map[string]*process
	deleted  bool
	outputWG sync.WaitGroup // stdout/stderr copies of running processes

	// placeholder (guarded by mu): the task is a CRI pod's sandbox
	// container, run without a VM (sandbox.go).
	placeholder bool
}

var _ taskAPI.TaskService = (*service)(nil)

// newService returns the task service of a shim process.
func newService(ctx context.Context, pub shim.Publisher, sd shutdown.Service) (*service, error) {
	s := &service{ctx: ctx, pub: pub, sd: sd, execs: map[string]*process{}}
	sd.RegisterCallback(func(context.Context) error {
		s.mu.Lock()
		h := s.host
		s.mu.Unlock()
		if h != nil {
			return h.Close()
		}
		return nil
	})
	return s, nil
}

// RegisterTTRPC serves the task API v2 on server.
func (s *service) RegisterTTRPC(server ttrpcServer) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

// publish sends an event to containerd; failures are logged (the
// publisher retries on its own).
func (s *service) publish(topic string, ev any) {
	ctx := namespaces.WithNamespace(context.WithoutCancel(s.ctx), namespaceOf(s.ctx))
	if err := s.pub.Publish(ctx, topic, ev); err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Warn("publish event")
	}
}

func namespaceOf(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// errGRPC maps an error to containerd's kinds on the wire.
func errGRPC(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, smolvm.ErrNotFound), errors.Is(err, proto.ErrNotFound):
		err = fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, smolvm.ErrInvalidConfig), errors.Is(err, proto.ErrInvalidArgument):
		err = fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	case errors.Is(err, smolvm.ErrState):
		err = fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	case errors.Is(err, smolvm.ErrUnavailable), errors.Is(err, smolvm.ErrCommandUnavailable):
		err = fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
	}
	return errdefs.ToGRPC(err)
}

// process returns the init process ("") or an exec.
func (s *service) process(id, execID string) (*process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.init == nil || id != s.id {
		return nil, fmt.Errorf("task %q: %w", id, errdefs.ErrNotFound)
	}
	if execID == "" {
		return s.init, nil
	}
	p, ok := s.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q of task %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return p, nil
}

// Create boots the task's VM: the bundle's root filesystem (or the
// snapshotter's mounts) becomes an ext4 image that the VM boots as its
// root, sized from the spec's resources and annotations. The OCI process
// waits for Start. A CRI pod's sandbox container gets no VM (sandbox.go).
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.init != nil {
		return nil, errGRPC(fmt.Errorf("task %q: this shim already runs task %q: %w", r.ID, s.id, errdefs.ErrAlreadyExists))
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, errGRPC(fmt.Errorf("checkpoint: %w", errdefs.ErrNotImplemented))
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err))
	}
	if isPodSandbox(spec) {
		return s.createPlaceholder(ctx, r, spec)
	}
	ns := namespaceOf(ctx)
	img := filepath.Join(r.Bundle, rootfsImage)
	cfg, err := vmConfig(spec, vmID(ns, r.ID), img)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err))
	}
	if p := netnsPath(spec); p != "" && !cfg.NoNetwork && !inNetns(p) {
		// The server was not started in it (the namespace was not there
		// yet): a NIC here would be on the wrong network.
		log.G(ctx).WithField("netns", p).Warn("the shim does not run in the spec's network namespace: the VM gets no NIC")
		cfg.NoNetwork, cfg.DNSServers = true, nil
	}
	if err := podNetwork(spec, &cfg); err != nil {
		return nil, errGRPC(fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err))
	}
	if s.host == nil {
		h, err := smolvm.Open(ctx, smolvm.HostOptions{})
		if err != nil {
			return nil, errGRPC(err)
		}
		s.host = h
	}
	// Undo in reverse on failure, on a context that outlives ctx.
	var undo []func()
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	root := rootPath(spec, r.Bundle)
	unmount, err := mountRootfs(r.Rootfs, root)
	if err != nil {
		return nil, errGRPC(err)
	}
	took, err := buildRootfs(ctx, root, img)
	if uerr := unmount(); uerr != nil {
		log.G(ctx).WithError(uerr).Warn("unmount rootfs")
	}
	if err != nil {
		return nil, errGRPC(err)
	}
	undo = append(undo, func() { os.Remove(img) })
	log.G(ctx).WithField("took", took).WithField("image", img).Info("rootfs image built")

	bootStart := time.Now()
	vm, err := s.host.Create(ctx, cfg)
	if err != nil {
		return nil, errGRPC(err)
	}
	undo = append(undo, func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
		defer cancel()
		vm.ForceDelete(dctx)
	})
	if err := vm.Start(ctx); err != nil {
		return nil, errGRPC(err)
	}
	log.G(ctx).WithField("took", time.Since(bootStart)).WithField("vm", vm.ID()).WithField("pod", spec.Annotations[annotationSandboxID]).Info("VM booted")
	if spec.Hostname != "" {
		s.setHostname(ctx, vm, spec.Hostname)
	}
	s.id, s.bundle, s.vm = r.ID, r.Bundle, vm
	s.init = newProcess("", spec.Process, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal})
	s.init.pid = uint32(vm.Info().PID)
	s.publish(topicCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: s.init.pid, Checkpoint: r.Checkpoint,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	return &taskAPI.CreateTaskResponse{Pid: s.init.pid}, nil
}

// setHostname sets the guest's hostname with the rootfs's own hostname
// program, when it has one; the VM id stays the hostname otherwise.
func (s *service) setHostname(ctx context.Context, vm *smolvm.VM, name string) {
	res, err := vm.Exec(ctx, smolvm.ExecOptions{Argv: []string{"hostname", name}, User: "root", Dir: "/", Timeout: 10 * time.Second})
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("hostname exited with %d", res.ExitCode)
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("set hostname (the rootfs needs a hostname program)")
	}
}

// Start runs a created process through the agent, with its stdio on
// containerd's FIFOs.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		return s.startPlaceholder(ctx, r, p)
	}
	p.mu.Lock()
	started := p.status != task.Status_CREATED
	p.mu.Unlock()
	if started {
		return nil, errGRPC(fmt.Errorf("process %q already started: %w", r.ExecID, errdefs.ErrFailedPrecondition))
	}
	req, err := execRequest(p.spec)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err))
	}
	stdout, stderr, err := p.openOutputs(ctx)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("open stdio: %w", err))
	}
	closeOut := func() {
		if stdout != nil {
			stdout.Close()
		}
		if stderr != nil {
			stderr.Close()
		}
	}
	stdin, err := p.openStdin()
	if err != nil {
		closeOut()
		return nil, errGRPC(fmt.Errorf("open stdin: %w", err))
	}
	req.Tag, req.Stdin = "containerd:"+r.ID+"/"+r.ExecID, stdin != nil
	gpid, err := s.vm.StartProcess(ctx, req)
	if err != nil {
		closeOut()
		p.closeStdin()
		return nil, errGRPC(err)
	}
	p.mu.Lock()
	p.guestPid = gpid
	if r.ExecID != "" {
		p.pid = uint32(gpid)
	}
	p.status = task.Status_RUNNING
	pid := p.pid
	p.mu.Unlock()

	if stdin != nil {
		go s.copyStdin(p, gpid, stdin)
	}
	s.outputWG.Add(1)
	go s.follow(p, gpid, stdout, stderr)

	if r.ExecID == "" {
		s.publish(topicStart, &eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
	} else {
		s.publish(topicExecStarted, &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	}
	return &taskAPI.StartResponse{Pid: pid}, nil
}

// copyStdin feeds the stdin FIFO to the guest process and closes the
// process's stdin at EOF or CloseIO.
func (s *service) copyStdin(p *process, gpid int, in io.Reader) {
	ctx := context.WithoutCancel(s.ctx)
	buf := make([]byte, 32<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if werr := s.vm.SendStdin(ctx, gpid, buf[:n]); werr != nil {
				log.G(ctx).WithError(werr).WithField("exec", p.execID).Debug("stdin: write to the guest")
				break
			}
		}
		if err != nil {
			log.G(ctx).WithError(err).WithField("exec", p.execID).Debug("stdin: end")
			break
		}
	}
	p.closeStdin()
	if err := s.vm.CloseStdin(ctx, gpid); err != nil {
		log.G(ctx).WithError(err).WithField("exec", p.execID).Debug("stdin: close in the guest")
	}
	p.mu.Lock()
	close(p.stdinDone)
	p.mu.Unlock()
}

// follow copies the process's output to its FIFOs until it exits, then
// records the exit and tells containerd. The output a hostile guest sends
// is bounded by the FIFOs' readers: we copy, we do not buffer.
func (s *service) follow(p *process, gpid int, stdout, stderr io.WriteCloser) {
	defer s.outputWG.Done()
	ctx := context.WithoutCancel(s.ctx)
	var out, errw io.Writer
	if stdout != nil {
		out = stdout
	}
	if stderr != nil {
		errw = stderr
	}
	res, err := s.vm.Attach(ctx, gpid, smolvm.AttachOptions{Stdout: out, Stderr: errw})
	if err == nil {
		if wres, werr := s.vm.WaitProcess(ctx, gpid); werr == nil {
			res = wres
		}
	}
	code := exitStatus(res.ExitCode)
	log.G(ctx).WithField("exec", p.execID).WithField("code", code).Debug("process exited")
	if err != nil {
		log.G(ctx).WithError(err).WithField("exec", p.execID).Warn("lost the process: reporting it as killed")
		code = 128 + 9
	}
	if stdout != nil {
		stdout.Close()
	}
	if stderr != nil {
		stderr.Close()
	}
	p.closeStdin()
	if !p.setExited(code) {
		return
	}
	s.exited(p)
}

// exitStatus bounds an exit code from the guest to what a process can
// report (0-255); the agent's -1 (status unknown) and anything a hostile
// guest makes up outside that range become 255.
func exitStatus(code int) int {
	if code < 0 || code > 255 {
		return 255
	}
	return code
}

// exited publishes a process's exit. When the init process ends, the
// task's other processes are killed, as in a container whose pid 1 dies.
func (s *service) exited(p *process) {
	_, pid, code, at := p.state()
	s.mu.Lock()
	id := s.id
	var others []*process
	if p.execID == "" {
		for _, e := range s.execs {
			others = append(others, e)
		}
	}
	s.mu.Unlock()
	for _, e := range others {
		e.mu.Lock()
		gpid, running := e.guestPid, e.status == task.Status_RUNNING
		e.mu.Unlock()
		if running {
			s.vm.Signal(context.WithoutCancel(s.ctx), gpid, "SIGKILL")
		}
	}
	s.publish(topicExit, &eventstypes.TaskExit{
		ContainerID: id, ID: execOrID(p.execID, id), Pid: pid, ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at),
	})
}

func execOrID(execID, id string) string {
	if execID != "" {
		return execID
	}
	return id
}

// Delete removes an exec, or the task with its VM: VMM, disk image,
// sockets and state all go.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	st, pid, code, at := p.state()
	if st == task.Status_RUNNING || st == task.Status_PAUSED {
		return nil, errGRPC(fmt.Errorf("process %q is running: %w", execOrID(r.ExecID, r.ID), errdefs.ErrFailedPrecondition))
	}
	if st == task.Status_CREATED {
		p.setExited(0)
		_, pid, code, at = p.state()
	}
	if r.ExecID != "" {
		s.mu.Lock()
		delete(s.execs, r.ExecID)
		s.mu.Unlock()
		return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}
	if err := s.teardown(ctx); err != nil {
		return nil, errGRPC(err)
	}
	s.publish(topicDelete, &eventstypes.TaskDelete{
		ContainerID: r.ID, ID: r.ID, Pid: pid, ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at),
	})
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// teardown deletes the VM and the rootfs image.
func (s *service) teardown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deleted || s.placeholder {
		s.deleted = true
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	if err := s.vm.Delete(ctx); err != nil && !errors.Is(err, smolvm.ErrNotFound) {
		// A guest that does not power off is killed.
		if err := s.vm.ForceDelete(ctx); err != nil && !errors.Is(err, smolvm.ErrNotFound) {
			return fmt.Errorf("delete VM %s: %w", s.vm.ID(), err)
		}
	}
	if err := os.Remove(filepath.Join(s.bundle, rootfsImage)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s.deleted = true
	return nil
}

// Exec adds a process to the task; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	if _, err := s.process(r.ID, ""); err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		return nil, errPlaceholder("exec")
	}
	var ps specs.Process
	if r.Spec == nil {
		return nil, errGRPC(fmt.Errorf("exec %q: spec: %w: missing", r.ExecID, errdefs.ErrInvalidArgument))
	}
	if err := json.Unmarshal(r.Spec.Value, &ps); err != nil {
		return nil, errGRPC(fmt.Errorf("exec %q: spec: %w: %v", r.ExecID, errdefs.ErrInvalidArgument, err))
	}
	if _, err := execRequest(&ps); err != nil {
		return nil, errGRPC(fmt.Errorf("exec %q: %w: %v", r.ExecID, errdefs.ErrInvalidArgument, err))
	}
	s.mu.Lock()
	if _, ok := s.execs[r.ExecID]; ok || r.ExecID == "" {
		s.mu.Unlock()
		return nil, errGRPC(fmt.Errorf("exec %q: %w", r.ExecID, errdefs.ErrAlreadyExists))
	}
	st, _, _, _ := s.init.state()
	if st == task.Status_STOPPED {
		s.mu.Unlock()
		return nil, errGRPC(fmt.Errorf("exec %q: the task has ended: %w", r.ExecID, errdefs.ErrFailedPrecondition))
	}
	s.execs[r.ExecID] = newProcess(r.ExecID, &ps, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal || ps.Terminal})
	s.mu.Unlock()
	s.publish(topicExecAdded, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &ptypes.Empty{}, nil
}

// Kill sends a signal to a process (the guest agent signals its process
// group).
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		if err := s.killPlaceholder(r, p); err != nil {
			return nil, errGRPC(err)
		}
		return &ptypes.Empty{}, nil
	}
	p.mu.Lock()
	st, gpid := p.status, p.guestPid
	p.mu.Unlock()
	switch st {
	case task.Status_STOPPED:
		return nil, errGRPC(fmt.Errorf("process %q: %w: already finished", execOrID(r.ExecID, r.ID), errdefs.ErrNotFound))
	case task.Status_CREATED:
		// Never started: it ends without running.
		if p.setExited(128 + int(r.Signal)) {
			s.exited(p)
		}
		return &ptypes.Empty{}, nil
	}
	if err := s.vm.Signal(ctx, gpid, strconv.FormatUint(uint64(r.Signal), 10)); err != nil {
		return nil, errGRPC(err)
	}
	if r.All && r.ExecID == "" {
		s.mu.Lock()
		var others []int
		for _, e := range s.execs {
			e.mu.Lock()
			if e.status == task.Status_RUNNING {
				others = append(others, e.guestPid)
			}
			e.mu.Unlock()
		}
		s.mu.Unlock()
		for _, pid := range others {
			s.vm.Signal(ctx, pid, strconv.FormatUint(uint64(r.Signal), 10))
		}
	}
	return &ptypes.Empty{}, nil
}

// Wait waits for a process to exit and returns its status.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errGRPC(ctx.Err())
	}
	_, _, code, at := p.state()
	return &taskAPI.WaitResponse{ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// State reports a process's status and stdio.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	st, pid, code, at := p.state()
	if st == task.Status_RUNNING && r.ExecID == "" && s.vm != nil && s.vm.Info().Status == smolvm.StatePaused {
		st = task.Status_PAUSED
	}
	return &taskAPI.StateResponse{
		ID: execOrID(r.ExecID, r.ID), Bundle: s.bundle, Pid: pid, Status: st,
		Stdin: p.io.stdin, Stdout: p.io.stdout, Stderr: p.io.stderr, Terminal: p.io.terminal,
		ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at), ExecID: r.ExecID,
	}, nil
}

// Pids lists the guest processes the agent runs for the task.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	p, err := s.process(r.ID, "")
	if err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		return placeholderPids(p), nil
	}
	ps, err := s.vm.Processes(ctx)
	if err != nil {
		return nil, errGRPC(err)
	}
	out := &taskAPI.PidsResponse{}
	for _, p := range ps {
		if p.Running {
			out.Processes = append(out.Processes, &task.ProcessInfo{Pid: uint32(p.Pid)})
		}
	}
	return out, nil
}

// Pause freezes the VM's vCPUs.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	if _, err := s.process(r.ID, ""); err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		return nil, errPlaceholder("pause")
	}
	if err := s.vm.Pause(ctx); err != nil {
		return nil, errGRPC(err)
	}
	s.publish(topicPaused, &eventstypes.TaskPaused{ContainerID: r.ID})
	return &ptypes.Empty{}, nil
}

// Resume restarts the VM's vCPUs.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	if _, err := s.process(r.ID, ""); err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		return nil, errPlaceholder("resume")
	}
	if err := s.vm.Resume(ctx); err != nil {
		return nil, errGRPC(err)
	}
	s.publish(topicResumed, &eventstypes.TaskResumed{ContainerID: r.ID})
	return &ptypes.Empty{}, nil
}

// ResizePty sets a process's terminal size.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		return nil, errPlaceholder("resize the terminal")
	}
	p.mu.Lock()
	gpid := p.guestPid
	p.mu.Unlock()
	if gpid == 0 {
		return nil, errGRPC(fmt.Errorf("process not started: %w", errdefs.ErrFailedPrecondition))
	}
	if err := s.vm.ResizeProcess(ctx, gpid, uint16(min(r.Height, 0xffff)), uint16(min(r.Width, 0xffff))); err != nil {
		return nil, errGRPC(err)
	}
	return &ptypes.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errGRPC(err)
	}
	if r.Stdin {
		p.closeInput()
	}
	return &ptypes.Empty{}, nil
}

// Checkpoint is not supported.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	return nil, errGRPC(fmt.Errorf("checkpoint: %w", errdefs.ErrNotImplemented))
}

// Update is not supported: a VM's memory and vCPUs are fixed at Create.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	return nil, errGRPC(fmt.Errorf("update resources: %w: a VM is sized at create", errdefs.ErrNotImplemented))
}

// Stats reports what the VM costs the host (cgroup v1 metrics format):
// CPU and memory from the VM's cgroup, the VMM's own process where the
// shim manages no cgroups (vmmMetrics); pids are the guest processes the
// agent runs for the task.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	if _, err := s.process(r.ID, ""); err != nil {
		return nil, errGRPC(err)
	}
	if s.isPlaceholder() {
		resp, err := placeholderStats()
		return resp, errGRPC(err)
	}
	inf := s.vm.Info()
	if inf.PID == 0 {
		return nil, errGRPC(fmt.Errorf("stats: the VM is not running: %w", errdefs.ErrFailedPrecondition))
	}
	var guestPids uint64
	if ps, err := s.vm.Processes(ctx); err == nil {
		for _, p := range ps {
			if p.Running {
				guestPids++
			}
		}
	}
	var m *cgroupstats.Metrics
	if u, err := s.vm.Usage(ctx); err == nil {
		m = cgroupMetrics(u, guestPids)
	} else if m, err = vmmMetrics(inf.PID, uint64(inf.Config.MemSizeMiB)<<20, guestPids); err != nil {
		return nil, errGRPC(fmt.Errorf("stats: %w", err))
	}
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		return nil, errGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(a)}, nil
}

// Connect returns the shim's and the task's pids.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if p, err := s.process(r.ID, ""); err == nil {
		_, resp.TaskPid, _, _ = p.state()
	}
	return resp, nil
}

// Shutdown ends the shim once its task is deleted.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	live := s.init != nil && !s.deleted
	s.mu.Unlock()
	if live {
		return &ptypes.Empty{}, nil
	}
	s.sd.Shutdown()
	return &ptypes.Empty{}, nil
}
