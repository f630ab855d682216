package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

func newSSHCmd(g *globals) *cobra.Command {
	var printOnly bool
	c := &cobra.Command{
		Use:   "ssh ID [-- COMMAND...]",
		Short: "Log in to a VM over SSH (needs an image with sshd and --ssh-port)",
		Long: `Log in as root through the VM's SSH port forward with the key smolvm installs at boot
(one ed25519 key pair per data directory). --print shows the ssh command instead.`,
		Example: `  smolvm ssh web
  smolvm ssh web -- uname -a`,
		Args: args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				argv, err := vm.SSHCommand(a[1:]...)
				if err != nil {
					return err
				}
				if printOnly {
					q := make([]string, len(argv))
					for i, s := range argv {
						q[i] = shellQuote(s)
					}
					fmt.Fprintln(c.OutOrStdout(), strings.Join(q, " "))
					return nil
				}
				bin, err := exec.LookPath("ssh")
				if err != nil {
					return fmt.Errorf("ssh not found (install the openssh-client package): %w", err)
				}
				vm.Release()
				return syscall.Exec(bin, argv, os.Environ())
			})
		},
	}
	c.Flags().BoolVar(&printOnly, "print", false, "print the ssh command instead of running it")
	return c
}

func newPortCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "port",
		Short: "Forward host TCP ports to a VM",
		Long: `Forward host TCP ports to guest ports: reachable on 127.0.0.1:HOST (and the host's own
addresses). Forwarded ports are the only way into a VM.`,
	}
	expose := &cobra.Command{
		Use:   "expose ID [HOST:]GUEST",
		Short: "Forward a host port (free one from 2200 up unless given) to a guest port",
		Example: `  smolvm port expose web 8080        # prints the host port
  smolvm port expose web 9000:8080`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			host, guest := 0, 0
			hs, gs, ok := strings.Cut(a[1], ":")
			if !ok {
				hs, gs = "0", a[1]
			}
			var err1, err2 error
			host, err1 = strconv.Atoi(hs)
			guest, err2 = strconv.Atoi(gs)
			if err1 != nil || err2 != nil {
				return usageError{fmt.Errorf("port %q: want GUEST or HOST:GUEST port numbers", a[1])}
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				hp, err := vm.ExposeLocal(c.Context(), guest, host)
				if err != nil {
					return err
				}
				if g.jsonOut {
					return writeJSON(c.OutOrStdout(), map[string]int{"host_port": hp, "guest_port": guest})
				}
				fmt.Fprintf(c.OutOrStdout(), "127.0.0.1:%d -> %s:%d\n", hp, vm.ID(), guest)
				return nil
			})
		},
	}
	expose.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	list := &cobra.Command{
		Use:   "list ID",
		Short: "List a VM's port forwards",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				ps, err := vm.Ports(c.Context())
				if err != nil {
					return err
				}
				if g.jsonOut {
					return writeJSON(c.OutOrStdout(), ps)
				}
				rows := [][]string{}
				for _, p := range ps {
					rows = append(rows, []string{fmt.Sprint(p.HostPort), fmt.Sprint(p.GuestPort), p.Kind})
				}
				return table(c.OutOrStdout(), []string{"HOST", "GUEST", "KIND"}, rows)
			})
		},
	}
	list.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	closeCmd := &cobra.Command{
		Use:   "close ID HOST_PORT",
		Short: "Remove a port forward",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			hp, err := strconv.Atoi(a[1])
			if err != nil {
				return usageError{fmt.Errorf("host port %q: not a number", a[1])}
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return vm.UnexposeLocal(c.Context(), hp)
			})
		},
	}
	c.AddCommand(expose, list, closeCmd, newPortWaitCmd(g))
	return c
}
