package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

func newDoctorCmd(g *globals) *cobra.Command {
	var backend string
	var strict bool
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check whether this host can run VMs, and say how to fix what is missing",
		Long: `Check acceleration (KVM, or TCG where /dev/kvm cannot run a standard guest), QEMU and
Firecracker, /dev/net/tun, nftables, IPv4 forwarding, the data directory, the images and the
agent. Exit code 1 on a failure; with --strict on a warning too.

--json prints an array of {"name", "status" (ok|warn|fail), "detail", "fix"}.`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			switch smolvm.BackendKind(backend) {
			case smolvm.BackendAuto, smolvm.BackendQEMU, smolvm.BackendFirecracker:
			default:
				return usageError{fmt.Errorf("--backend %q: must be auto, qemu or firecracker", backend)}
			}
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			checks := h.Doctor(c.Context(), smolvm.DoctorOptions{Backend: smolvm.BackendKind(backend)})
			fails, warns := 0, 0
			for _, ch := range checks {
				switch ch.Status {
				case smolvm.CheckFail:
					fails++
				case smolvm.CheckWarn:
					warns++
				}
			}
			if g.jsonOut {
				if err := writeJSON(c.OutOrStdout(), checks); err != nil {
					return err
				}
			} else {
				w := c.OutOrStdout()
				for _, ch := range checks {
					mark := map[smolvm.CheckStatus]string{smolvm.CheckOK: "ok  ", smolvm.CheckWarn: "WARN", smolvm.CheckFail: "FAIL"}[ch.Status]
					fmt.Fprintf(w, "[%s] %-18s %s\n", mark, ch.Name, ch.Detail)
					if ch.Fix != "" && ch.Status != smolvm.CheckOK {
						fmt.Fprintf(w, "       %-18s fix: %s\n", "", ch.Fix)
					}
				}
				fmt.Fprintf(w, "%d failed, %d warnings\n", fails, warns)
			}
			if fails > 0 || (strict && warns > 0) {
				return exitCodeError{exitError}
			}
			return nil
		},
	}
	c.Flags().StringVar(&backend, "backend", "auto", "judge for this backend: auto, qemu or firecracker")
	c.Flags().BoolVar(&strict, "strict", false, "exit non-zero on warnings too")
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return c
}

func newCleanupCmd(g *globals) *cobra.Command {
	var co smolvm.CleanupOptions
	c := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove what smolvm left behind: orphan processes, files, TAPs and rules",
		Long: `Kill VMM processes no VM owns, remove files of VMs that no longer exist, VMs whose
creation was interrupted, and TAP devices and nftables rules of ours that no running VM owns.
--all deletes every VM too. --dry-run lists and touches nothing.`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			rep, err := h.Cleanup(c.Context(), co)
			if g.jsonOut {
				if jerr := writeJSON(c.OutOrStdout(), rep); jerr != nil {
					return jerr
				}
				return err
			}
			verb := "removed"
			if co.DryRun {
				verb = "would remove"
			}
			for _, r := range rep.Removed {
				fmt.Fprintf(c.OutOrStdout(), "%s %s\n", verb, r)
			}
			if len(rep.Removed) == 0 {
				fmt.Fprintln(c.OutOrStdout(), "nothing to clean up")
			}
			return err
		},
	}
	c.Flags().BoolVar(&co.All, "all", false, "delete every VM too")
	c.Flags().BoolVar(&co.DryRun, "dry-run", false, "list what would be removed, touch nothing")
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return c
}
