package shim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// recorder is a shim.Publisher that keeps the events.
type recorder struct {
	mu     sync.Mutex
	topics []string
	events []events.Event
}

func (r *recorder) Publish(_ context.Context, topic string, ev events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, topic)
	r.events = append(r.events, ev)
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) got() ([]string, []events.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.topics...), append([]events.Event(nil), r.events...)
}

// sandboxBundle writes a bundle whose spec is a CRI pod's sandbox
// container (as containerd 1.6/1.7 make it) running a process that must
// never run.
func sandboxBundle(t *testing.T, annotations map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	spec := specs.Spec{
		Version:     specs.Version,
		Process:     &specs.Process{Args: []string{"/bin/sh", "-c", "touch " + marker}, Cwd: "/"},
		Root:        &specs.Root{Path: "rootfs"},
		Annotations: annotations,
		Linux:       &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-test"}}},
	}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(marker); err == nil {
			t.Error("the sandbox container's process ran")
		}
	})
	return dir
}

func TestIsPodSandbox(t *testing.T) {
	for _, c := range []struct {
		ann  map[string]string
		want bool
	}{
		{map[string]string{annotationContainerType: "sandbox", annotationSandboxID: "abc"}, true},
		{map[string]string{annotationContainerType: "sandbox"}, true},
		// An app container of the pod: grouped by the sandbox id, but a VM.
		{map[string]string{annotationContainerType: "container", annotationSandboxID: "abc"}, false},
		{map[string]string{annotationContainerType: "Sandbox"}, false},
		{nil, false},
	} {
		if got := isPodSandbox(&specs.Spec{Annotations: c.ann}); got != c.want {
			t.Errorf("isPodSandbox(%v) = %v, want %v", c.ann, got, c.want)
		}
	}
	if isPodSandbox(nil) {
		t.Error("isPodSandbox(nil) = true")
	}
}

// TestPlaceholder drives the task API on a pod sandbox container: no VM
// (the service never opens a SmolVM host), state and events as a pause
// process would give them, refusals for what needs a VM.
func TestPlaceholder(t *testing.T) {
	sctx, sd := shutdown.WithShutdown(context.Background())
	defer sd.Shutdown()
	pub := &recorder{}
	s, err := newService(sctx, pub, sd)
	if err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	bundle := sandboxBundle(t, map[string]string{annotationContainerType: containerTypeSandbox, annotationSandboxID: "pod1"})
	const id = "pod1"
	shimPid := uint32(os.Getpid())

	cr, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: bundle})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if cr.Pid != shimPid {
		t.Errorf("Create: pid %d, want the shim's %d", cr.Pid, shimPid)
	}
	if s.host != nil || s.vm != nil {
		t.Fatal("Create opened a SmolVM host or made a VM for the sandbox container")
	}
	if _, err := os.Stat(filepath.Join(bundle, rootfsImage)); err == nil {
		t.Error("Create built a rootfs image for the sandbox container")
	}
	// A second task in the same shim is refused as for any task.
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "other", Bundle: bundle}); !errdefs.IsAlreadyExists(errdefs.FromGRPC(err)) {
		t.Errorf("second Create: %v, want already exists", err)
	}
	st, err := s.State(ctx, &taskAPI.StateRequest{ID: id})
	if err != nil || st.Status != task.Status_CREATED || st.Pid != shimPid || st.Bundle != bundle {
		t.Fatalf("State after Create: %+v, %v", st, err)
	}
	if pr, err := s.Pids(ctx, &taskAPI.PidsRequest{ID: id}); err != nil || len(pr.Processes) != 0 {
		t.Errorf("Pids before Start: %+v, %v; want none", pr, err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: id}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: id}); !errdefs.IsFailedPrecondition(errdefs.FromGRPC(err)) {
		t.Errorf("second Start: %v, want failed precondition", err)
	}
	if st, err := s.State(ctx, &taskAPI.StateRequest{ID: id}); err != nil || st.Status != task.Status_RUNNING {
		t.Fatalf("State after Start: %+v, %v", st, err)
	}
	if pr, err := s.Pids(ctx, &taskAPI.PidsRequest{ID: id}); err != nil || len(pr.Processes) != 1 || pr.Processes[0].Pid != shimPid {
		t.Errorf("Pids: %+v, %v; want the shim's pid", pr, err)
	}
	if sr, err := s.Stats(ctx, &taskAPI.StatsRequest{ID: id}); err != nil || sr.Stats == nil {
		t.Errorf("Stats: %+v, %v", sr, err)
	}
	// What needs a VM is refused, naming why.
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: id, ExecID: "e1"}); !errdefs.IsNotImplemented(errdefs.FromGRPC(err)) {
		t.Errorf("Exec: %v, want not implemented", err)
	}
	if _, err := s.Pause(ctx, &taskAPI.PauseRequest{ID: id}); !errdefs.IsNotImplemented(errdefs.FromGRPC(err)) {
		t.Errorf("Pause: %v, want not implemented", err)
	}
	if _, err := s.ResizePty(ctx, &taskAPI.ResizePtyRequest{ID: id, Width: 80, Height: 24}); !errdefs.IsNotImplemented(errdefs.FromGRPC(err)) {
		t.Errorf("ResizePty: %v, want not implemented", err)
	}
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: id, Signal: 99}); !errdefs.IsInvalidArgument(errdefs.FromGRPC(err)) {
		t.Errorf("Kill with signal 99: %v, want invalid argument", err)
	}
	// Delete while it runs is refused.
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: id}); !errdefs.IsFailedPrecondition(errdefs.FromGRPC(err)) {
		t.Errorf("Delete while running: %v, want failed precondition", err)
	}
	// Signals a pause process ignores change nothing.
	for _, sig := range []syscall.Signal{0, syscall.SIGCHLD, syscall.SIGWINCH} {
		if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: id, Signal: uint32(sig)}); err != nil {
			t.Errorf("Kill %d: %v", sig, err)
		}
	}
	if st, _ := s.State(ctx, &taskAPI.StateRequest{ID: id}); st.Status != task.Status_RUNNING {
		t.Fatalf("after ignored signals: %v, want running", st.Status)
	}

	waited := make(chan *taskAPI.WaitResponse, 1)
	go func() {
		wr, err := s.Wait(ctx, &taskAPI.WaitRequest{ID: id})
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		waited <- wr
	}()
	select {
	case <-waited:
		t.Fatal("Wait returned while the sandbox runs")
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
		t.Fatalf("Kill SIGKILL: %v", err)
	}
	select {
	case wr := <-waited:
		if wr == nil || wr.ExitStatus != 137 {
			t.Errorf("Wait: %+v, want exit status 137", wr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after SIGKILL")
	}
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL)}); !errdefs.IsNotFound(errdefs.FromGRPC(err)) {
		t.Errorf("Kill after the end: %v, want not found", err)
	}
	if st, _ := s.State(ctx, &taskAPI.StateRequest{ID: id}); st.Status != task.Status_STOPPED || st.ExitStatus != 137 {
		t.Errorf("State after Kill: %v exit %d, want stopped 137", st.Status, st.ExitStatus)
	}
	dr, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: id})
	if err != nil || dr.ExitStatus != 137 || dr.Pid != shimPid {
		t.Fatalf("Delete: %+v, %v", dr, err)
	}
	if _, err := s.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sd.Done():
	case <-time.After(10 * time.Second):
		t.Error("Shutdown after Delete did not end the shim")
	}

	topics, evs := pub.got()
	want := []string{topicCreate, topicStart, topicExit, topicDelete}
	if len(topics) != len(want) {
		t.Fatalf("events %v, want %v", topics, want)
	}
	for i := range want {
		if topics[i] != want[i] {
			t.Errorf("event %d: %s, want %s", i, topics[i], want[i])
		}
	}
	if ex, ok := evs[2].(*eventstypes.TaskExit); !ok || ex.ContainerID != id || ex.ID != id || ex.ExitStatus != 137 || ex.Pid != shimPid {
		t.Errorf("exit event: %+v", evs[2])
	}
}

// TestPlaceholderKillBeforeStart: a sandbox killed before Start (the CRI
// plugin's cleanup after a failed RunPodSandbox) ends without starting.
func TestPlaceholderKillBeforeStart(t *testing.T) {
	sctx, sd := shutdown.WithShutdown(context.Background())
	defer sd.Shutdown()
	s, err := newService(sctx, &recorder{}, sd)
	if err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	bundle := sandboxBundle(t, map[string]string{annotationContainerType: containerTypeSandbox})
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "p", Bundle: bundle}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: "p", Signal: uint32(syscall.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "p"}); !errdefs.IsFailedPrecondition(errdefs.FromGRPC(err)) {
		t.Errorf("Start after Kill: %v, want failed precondition", err)
	}
	wr, err := s.Wait(ctx, &taskAPI.WaitRequest{ID: "p"})
	if err != nil || wr.ExitStatus != 128+uint32(syscall.SIGTERM) {
		t.Errorf("Wait: %+v, %v; want 143", wr, err)
	}
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "p"}); err != nil {
		t.Fatal(err)
	}
}
