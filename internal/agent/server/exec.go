package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// defaultPath is the PATH of commands whose environment sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// outputGrace is how long a finished command's output pipes may stay open
// (held by background children) before the agent stops reading them.
const outputGrace = 200 * time.Millisecond

// exec runs a command (proto.MethodExec).
func (s *Server) exec(st *stream, raw json.RawMessage) (any, error) {
	var a proto.ExecArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	cmd, err := s.command(a)
	if err != nil {
		return nil, err
	}
	return runCommand(st, cmd, a)
}

// command validates a and builds the command it describes.
func (s *Server) command(a proto.ExecArgs) (*exec.Cmd, error) {
	argv := a.Argv
	switch {
	case len(a.Argv) > 0 && a.Shell != "":
		return nil, fmt.Errorf("%w: exec: both argv and shell given", proto.ErrInvalidArgument)
	case a.Shell != "":
		argv = []string{s.opts.Shell, "-lc", a.Shell}
	case len(a.Argv) == 0:
		return nil, fmt.Errorf("%w: exec: no command", proto.ErrInvalidArgument)
	}
	if a.Dir != "" && !filepath.IsAbs(a.Dir) {
		return nil, fmt.Errorf("%w: exec: working directory %q is not absolute", proto.ErrInvalidArgument, a.Dir)
	}

	spec := a.User
	if spec == "" {
		spec = fmt.Sprint(os.Getuid())
	}
	acct, err := lookupUser(s.opts.PasswdFile, spec)
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	env := map[string]string{
		"PATH": defaultPath, "HOME": acct.home, "USER": acct.name, "LOGNAME": acct.name,
	}
	if a.Shell == "" {
		// No login shell reads the env file for argv commands: apply it here.
		persisted, err := s.readEnv()
		if err != nil {
			return nil, fmt.Errorf("exec: %w", err)
		}
		for k, v := range persisted {
			env[k] = v
		}
	}
	for k, v := range a.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("%w: exec: bad environment variable %q", proto.ErrInvalidArgument, k)
		}
		env[k] = v
	}

	path, err := lookPath(argv[0], env["PATH"])
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	dir := a.Dir
	if dir == "" {
		dir = "/"
		if fi, err := os.Stat(acct.home); err == nil && fi.IsDir() {
			dir = acct.home
		}
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Dir: dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if a.User != "" && (int(acct.uid) != os.Getuid() || int(acct.gid) != os.Getgid()) {
		cmd.SysProcAttr.Credential = &syscall.Credential{
			Uid: acct.uid, Gid: acct.gid, Groups: groupsOf(s.opts.GroupFile, acct.name, acct.gid),
		}
	}
	return cmd, nil
}

// lookPath finds an executable the way a shell would, using pathEnv.
func lookPath(name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: executable %q in PATH %q", proto.ErrNotFound, name, pathEnv)
}

// runCommand starts cmd in its own process group, streams its stdin, stdout
// and stderr over st, and waits for it. A timeout or a canceled stream kills
// the whole process group.
func runCommand(st *stream, cmd *exec.Cmd, a proto.ExecArgs) (proto.ExecResult, error) {
	var res proto.ExecResult
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			closers = append(closers, r, w)
		}
		return r, w, err
	}
	outR, outW, err := pipe()
	if err != nil {
		return res, fmt.Errorf("exec: %w", err)
	}
	errR, errW, err := pipe()
	if err != nil {
		return res, fmt.Errorf("exec: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	var inR, inW *os.File
	if a.Stdin {
		if inR, inW, err = pipe(); err != nil {
			return res, fmt.Errorf("exec: %w", err)
		}
		cmd.Stdin = inR
	}
	err = cmd.Start()
	// The child holds its own copies of these ends.
	outW.Close()
	errW.Close()
	if inR != nil {
		inR.Close()
	}
	if err != nil {
		return res, fmt.Errorf("exec: start %s: %w", cmd.Path, err)
	}
	pgid := cmd.Process.Pid

	out := &output{f: outR}
	errOut := &output{f: errR}
	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() { defer pumps.Done(); out.pump(st, proto.ChanOut) }()
	go func() { defer pumps.Done(); errOut.pump(st, proto.ChanErr) }()
	if inW != nil {
		go feedStdin(st, inW)
	}

	waitDone := make(chan error, 1)
	go func() { waitDone <- cmd.Wait() }()
	var timeout <-chan time.Time
	if a.TimeoutMillis > 0 {
		t := time.NewTimer(time.Duration(a.TimeoutMillis) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	done := st.ctx.Done()
	var waitErr error
wait:
	for {
		select {
		case waitErr = <-waitDone:
			break wait
		case <-timeout:
			res.TimedOut = true
			_ = unix.Kill(-pgid, unix.SIGKILL)
			timeout = nil
		case <-done:
			_ = unix.Kill(-pgid, unix.SIGKILL)
			done = nil
		}
	}
	if inW != nil {
		inW.Close() // unblocks feedStdin; later stdin is discarded
	}
	out.exited()
	errOut.exited()
	pumps.Wait()
	if st.ctx.Err() != nil {
		return res, fmt.Errorf("exec: %w", proto.ErrCanceled)
	}

	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return res, fmt.Errorf("exec: wait: %w", waitErr)
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		res.ExitCode = 128 + int(ws.Signal())
		res.Signal = unix.SignalName(ws.Signal())
	} else {
		res.ExitCode = ws.ExitStatus()
	}
	return res, nil
}

// output is the read end of a command's stdout or stderr pipe.
type output struct {
	f    *os.File
	done atomic.Bool // set when the command has exited
}

// exited switches the pump to idle-timeout mode: background children may
// hold the pipe open, so once the command has exited the pump stops after
// outputGrace without data. Waiting for the host's window is not idle time.
func (o *output) exited() {
	o.done.Store(true)
	_ = o.f.SetReadDeadline(time.Now().Add(outputGrace))
}

// pump sends everything read from the pipe on channel ch of st.
func (o *output) pump(st *stream, ch proto.Channel) {
	buf := make([]byte, proto.ChunkSize)
	for {
		if o.done.Load() {
			_ = o.f.SetReadDeadline(time.Now().Add(outputGrace))
		}
		n, err := o.f.Read(buf)
		if n > 0 {
			if err := st.send(ch, buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// feedStdin copies the host's ChanIn data to the command's stdin and closes
// it at EOF. Data the command does not read is discarded, but still granted
// back so the host never waits for window.
func feedStdin(st *stream, w *os.File) {
	defer w.Close()
	broken := false
	for {
		c, err := st.in.Pop(st.ctx)
		if err != nil {
			return
		}
		if !broken {
			if _, err := w.Write(c.Data); err != nil {
				broken = true
			}
		}
		st.grant(len(c.Data))
	}
}
