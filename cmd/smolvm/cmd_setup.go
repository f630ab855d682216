package main

import (
	"fmt"
	"os/user"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// newSetupCmd prepares the host: the unprivileged user VMMs run as.
func newSetupCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "setup",
		Short: "Prepare this host: create the unprivileged user QEMU runs as (as root; idempotent)",
		Long: `Create the system user "` + smolvm.VMMUser + `" (no home, no login shell) that QEMU runs as when
smolvm runs as root, unless it exists. Without it QEMU runs as root and 'smolvm doctor' warns.`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			created, err := smolvm.EnsureVMMUser(c.Context())
			if err != nil {
				return err
			}
			u, err := user.Lookup(smolvm.VMMUser)
			if err != nil {
				return err
			}
			verb := "exists"
			if created {
				verb = "created"
			}
			fmt.Fprintf(c.OutOrStdout(), "user %s %s (uid %s, gid %s)\n", smolvm.VMMUser, verb, u.Uid, u.Gid)
			return nil
		},
	}
}
