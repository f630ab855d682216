package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// parsePid reads a PID argument; a malformed one is a usage error.
func parsePid(s string) (int, error) {
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0, usageError{fmt.Errorf("pid %q: want a positive process id", s)}
	}
	return pid, nil
}

func newPsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "ps ID",
		Short: "List the background processes started through the agent (exec --detach)",
		Long: `List the background processes the guest agent tracks: running ones, and exited ones
whose exit status nobody has collected yet. --json prints an array of
{"pid", "command", "argv", "tag", "started_at", "running", "pty", "exit"}.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				ps, err := vm.Processes(c.Context())
				if err != nil {
					return err
				}
				if g.jsonOut {
					return writeJSON(c.OutOrStdout(), ps)
				}
				rows := [][]string{}
				for _, p := range ps {
					status := "running"
					if !p.Running && p.Exit != nil {
						status = fmt.Sprintf("exited %d", p.Exit.ExitCode)
					}
					rows = append(rows, []string{strconv.Itoa(p.Pid), p.StartedAt.Local().Format(time.DateTime), status, dash(p.Tag), p.Command})
				}
				return table(c.OutOrStdout(), []string{"PID", "STARTED", "STATUS", "TAG", "COMMAND"}, rows)
			})
		},
	}
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print a JSON array")
	return c
}

func newAttachCmd(g *globals) *cobra.Command {
	var noReplay bool
	c := &cobra.Command{
		Use:   "attach ID PID",
		Short: "Follow a background process's output (buffered output first) and feed it stdin",
		Long: `Write the output the process produced while no one was attached (the oldest is dropped
past the buffer, with a marker line), then its live output, until it exits; smolvm's stdin is
forwarded to its stdin. The process's exit code becomes smolvm's. Ctrl-C detaches and leaves
the process running.`,
		Example: "  smolvm attach web 312",
		Args:    args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			pid, err := parsePid(a[1])
			if err != nil {
				return err
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				st, err := vm.Attach(c.Context(), pid, smolvm.AttachOptions{Stdin: os.Stdin, Stdout: c.OutOrStdout(), Stderr: c.ErrOrStderr(), NoReplay: noReplay})
				if err != nil {
					if c.Context().Err() != nil {
						return nil // detached by Ctrl-C: the process keeps running
					}
					return err
				}
				if st.ExitCode != 0 {
					return exitCodeError{st.ExitCode}
				}
				return nil
			})
		},
	}
	c.Flags().BoolVar(&noReplay, "no-replay", false, "skip the output buffered before attaching")
	return c
}

func newKillCmd(g *globals) *cobra.Command {
	var sig string
	c := &cobra.Command{
		Use:   "kill ID PID",
		Short: "Send a signal (default SIGTERM) to a background process's process group",
		Example: `  smolvm kill web 312
  smolvm kill web 312 -s KILL`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			pid, err := parsePid(a[1])
			if err != nil {
				return err
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return vm.Signal(c.Context(), pid, sig)
			})
		},
	}
	c.Flags().StringVarP(&sig, "signal", "s", "SIGTERM", "signal name or number (TERM, SIGKILL, 9, ...)")
	return c
}

// detach starts an exec command in the background and prints its pid.
func detach(c *cobra.Command, g *globals, vm *smolvm.VM, po smolvm.ProcessOptions) error {
	pid, err := vm.StartProcess(c.Context(), po)
	if err != nil {
		return err
	}
	if g.jsonOut {
		return writeJSON(c.OutOrStdout(), map[string]int{"pid": pid})
	}
	fmt.Fprintln(c.OutOrStdout(), pid)
	return nil
}
