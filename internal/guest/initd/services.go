package initd

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// run starts a program through the reaper and waits for it.
func (in *Init) run(argv ...string) (unix.WaitStatus, error) {
	_, ch, err := in.reaper.Start(argv, in.procAttr())
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", argv[0], err)
	}
	return <-ch, nil
}

func (in *Init) procAttr() *syscall.ProcAttr {
	return &syscall.ProcAttr{
		Dir:   "/",
		Env:   childEnv,
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
}

// startSSHD generates missing host keys, then runs sshd in the foreground
// as a child of the init.
func (in *Init) startSSHD() error {
	keys, _ := filepath.Glob("/etc/ssh/ssh_host_*_key")
	if len(keys) == 0 {
		// Only Ed25519 and ECDSA: an RSA key takes many seconds on an
		// emulated (TCG) CPU, and every current client speaks Ed25519.
		for _, typ := range []string{"ed25519", "ecdsa"} {
			key := "/etc/ssh/ssh_host_" + typ + "_key"
			ws, err := in.run("/usr/bin/ssh-keygen", "-q", "-t", typ, "-N", "", "-C", "root@"+in.params.ID, "-f", key)
			if err != nil || ws.ExitStatus() != 0 {
				return fmt.Errorf("ssh-keygen -t %s: %v (%s)", typ, err, waitString(ws))
			}
		}
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	// Name the keys that exist, so sshd does not complain about the rest.
	argv := []string{"/usr/sbin/sshd", "-D"}
	keys, _ = filepath.Glob("/etc/ssh/ssh_host_*_key")
	for _, k := range keys {
		argv = append(argv, "-h", k)
	}
	_, ch, err := in.reaper.Start(argv, in.procAttr())
	if err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	go func() {
		ws := <-ch
		in.logf("sshd exited: %v", waitString(ws))
	}()
	return nil
}

// superviseServer runs the agent server and restarts it when it dies,
// backing off, unless it exits with ExitUnavailable.
func (in *Init) superviseServer() {
	defer close(in.serverGone)
	defer func() {
		if r := recover(); r != nil {
			in.logf("agent server supervisor: panic: %v", r)
		}
	}()
	backoff := 500 * time.Millisecond
	for {
		started := time.Now()
		ws, err := in.runServer()
		if err != nil {
			in.logf("agent server: %v", err)
		} else {
			if ws.Exited() && ws.ExitStatus() == ExitUnavailable {
				in.logf("agent server unavailable (exit %d); not restarting", ExitUnavailable)
				return
			}
			in.logf("agent server exited (%s); restarting", waitString(ws))
		}
		if time.Since(started) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 30*time.Second)
	}
}

// ReadyFDEnv names, in the agent server's environment, the descriptor on
// which it writes one byte once it serves (see server.Options.Ready); the
// init waits for that byte before it prints the ready marker.
const ReadyFDEnv = "SMOLVM_AGENT_READY_FD"

// serverReadyWait bounds the init's wait for the agent server before it
// prints the ready marker anyway. The server waits up to 5 s for its
// virtio-serial port.
const serverReadyWait = 10 * time.Second

// runServer runs the agent server once and waits for it; the server's
// readiness byte on its pipe marks the server ready.
func (in *Init) runServer() (unix.WaitStatus, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("ready pipe: %w", err)
	}
	attr := in.procAttr()
	attr.Files = append(attr.Files, w.Fd())
	attr.Env = append(slices.Clone(attr.Env), fmt.Sprintf("%s=%d", ReadyFDEnv, len(attr.Files)-1))
	_, ch, err := in.reaper.Start(in.opts.ServeArgs, attr)
	w.Close()
	if err != nil {
		r.Close()
		return 0, fmt.Errorf("start %s: %w", in.opts.ServeArgs[0], err)
	}
	go func() {
		defer r.Close()
		b := make([]byte, 1)
		if n, _ := r.Read(b); n == 1 {
			in.serverReadyOnce.Do(func() { close(in.serverReady) })
		}
	}()
	return <-ch, nil
}

// waitServer waits up to d for the agent server to serve, so that the
// ready marker means what it says. Without a server (a dry run, no
// ServeArgs) or once the init gave up on it, it returns at once.
func (in *Init) waitServer(d time.Duration) {
	if in.opts.DryRun || len(in.opts.ServeArgs) == 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-in.serverReady:
	case <-in.serverGone:
	case <-t.C:
		in.logf("agent server not serving after %v; ready anyway", d)
	}
}

func waitString(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}
