package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// newSnapshotCmd is `smolvm snapshot`: create, list, info, rm, restore.
func newSnapshotCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "snapshot",
		Short: "Snapshots of running VMs: take, list, inspect, remove, roll back to",
		Long: `A snapshot holds a running VM's memory, device state and disk at one instant.
'smolvm create --from-snapshot S' makes new VMs that resume where S was taken
(their own disk copy and network identity; memory pages shared until written);
'smolvm snapshot restore ID S' rolls a VM back to S.`,
	}
	c.AddCommand(newSnapshotCreateCmd(g), newSnapshotListCmd(g), newSnapshotInfoCmd(g), newSnapshotRmCmd(g), newSnapshotRestoreCmd(g))
	return c
}

func newSnapshotCreateCmd(g *globals) *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "create ID [--name S]",
		Short: "Take a snapshot of a running VM (it keeps running)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			vm, err := g.get(c.Context(), a[0])
			if err != nil {
				return err
			}
			defer vm.Release()
			info, err := vm.Snapshot(c.Context(), name)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), info)
			}
			fmt.Fprintf(c.OutOrStdout(), "snapshot %s of %s: %.1f MiB on disk, VM paused %d ms\n", info.Name, info.VMID, float64(info.SizeBytes)/(1<<20), info.PauseMillis)
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "the snapshot's name (default snap-<8 hex>)")
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print the snapshot as JSON")
	return c
}

func newSnapshotListCmd(g *globals) *cobra.Command {
	var templates bool
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots",
		Args:    args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			list, err := h.Snapshots(c.Context())
			if templates { // the warm templates instead (warm.go)
				list, err = h.Templates(c.Context())
			}
			if err != nil {
				return err
			}
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), list)
			}
			if len(list) == 0 && templates {
				fmt.Fprintln(c.OutOrStdout(), "No warm templates. The first start of a VM of an image makes one (unless --cold).")
				return nil
			}
			if len(list) == 0 {
				fmt.Fprintln(c.OutOrStdout(), "No snapshots. Take one with: smolvm snapshot create ID --name S")
				return nil
			}
			var rows [][]string
			for _, s := range list {
				rows = append(rows, []string{s.Name, s.VMID, dash(s.Image), fmt.Sprint(s.MemSizeMiB), fmt.Sprintf("%.1f", float64(s.SizeBytes)/(1<<20)), ago(s.CreatedAt)})
			}
			return table(c.OutOrStdout(), []string{"NAME", "VM", "IMAGE", "MEMORY", "DISK MiB", "CREATED"}, rows)
		},
	}
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print a JSON array")
	c.Flags().BoolVar(&templates, "templates", false, "list the warm templates of images instead (hidden otherwise)")
	return c
}

func newSnapshotInfoCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "info S",
		Short: "Show a snapshot",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			s, err := h.GetSnapshot(c.Context(), a[0])
			if err != nil {
				return err
			}
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), s)
			}
			w := c.OutOrStdout()
			fmt.Fprintf(w, "name:      %s\nvm:        %s\ncreated:   %s (%s)\nbackend:   %s (%s, %s)\nimage:     %s\nmemory:    %d MiB, %d vCPUs\nsize:      %.1f MiB on disk\npaused:    %d ms\npath:      %s\n",
				s.Name, s.VMID, s.CreatedAt.Format("2006-01-02 15:04:05Z"), ago(s.CreatedAt), s.Backend, s.VMMVersion, s.Accel,
				dash(s.Image), s.MemSizeMiB, s.Config.VCPUCount, float64(s.SizeBytes)/(1<<20), s.PauseMillis, s.Path)
			return nil
		},
	}
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print the snapshot as JSON")
	return c
}

func newSnapshotRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm S...",
		Aliases: []string{"delete"},
		Short:   "Remove snapshots (refused while a VM made from one has not started yet)",
		Args:    args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			var failed []error
			for _, name := range a {
				if err := h.RemoveSnapshot(c.Context(), name); err != nil {
					failed = append(failed, err)
					continue
				}
				fmt.Fprintln(c.OutOrStdout(), "removed", name)
			}
			return joinErrors(failed)
		},
	}
}

func newSnapshotRestoreCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "restore ID S",
		Short: "Roll a VM back to snapshot S (it resumes where S was taken)",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			vm, err := g.get(c.Context(), a[0])
			if err != nil {
				return err
			}
			defer vm.Release()
			if err := vm.Restore(c.Context(), a[1]); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "restored %s to %s\n", vm.ID(), a[1])
			return nil
		},
	}
}

// snapshotCreateFlags adds --from-snapshot to create; apply fixes the
// config: memory and vCPUs come from the snapshot unless typed.
type snapshotCreateFlags struct{ from string }

func (f *snapshotCreateFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.from, "from-snapshot", "", "make a VM that resumes where this snapshot was taken (own disk and network identity)")
}

func (f *snapshotCreateFlags) apply(c *cobra.Command, cfg *smolvm.VMConfig) {
	if f.from == "" {
		return
	}
	cfg.FromSnapshot = f.from
	if !c.Flags().Changed("memory") {
		cfg.MemSizeMiB = 0
	}
	if !c.Flags().Changed("vcpus") {
		cfg.VCPUCount = 0
	}
}
