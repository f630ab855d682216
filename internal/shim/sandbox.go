package shim

import (
	"context"
	"fmt"
	"os"
	"syscall"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The pod sandbox ("pause") container of containerd's CRI plugin.
//
// The CRI plugin makes every pod a sandbox container first, with the pod's
// runtime handler, only to hold the pod's namespaces; the app containers
// join them. A VM holds its own namespaces, so booting one for the pause
// process would cost a whole VM per pod for nothing. The shim recognizes
// the sandbox container by the annotations the CRI plugin puts on it and
// runs it as a placeholder with no VM and no process: it holds the task's
// state and answers State, Pids, Wait, Kill, Delete and Stats truthfully
// (the shim itself is the process that holds the sandbox), and it ends on
// any signal that would end a pause process. A pod then costs one VM per
// app container.
//
// What a container that claims to be a sandbox could do with it: nothing
// of its own runs. The spec's process is never executed (not on the host,
// not in a VM), so a spec with the annotation set by someone other than the
// CRI plugin gets a task that runs nothing, never a way around the VM.

// CRI annotations (containerd's pkg/cri/annotations).
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	containerTypeSandbox    = "sandbox"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
)

// isPodSandbox reports whether the spec is a CRI pod's sandbox container.
func isPodSandbox(s *specs.Spec) bool {
	return s != nil && s.Annotations[annotationContainerType] == containerTypeSandbox
}

// isPlaceholder reports whether this shim's task is a sandbox placeholder.
func (s *service) isPlaceholder() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.placeholder
}

// createPlaceholder records the sandbox container's task: no rootfs image,
// no VM. s.mu is held.
func (s *service) createPlaceholder(ctx context.Context, r *taskAPI.CreateTaskRequest, spec *specs.Spec) (*taskAPI.CreateTaskResponse, error) {
	s.id, s.bundle, s.placeholder = r.ID, r.Bundle, true
	s.init = newProcess("", spec.Process, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal})
	s.init.pid = uint32(os.Getpid())
	log.G(ctx).WithField("sandbox", spec.Annotations[annotationSandboxID]).Info("pod sandbox container: a placeholder without a VM")
	s.publish(topicCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: s.init.pid,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	return &taskAPI.CreateTaskResponse{Pid: s.init.pid}, nil
}

// startPlaceholder marks the placeholder running. It writes nothing: its
// output FIFOs, if containerd gave any, are opened and closed at once so a
// reader sees the end of the (empty) output.
func (s *service) startPlaceholder(ctx context.Context, r *taskAPI.StartRequest, p *process) (*taskAPI.StartResponse, error) {
	if r.ExecID != "" {
		return nil, errGRPC(fmt.Errorf("exec %q: %w", r.ExecID, errdefs.ErrNotFound))
	}
	p.mu.Lock()
	if p.status != task.Status_CREATED {
		p.mu.Unlock()
		return nil, errGRPC(fmt.Errorf("pod sandbox %q already started: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	p.mu.Unlock()
	stdout, stderr, err := p.openOutputs(ctx)
	if err != nil {
		return nil, errGRPC(fmt.Errorf("open stdio: %w", err))
	}
	if stdout != nil {
		stdout.Close()
	}
	if stderr != nil {
		stderr.Close()
	}
	p.mu.Lock()
	if p.status != task.Status_CREATED { // killed meanwhile
		p.mu.Unlock()
		return nil, errGRPC(fmt.Errorf("pod sandbox %q has ended: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	p.status = task.Status_RUNNING
	pid := p.pid
	p.mu.Unlock()
	s.publish(topicStart, &eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
	return &taskAPI.StartResponse{Pid: pid}, nil
}

// ignoredSignals are those whose default action does not end a process
// (the pause process has no handler for them); SIGSTOP and SIGTSTP, which
// would stop it, are not modelled and change nothing either.
var ignoredSignals = map[uint32]bool{
	0: true, uint32(syscall.SIGCHLD): true, uint32(syscall.SIGCONT): true, uint32(syscall.SIGURG): true,
	uint32(syscall.SIGWINCH): true, uint32(syscall.SIGSTOP): true, uint32(syscall.SIGTSTP): true,
	uint32(syscall.SIGTTIN): true, uint32(syscall.SIGTTOU): true,
}

// killPlaceholder ends the placeholder with 128+signal, as a process
// killed by that signal; signal 0 only checks that it still runs.
func (s *service) killPlaceholder(r *taskAPI.KillRequest, p *process) error {
	if r.ExecID != "" {
		return fmt.Errorf("exec %q: %w", r.ExecID, errdefs.ErrNotFound)
	}
	st, _, _, _ := p.state()
	if st == task.Status_STOPPED {
		return fmt.Errorf("pod sandbox %q: %w: already finished", r.ID, errdefs.ErrNotFound)
	}
	if r.Signal > 64 {
		return fmt.Errorf("signal %d: %w", r.Signal, errdefs.ErrInvalidArgument)
	}
	if ignoredSignals[r.Signal] {
		return nil
	}
	if p.setExited(128 + int(r.Signal)) {
		s.exited(p)
	}
	return nil
}

// placeholderPids lists the shim, which holds the sandbox, while it runs.
func placeholderPids(p *process) *taskAPI.PidsResponse {
	st, pid, _, _ := p.state()
	out := &taskAPI.PidsResponse{}
	if st == task.Status_RUNNING {
		out.Processes = append(out.Processes, &task.ProcessInfo{Pid: pid})
	}
	return out
}

// placeholderStats reports what the sandbox costs the host: the shim
// process's CPU time and resident memory.
func placeholderStats() (*taskAPI.StatsResponse, error) {
	m, err := vmmMetrics(os.Getpid(), 0, 0)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		return nil, err
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(a)}, nil
}

// errPlaceholder refuses what needs a VM on the pod sandbox container.
func errPlaceholder(op string) error {
	return errGRPC(fmt.Errorf("%s: %w: the pod sandbox container runs no VM and no process", op, errdefs.ErrNotImplemented))
}
