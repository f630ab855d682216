package agent_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
)

// termSession reads a terminal's output in the background.
type termSession struct {
	t    *testing.T
	term *agent.Terminal
	out  lockedBuffer
	eof  chan error
	mark int // output before mark was matched already
}

func startTerm(t *testing.T, c *agent.Client, req agent.ExecRequest, pty agent.PtyOptions) *termSession {
	t.Helper()
	term, err := c.StartTerminal(ctxT(t, 60*time.Second), req, pty)
	if err != nil {
		t.Fatalf("StartTerminal: %v", err)
	}
	t.Cleanup(func() { term.Close() })
	s := &termSession{t: t, term: term, eof: make(chan error, 1)}
	go func() {
		_, err := io.Copy(&s.out, term)
		s.eof <- err
	}()
	return s
}

// typeLine waits for the shell's prompt, types text and waits until the
// output that follows matches re, returning the match. Typing before the
// prompt would interleave the echo, the prompt and the output.
func (s *termSession) typeLine(text string, re *regexp.Regexp) []string {
	s.t.Helper()
	s.expect(regexp.MustCompile(`[#$] $`))
	if _, err := s.term.Write([]byte(text)); err != nil {
		s.t.Fatalf("Write: %v", err)
	}
	return s.expect(re)
}

// expect waits until the output after the last match matches re.
func (s *termSession) expect(re *regexp.Regexp) []string {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := s.out.String()
		if loc := re.FindStringSubmatchIndex(out[s.mark:]); loc != nil {
			m := make([]string, len(loc)/2)
			for i := range m {
				if loc[2*i] >= 0 {
					m[i] = out[s.mark+loc[2*i] : s.mark+loc[2*i+1]]
				}
			}
			s.mark += loc[1]
			return m
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out waiting for output matching %q after %q (all: %q)", re, out[s.mark:], out)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sessionMember returns the pid of a process named comm in session sid, or 0.
func sessionMember(t testing.TB, sid int, comm string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(data)
		name := s[strings.IndexByte(s, '(')+1 : strings.LastIndexByte(s, ')')]
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		// state ppid pgrp session ...
		if len(f) > 3 && name == comm && f[0] != "Z" && f[3] == strconv.Itoa(sid) {
			return pid
		}
	}
	return 0
}

func TestTerminalShell(t *testing.T) {
	c, _ := startPair(t)
	s := startTerm(t, c, agent.ExecRequest{Argv: []string{"sh"}}, agent.PtyOptions{Rows: 30, Cols: 90})

	tty := s.typeLine("tty\n", regexp.MustCompile(`(/dev/pts/\d+)\r\n`))[1]
	if _, err := os.Stat(tty); err != nil {
		t.Errorf("tty printed %q: %v", tty, err)
	}
	s.typeLine("stty size\n", regexp.MustCompile(`\r\n30 90\r\n`))
	if err := s.term.Resize(ctxT(t, 10*time.Second), 41, 123); err != nil {
		t.Fatal(err)
	}
	s.typeLine("stty size\n", regexp.MustCompile(`\r\n41 123\r\n`))

	// The shell leads its own session on the terminal.
	sid, _ := strconv.Atoi(s.typeLine("echo sid=$$\n", regexp.MustCompile(`\r\nsid=(\d+)\r\n`))[1])
	if got := sessionMember(t, sid, "sh"); got != sid {
		t.Fatalf("shell %d is not the leader of session %d (found %d)", sid, sid, got)
	}
	// Ctrl-C interrupts the foreground job, not the shell.
	s.term.Write([]byte("sleep 100\n"))
	var sleeper int
	waitFor(t, 20*time.Second, "sleep to run in the shell's session", func() bool {
		sleeper = sessionMember(t, sid, "sleep")
		return sleeper != 0
	})
	if _, err := s.term.Write([]byte{0x03}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "Ctrl-C to end sleep", func() bool { return sessionMember(t, sid, "sleep") == 0 })
	s.typeLine("echo rc=$?\n", regexp.MustCompile(`\r\nrc=130\r\n`))

	s.term.Write([]byte("exit 3\n"))
	if err := recv(t, 20*time.Second, "output EOF", s.eof); err != nil {
		t.Fatalf("output ended with %v", err)
	}
	res, err := s.term.Wait(ctxT(t, 20*time.Second))
	if err != nil || res.ExitCode != 3 {
		t.Fatalf("Wait = %+v, %v; want exit 3", res, err)
	}
	if _, err := s.term.Write([]byte("x")); err == nil {
		t.Fatal("Write after exit succeeded")
	}
}

func TestTerminalLoginShell(t *testing.T) {
	c, _ := startPair(t)
	s := startTerm(t, c, agent.ExecRequest{Env: map[string]string{"GREETING": "hi there"}}, agent.PtyOptions{})
	m := s.typeLine(`echo "zero=$0 term=$TERM g=$GREETING"; stty size; exit 5`+"\n",
		regexp.MustCompile(`zero=(-\S+) term=xterm-256color g=hi there\r\n24 80\r\n`))
	if !strings.HasPrefix(m[1], "-") {
		t.Fatalf("$0 = %q, want a login shell name", m[1])
	}
	recv(t, 20*time.Second, "output EOF", s.eof)
	if res, err := s.term.Wait(ctxT(t, 20*time.Second)); err != nil || res.ExitCode != 5 {
		t.Fatalf("Wait = %+v, %v; want exit 5", res, err)
	}
}

func TestTerminalSignalAndCancel(t *testing.T) {
	c, _ := startPair(t)
	s := startTerm(t, c, agent.ExecRequest{Shell: "echo ready; exec sleep 100"}, agent.PtyOptions{})
	s.expect(regexp.MustCompile(`ready\r\n`))
	if err := s.term.Signal(ctxT(t, 10*time.Second), "TERM"); err != nil {
		t.Fatal(err)
	}
	res, err := s.term.Wait(ctxT(t, 20*time.Second))
	if err != nil || res.ExitCode != 143 || res.Signal != "SIGTERM" {
		t.Fatalf("Wait = %+v, %v; want killed by SIGTERM", res, err)
	}

	// Canceling the context kills the terminal's session.
	ctx, cancel := context.WithCancel(context.Background())
	term, err := c.StartTerminal(ctx, agent.ExecRequest{Shell: "echo $$; exec sleep 100"}, agent.PtyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := newFirstLineWriter()
	go io.Copy(w, term)
	pid := pgidFrom(t, w)
	cancel()
	if _, err := term.Wait(ctxT(t, 10*time.Second)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel: %v, want context.Canceled", err)
	}
	term.Close()
	waitFor(t, 10*time.Second, "the terminal's session to die", func() bool { return !groupAlive(t, pid) })
}
