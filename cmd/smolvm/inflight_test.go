package main

import (
	"bufio"
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// inflight is a smolvm command running in the background.
type inflight struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout bytes.Buffer // guarded by mu
	stderr bytes.Buffer // guarded by mu
	lines  chan string  // stdout lines as they come
	done   chan result  // the outcome, once
}

// startCLI runs the smolvm binary in the background; wait for a line of
// its output with waitLine and for its end with wait.
func startCLI(t *testing.T, dataDir string, argv ...string) *inflight {
	t.Helper()
	bin := filepath.Join(vmtest.Binaries(t), "smolvm")
	f := &inflight{cmd: exec.Command(bin, append([]string{"--data-dir", dataDir}, argv...)...),
		lines: make(chan string, 64), done: make(chan result, 1)}
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	f.cmd.Stderr = &lockedWriter{mu: &f.mu, b: &f.stderr}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.cmd.Process.Kill()
		select {
		case <-f.done:
		case <-time.After(time.Minute):
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f.mu.Lock()
			f.stdout.WriteString(sc.Text() + "\n")
			f.mu.Unlock()
			select {
			case f.lines <- sc.Text():
			default:
			}
		}
		err := f.cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		f.mu.Lock()
		f.done <- result{f.stdout.String(), f.stderr.String(), code}
		f.mu.Unlock()
	}()
	return f
}

// waitLine waits up to d for a stdout line equal to want.
func (f *inflight) waitLine(t *testing.T, want string, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l := <-f.lines:
			if strings.TrimSpace(l) == want {
				return
			}
		case r := <-f.done:
			f.done <- r
			t.Fatalf("%v ended before printing %q: %+v", f.cmd.Args, want, r)
		case <-timeout:
			t.Fatalf("%v did not print %q within %v", f.cmd.Args, want, d)
		}
	}
}

// wait waits up to d for the command's end and returns its outcome; a
// command still running then fails the test (it hangs).
func (f *inflight) wait(t *testing.T, d time.Duration) result {
	t.Helper()
	select {
	case r := <-f.done:
		f.done <- r
		return r
	case <-time.After(d):
		f.cmd.Process.Kill()
		t.Fatalf("%v still running after %v", f.cmd.Args, d)
		return result{}
	}
}

// lockedWriter appends to a buffer under a mutex.
type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
