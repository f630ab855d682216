package server

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// defaultPath is the PATH of commands whose environment sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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

// runCommand starts cmd (on a terminal if a asks for one), streams its
// stdin, stdout and stderr over st, obeys CONTROL frames, and waits for it.
// A timeout or a canceled stream kills the whole process group.
func runCommand(st *stream, cmd *exec.Cmd, a proto.ExecArgs) (proto.ExecResult, error) {
	ch, err := spawn(cmd, a)
	if err != nil {
		return proto.ExecResult{}, err
	}
	defer ch.close()
	st.control.Store(&ch.ctl)
	defer st.control.Store(nil)

	var pumps sync.WaitGroup
	outs := make([]*output, len(ch.outs))
	for i, f := range ch.outs {
		outs[i] = &output{f: f, tty: ch.ctl.tty != nil}
		channel := proto.ChanOut + proto.Channel(i)
		pumps.Go(func() {
			outs[i].pump(func(p []byte) error { return st.send(channel, p) })
		})
	}
	if ch.stdin != nil {
		stdin := ch.stdin
		ch.stdin = nil // feedStdin closes it
		go feedStdin(st, stdin, ch.sharedIn)
	}
	res, waitErr := ch.wait(st.ctx.Done(), a.TimeoutMillis)
	for _, o := range outs {
		o.exited()
	}
	pumps.Wait()
	if st.ctx.Err() != nil {
		return res, fmt.Errorf("exec: %w", proto.ErrCanceled)
	}
	return res, waitErr
}

// command validates a and builds the command it describes.
func (s *Server) command(a proto.ExecArgs) (cmd *exec.Cmd, err error) {
	argv := a.Argv
	loginShell := false
	switch {
	case len(a.Argv) > 0 && a.Shell != "":
		return nil, fmt.Errorf("%w: exec: both argv and shell given", proto.ErrInvalidArgument)
	case a.Shell != "":
		argv = []string{s.opts.Shell, "-lc", a.Shell}
	case len(a.Argv) == 0 && a.Pty != nil:
		loginShell = true
	case len(a.Argv) == 0:
		return nil, fmt.Errorf("%w: exec: no command", proto.ErrInvalidArgument)
	}
	img := s.imageDefaults(&a)
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
	for k, v := range img.Env {
		env[k] = v
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

	if a.Pty != nil {
		env["TERM"] = cmp.Or(a.Pty.Term, "xterm-256color")
		if t, ok := a.Env["TERM"]; ok {
			env["TERM"] = t
		}
	}
	if loginShell {
		// By convention a login shell is started with "-" before its name.
		sh := s.opts.Shell
		if fi, err := os.Stat(acct.shell); err == nil && filepath.IsAbs(acct.shell) && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			sh = acct.shell
		}
		argv = []string{sh}
		defer func() {
			if cmd != nil {
				cmd.Args = []string{"-" + filepath.Base(sh)}
			}
		}()
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
	cmd = &exec.Cmd{Path: path, Args: argv, Dir: dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
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
