package main

import (
	"fmt"
	"os"
	"os/exec"
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
