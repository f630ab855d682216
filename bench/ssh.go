package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm-go/smolvm"
)

// oneMiB is the output of the bulk command.
const oneMiB = 1 << 20

// SSHResult compares command latency over the agent with SSH on one VM of
// the default image.
type SSHResult struct {
	Image string `json:"image"`
	// Rows are agent_true (sh -lc, as vm.Run), agent_argv_true (no
	// shell), agent_sh_true (sh -c: a shell without the login profile),
	// ssh_cli_true (a new ssh process per command), ssh_session_true (one
	// x/crypto/ssh connection, a session per command), and the same with
	// 1 MiB of output (_1mib).
	Rows []NamedStats `json:"rows"`
	// Ratios are SSH over agent, at p50 and p99.
	Ratios []Ratio `json:"ratios"`
}

// Ratio compares two rows.
type Ratio struct {
	Name string  `json:"name"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
}

// counter counts bytes written to it.
type counter int64

func (c *counter) Write(p []byte) (int, error) { *c += counter(len(p)); return len(p), nil }

// benchSSH boots a default-image VM with an SSH port forward and times the
// same commands over the agent, the ssh binary and a persistent Go client.
func (b *bench) benchSSH(ctx context.Context) (*SSHResult, error) {
	vc := b.vmConfig(smolvm.ImageDefault)
	vc.SSHHostPort = smolvm.SSHPortAuto
	vm, t, err := b.boot(ctx, vc)
	if err != nil {
		return nil, err
	}
	defer vm.ForceDelete(context.WithoutCancel(ctx))
	logf("ssh: default VM ready in %v", t.Start.Round(time.Millisecond))
	argv, err := vm.SSHCommand()
	if err != nil {
		return nil, err
	}
	port := vm.Info().Network.SSHHostPort()
	client, err := dialSSH(ctx, keyPath(argv), port)
	if err != nil {
		return nil, err
	}
	defer client.Close()

	type method struct {
		name string
		run  func(cmd string, out io.Writer) error
	}
	methods := []method{
		{"agent", func(cmd string, out io.Writer) error {
			st, err := vm.Exec(ctx, smolvm.ExecOptions{Shell: cmd, Stdout: out})
			return exitErr(st.ExitCode, err)
		}},
		{"ssh_cli", func(cmd string, out io.Writer) error {
			c := exec.CommandContext(ctx, argv[0], append(slices.Clone(argv[1:]), cmd)...)
			c.Stdout = out
			return c.Run()
		}},
		{"ssh_session", func(cmd string, out io.Writer) error {
			s, err := client.NewSession()
			if err != nil {
				return err
			}
			defer s.Close()
			s.Stdout = out
			return s.Run(cmd)
		}},
	}
	res := &SSHResult{Image: smolvm.ImageDefault}
	rows := map[string]Stats{}
	for _, c := range []struct{ suffix, cmd string }{{"true", "true"}, {"1mib", fmt.Sprintf("head -c %d /dev/zero", oneMiB)}} {
		for _, m := range methods {
			want := counter(0)
			if c.suffix == "1mib" {
				want = oneMiB
			}
			var d []time.Duration
			for i := range b.cfg.cmds + 1 { // the first is a warm-up
				var n counter
				t0 := time.Now()
				if err := m.run(c.cmd, &n); err != nil {
					return nil, fmt.Errorf("%s %q: %w", m.name, c.cmd, err)
				}
				if n != want {
					return nil, fmt.Errorf("%s %q: got %d bytes of output, want %d", m.name, c.cmd, n, want)
				}
				if i > 0 {
					d = append(d, time.Since(t0))
				}
			}
			name := m.name + "_" + c.suffix
			rows[name] = summarize(d)
			res.Rows = append(res.Rows, NamedStats{name, rows[name]})
			logf("ssh: %s p50 %.1f ms", name, rows[name].P50)
		}
		if c.suffix != "true" {
			continue
		}
		// Split the agent's `sh -lc` cost: no shell, and a shell that
		// reads no login profile.
		for _, a := range []struct {
			name string
			argv []string
		}{{"agent_argv_true", []string{"true"}}, {"agent_sh_true", []string{"sh", "-c", "true"}}} {
			d, err := timeAgentArgv(ctx, vm, a.argv, b.cfg.cmds)
			if err != nil {
				return nil, err
			}
			rows[a.name] = summarize(d)
			res.Rows = append(res.Rows, NamedStats{a.name, rows[a.name]})
		}
	}
	for _, r := range [][2]string{
		{"ssh_cli_true", "agent_true"}, {"ssh_session_true", "agent_true"},
		{"ssh_cli_true", "agent_argv_true"}, {"ssh_session_true", "agent_argv_true"},
		{"ssh_cli_1mib", "agent_1mib"}, {"ssh_session_1mib", "agent_1mib"},
	} {
		a, o := rows[r[0]], rows[r[1]]
		res.Ratios = append(res.Ratios, Ratio{r[0] + "/" + r[1], ratio(a.P50, o.P50), ratio(a.P99, o.P99)})
	}
	return res, nil
}

// timeAgentArgv times argv run n times by the agent without a shell.
func timeAgentArgv(ctx context.Context, vm *smolvm.VM, argv []string, n int) ([]time.Duration, error) {
	var d []time.Duration
	for range n {
		t0 := time.Now()
		st, err := vm.Exec(ctx, smolvm.ExecOptions{Argv: argv})
		if err := exitErr(st.ExitCode, err); err != nil {
			return nil, fmt.Errorf("agent %q: %w", argv, err)
		}
		d = append(d, time.Since(t0))
	}
	return d, nil
}

func exitErr(code int, err error) error {
	if err == nil && code != 0 {
		err = fmt.Errorf("exit status %d", code)
	}
	return err
}

// keyPath returns the argument of -i in an ssh argv.
func keyPath(argv []string) string {
	for i, a := range argv {
		if a == "-i" && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

// dialSSH connects to root@127.0.0.1:port with the key, retrying until the
// guest's sshd answers (it starts after the agent) or a minute passes.
func dialSSH(ctx context.Context, key string, port int) (*ssh.Client, error) {
	pem, err := os.ReadFile(key)
	if err != nil {
		return nil, fmt.Errorf("ssh key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return nil, fmt.Errorf("ssh key %s: %w", key, err)
	}
	cc := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), // a fresh guest on loopback in a private namespace
		Timeout:         10 * time.Second,
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := ssh.Dial("tcp", addr, cc)
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("ssh to %s: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
