package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm"
)

func newShellCmd(g *globals) *cobra.Command {
	var user, dir string
	var env []string
	c := &cobra.Command{
		Use:   "shell ID",
		Short: "Open an interactive login shell in a running VM (over the agent, no SSH needed)",
		Long: `Open the guest user's login shell on a pseudo-terminal through the agent: works on every
image, the minimal one too. The local terminal is put in raw mode, so Ctrl-C, Ctrl-D, job control
and full-screen programs behave as in an SSH session; window size changes follow. The shell's
exit code becomes smolvm's.`,
		Example: "  smolvm shell web",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			envm, err := parseEnv(env)
			if err != nil {
				return err
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				st, err := runTerminal(c, vm, smolvm.TerminalOptions{Env: envm, Dir: dir, User: user}, true)
				return exitOf(c, st, err)
			})
		},
	}
	c.Flags().StringVarP(&user, "user", "u", "", "user name or uid in the guest (default root)")
	c.Flags().StringVarP(&dir, "workdir", "w", "", "working directory in the guest")
	c.Flags().StringArrayVarP(&env, "env", "e", nil, "set KEY=VALUE for the shell (repeatable)")
	return c
}

// runTerminal runs opts on a guest pseudo-terminal connected to smolvm's
// own stdin and stdout. When stdin is a terminal it is put in raw mode and
// its window size is followed; input is forwarded when withInput is set or
// stdin is a terminal.
func runTerminal(c *cobra.Command, vm *smolvm.VM, opts smolvm.TerminalOptions, withInput bool) (smolvm.ExitStatus, error) {
	ctx := c.Context()
	in := int(os.Stdin.Fd())
	isTTY := isTerminal(in)
	if isTTY {
		if rows, cols, ok := windowSize(in); ok {
			opts.Rows, opts.Cols = rows, cols
		}
		if t := os.Getenv("TERM"); t != "" {
			opts.Term = t
		}
	}
	t, err := vm.Terminal(ctx, opts)
	if err != nil {
		return smolvm.ExitStatus{}, err
	}
	defer t.Close()
	if isTTY {
		restore, err := makeRaw(in)
		if err == nil {
			defer restore()
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if rows, cols, ok := windowSize(in); ok {
					t.Resize(context.WithoutCancel(ctx), rows, cols)
				}
			}
		}()
	}
	if withInput || isTTY {
		go func() {
			io.Copy(t, os.Stdin)
			// A pipe's end is the end of input for the terminal: a shell reading
			// from it sees end-of-file as after Ctrl-D.
			if !isTTY {
				t.Write([]byte{4})
			}
		}()
	}
	_, cerr := io.Copy(c.OutOrStdout(), t)
	st, err := t.Wait(ctx)
	if err == nil && cerr != nil && !errors.Is(cerr, io.EOF) {
		err = cerr
	}
	return st, err
}

// isTerminal reports whether fd is a terminal.
func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// windowSize returns the terminal's size.
func windowSize(fd int) (rows, cols uint16, ok bool) {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Row == 0 || ws.Col == 0 {
		return 0, 0, false
	}
	return ws.Row, ws.Col, true
}

// makeRaw puts the terminal in raw mode (as cfmakeraw does) and returns a
// function that restores its previous state.
func makeRaw(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
