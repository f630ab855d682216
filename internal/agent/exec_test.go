package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

func TestExecResults(t *testing.T) {
	c, _ := startPair(t)
	tests := []struct {
		name           string
		req            agent.ExecRequest
		wantCode       int
		wantSignal     string
		wantOut, wantE string
	}{
		{name: "true", req: agent.ExecRequest{Argv: []string{"true"}}, wantCode: 0},
		{name: "false", req: agent.ExecRequest{Argv: []string{"false"}}, wantCode: 1},
		{name: "exit 3", req: agent.ExecRequest{Shell: "exit 3"}, wantCode: 3},
		{name: "kill -9 self", req: agent.ExecRequest{Shell: "kill -9 $$"}, wantCode: 137, wantSignal: "SIGKILL"},
		{name: "kill -TERM self", req: agent.ExecRequest{Shell: "kill -TERM $$"}, wantCode: 143, wantSignal: "SIGTERM"},
		{name: "stdout and stderr apart", req: agent.ExecRequest{Shell: "echo out; echo err >&2; echo out2"}, wantOut: "out\nout2\n", wantE: "err\n"},
		{name: "argv kept verbatim", req: agent.ExecRequest{Argv: []string{"printf", "%s|", "a b", "$HOME", "*"}}, wantOut: "a b|$HOME|*|"},
		{name: "env and dir", req: agent.ExecRequest{Shell: `printf '%s %s' "$FOO" "$(pwd)"`, Env: map[string]string{"FOO": "bar baz"}, Dir: "/tmp"}, wantOut: "bar baz /tmp"},
		{name: "own uid", req: agent.ExecRequest{Argv: []string{"id", "-u"}, User: fmt.Sprint(os.Getuid())}, wantOut: fmt.Sprintf("%d\n", os.Getuid())},
		{name: "no stdin reads empty", req: agent.ExecRequest{Argv: []string{"cat"}}, wantOut: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			res, err := c.Exec(ctxT(t, 30*time.Second), tt.req, nil, &out, &errOut)
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			if res.ExitCode != tt.wantCode || res.Signal != tt.wantSignal || res.TimedOut {
				t.Errorf("result = %+v, want code %d signal %q", res, tt.wantCode, tt.wantSignal)
			}
			if out.String() != tt.wantOut || errOut.String() != tt.wantE {
				t.Errorf("stdout %q stderr %q, want %q %q", out.String(), errOut.String(), tt.wantOut, tt.wantE)
			}
		})
	}
}

func TestExecErrors(t *testing.T) {
	c, _ := startPair(t)
	tests := []struct {
		name string
		req  agent.ExecRequest
		kind error
	}{
		{"no command", agent.ExecRequest{}, proto.ErrInvalidArgument},
		{"argv and shell", agent.ExecRequest{Argv: []string{"true"}, Shell: "true"}, proto.ErrInvalidArgument},
		{"relative dir", agent.ExecRequest{Argv: []string{"true"}, Dir: "tmp"}, proto.ErrInvalidArgument},
		{"missing executable", agent.ExecRequest{Argv: []string{"no-such-program-smolvm"}}, proto.ErrNotFound},
		{"missing dir", agent.ExecRequest{Argv: []string{"true"}, Dir: "/no/such/dir"}, proto.ErrNotFound},
		{"unknown user", agent.ExecRequest{Argv: []string{"true"}, User: "no-such-user-smolvm"}, proto.ErrNotFound},
		{"bad env name", agent.ExecRequest{Argv: []string{"true"}, Env: map[string]string{"A=B": "x"}}, proto.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Exec(ctxT(t, 30*time.Second), tt.req, nil, nil, nil)
			if !errors.Is(err, tt.kind) {
				t.Fatalf("err = %v, want kind %v", err, tt.kind)
			}
		})
	}
}

func TestExecStdin(t *testing.T) {
	c, _ := startPair(t)
	in := make([]byte, 3<<20+17)
	rand.Read(in)
	var out bytes.Buffer
	res, err := c.Exec(ctxT(t, 60*time.Second), agent.ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(in), &out, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Exec = %+v, %v", res, err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat returned %d bytes, want the %d sent", out.Len(), len(in))
	}
	// A command that ignores its stdin must still finish.
	res, err = c.Exec(ctxT(t, 60*time.Second), agent.ExecRequest{Argv: []string{"true"}}, bytes.NewReader(in), nil, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Exec(true) with stdin = %+v, %v", res, err)
	}
}

func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	c, _ := startPair(t)
	out := newFirstLineWriter()
	start := time.Now()
	res, err := c.Exec(ctxT(t, 30*time.Second), agent.ExecRequest{
		Argv:    []string{"sh", "-c", "echo $$; sleep 100 & sleep 100"},
		Timeout: 500 * time.Millisecond,
	}, nil, out, nil)
	if !errors.Is(err, proto.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if !res.TimedOut || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("result = %+v, want timed out by SIGKILL", res)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	pgid := pgidFrom(t, out)
	waitFor(t, 10*time.Second, "process group to die", func() bool { return !groupAlive(t, pgid) })
}

func TestExecContextCancelKillsProcessGroup(t *testing.T) {
	c, _ := startPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := newFirstLineWriter()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, agent.ExecRequest{Shell: "echo $$; sleep 100 & sleep 100"}, nil, out, nil)
		errc <- err
	}()
	pgid := pgidFrom(t, out)
	cancel()
	if err := recv(t, 10*time.Second, "the canceled Exec to return", errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	waitFor(t, 10*time.Second, "process group to die", func() bool { return !groupAlive(t, pgid) })
	// The session is still usable.
	if _, err := c.Health(ctxT(t, 10*time.Second)); err != nil {
		t.Fatalf("Health after cancel: %v", err)
	}
}

func TestExecConcurrent(t *testing.T) {
	c, _ := startPair(t)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out, errOut bytes.Buffer
			req := agent.ExecRequest{Shell: fmt.Sprintf("echo out-%d; echo err-%d >&2; exit %d", i, i, i%7)}
			res, err := c.Exec(ctxT(t, 60*time.Second), req, nil, &out, &errOut)
			switch {
			case err != nil:
				errs <- fmt.Errorf("command %d: %w", i, err)
			case res.ExitCode != i%7:
				errs <- fmt.Errorf("command %d: exit %d", i, res.ExitCode)
			case out.String() != fmt.Sprintf("out-%d\n", i) || errOut.String() != fmt.Sprintf("err-%d\n", i):
				errs <- fmt.Errorf("command %d: stdout %q stderr %q", i, out.String(), errOut.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// slowCounter consumes output slowly and records peak heap use.
type slowCounter struct {
	n, nextSample int64
	peak          uint64
}

func (s *slowCounter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != 0 {
			return 0, fmt.Errorf("unexpected byte %#x at %d", b, s.n)
		}
	}
	s.n += int64(len(p))
	if s.n >= s.nextSample {
		s.nextSample += 2 << 20
		time.Sleep(5 * time.Millisecond) // a slow reader
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s.peak = max(s.peak, ms.HeapInuse)
	}
	return len(p), nil
}

func TestExecLargeOutputBoundedMemory(t *testing.T) {
	c, _ := startPair(t)
	const size = 64 << 20
	const bound = 32 << 20
	runtime.GC()
	var out slowCounter
	var errOut bytes.Buffer
	res, err := c.Exec(ctxT(t, 120*time.Second), agent.ExecRequest{
		Argv: []string{"head", "-c", fmt.Sprint(size), "/dev/zero"},
	}, nil, &out, &errOut)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Exec = %+v, %v (stderr %q)", res, err, errOut.String())
	}
	if out.n != size {
		t.Fatalf("received %d bytes, want %d", out.n, size)
	}
	t.Logf("peak HeapInuse while streaming %d MiB: %.1f MiB", size>>20, float64(out.peak)/(1<<20))
	if out.peak > bound {
		t.Fatalf("peak HeapInuse %d > %d", out.peak, bound)
	}
}

func TestExecWriterErrorCancels(t *testing.T) {
	c, _ := startPair(t)
	out := newFirstLineWriter()
	failing := writerFunc(func(p []byte) (int, error) {
		out.Write(p)
		return 0, errBoom
	})
	_, err := c.Exec(ctxT(t, 30*time.Second), agent.ExecRequest{Shell: "echo $$; exec sleep 100"}, nil, failing, nil)
	if !errors.Is(err, errBoom) {
		t.Fatalf("err = %v, want the writer's error", err)
	}
	pgid := pgidFrom(t, out)
	waitFor(t, 10*time.Second, "process group to die", func() bool { return !groupAlive(t, pgid) })
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestExecBackgroundChildDoesNotHang(t *testing.T) {
	c, _ := startPair(t)
	var out bytes.Buffer
	start := time.Now()
	res, err := c.Exec(ctxT(t, 30*time.Second), agent.ExecRequest{Shell: "sleep 3 & echo started"}, nil, &out, nil)
	if err != nil || res.ExitCode != 0 || out.String() != "started\n" {
		t.Fatalf("Exec = %+v, %v, %q", res, err, out.String())
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Fatalf("Exec waited %v for a background child", d)
	}
}

func TestExecAsOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root")
	}
	c, _ := startPair(t)
	var out bytes.Buffer
	res, err := c.Exec(ctxT(t, 30*time.Second), agent.ExecRequest{Shell: `echo "$(id -u):$(id -g) $USER $HOME"`, User: "nobody"}, nil, &out, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Exec = %+v, %v", res, err)
	}
	if out.String() != "65534:65534 nobody /nonexistent\n" {
		t.Fatalf("output %q", out.String())
	}
}
