package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

func newVersionCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "version",
		Short: "Print smolvm's version",
		Args:  args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), map[string]string{"version": smolvm.GetVersion()})
			}
			fmt.Fprintln(c.OutOrStdout(), "smolvm", smolvm.GetVersion())
			return nil
		},
	}
	c.Flags().BoolVar(&g.jsonOut, "json", false, `print {"version": "..."}`)
	return c
}

func newListCmd(g *globals) *cobra.Command {
	var all, showValues bool
	var status string
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Long: `List VMs. By default every VM except stopped ones is shown; --all shows every VM,
--status shows VMs in one state (created, running, paused, stopped, error).

--json prints an array of VM objects, the same objects as 'smolvm info --json'.`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			lo := smolvm.ListOptions{}
			if status != "" {
				st, err := smolvm.ParseVMState(status)
				if err != nil {
					return usageError{fmt.Errorf("--status: %w", err)}
				}
				if all {
					return usageError{fmt.Errorf("--all and --status cannot be used together")}
				}
				lo.Status = st
			}
			h, err := g.api(c.Context())
			if err != nil {
				return err
			}
			vms, err := h.List(c.Context(), lo)
			if err != nil {
				return err
			}
			if !all && status == "" {
				kept := vms[:0]
				for _, v := range vms {
					if v.Status != smolvm.StateStopped {
						kept = append(kept, v)
					}
				}
				vms = kept
			}
			if g.jsonOut {
				if !showValues {
					for i := range vms {
						vms[i] = vms[i].Redacted()
					}
				}
				return writeJSON(c.OutOrStdout(), vms)
			}
			if len(vms) == 0 {
				fmt.Fprintln(c.OutOrStdout(), "No VMs. Create one with: smolvm create")
				return nil
			}
			rows := make([][]string, 0, len(vms))
			for _, v := range vms {
				ip, ssh := netSummary(v)
				rows = append(rows, []string{v.VMID, string(v.Status), ip, ssh, fmt.Sprint(v.Config.VCPUCount), fmt.Sprintf("%d MiB", v.Config.MemSizeMiB), dash(string(v.Backend)), ago(v.CreatedAt)})
			}
			return table(c.OutOrStdout(), []string{"ID", "STATUS", "IP", "SSH PORT", "VCPUS", "MEMORY", "BACKEND", "CREATED"}, rows)
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "show every VM, stopped ones too")
	c.Flags().StringVar(&status, "status", "", "show only VMs in this state")
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	c.Flags().BoolVar(&showValues, "show-values", false, "print env var values (hidden by default: they often hold API keys)")
	return c
}

func newInfoCmd(g *globals) *cobra.Command {
	var showValues bool
	c := &cobra.Command{
		Use:   "info ID",
		Short: "Show one VM's configuration and state",
		Long: `Show one VM's configuration, network and state.

--json prints one VM object: vm_id, status, config (vm_id, vcpu_count, mem_size_mib,
disk_mode, backend, ...), network (guest_ip, gateway_ip, netmask, tap_device, guest_mac,
ssh_host_port; null without network), pid, backend, accel, sockets, created_at, updated_at.
config.env_vars shows names with values hidden ("********") unless --show-values.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			vm, err := g.vm(c.Context(), a[0])
			if err != nil {
				return err
			}
			defer vm.Release()
			inf := vm.Info()
			if g.jsonOut {
				if !showValues {
					inf = inf.Redacted()
				}
				return writeJSON(c.OutOrStdout(), inf)
			}
			return printInfo(c, inf)
		},
	}
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	c.Flags().BoolVar(&showValues, "show-values", false, "print env var values (hidden by default: they often hold API keys)")
	return c
}

func printInfo(c *cobra.Command, inf smolvm.VMInfo) error {
	rows := [][]string{
		{"ID:", inf.VMID},
		{"Status:", string(inf.Status)},
		{"vCPUs:", fmt.Sprint(inf.Config.VCPUCount)},
		{"Memory:", fmt.Sprintf("%d MiB", inf.Config.MemSizeMiB)},
		{"Disk mode:", string(inf.Config.DiskMode)},
		{"Backend:", string(inf.Config.Backend) + bracket(string(inf.Backend))},
	}
	if inf.Accel != "" {
		rows = append(rows, []string{"Acceleration:", inf.Accel})
	}
	if inf.Config.Image != "" {
		rows = append(rows, []string{"Image:", inf.Config.Image})
	}
	if inf.Template != "" {
		rows = append(rows, []string{"Template:", inf.Template + " (warm start: restored, not booted)"})
	}
	if inf.PID != 0 {
		rows = append(rows, []string{"PID:", fmt.Sprint(inf.PID)})
	}
	if n := inf.Network; n != nil {
		rows = append(rows,
			[]string{"IP:", fmt.Sprintf("%s/%d", n.GuestIP(), n.PrefixLen())},
			[]string{"Gateway:", n.GatewayIP()},
			[]string{"TAP:", n.TapDevice()},
			[]string{"MAC:", n.GuestMAC()})
		if p := n.SSHHostPort(); p != 0 {
			ready := ""
			if inf.SSHReady {
				ready = ", SSH ready"
			}
			rows = append(rows, []string{"SSH:", fmt.Sprintf("smolvm ssh %s   (localhost port %d%s)", inf.VMID, p, ready)})
		}
		if e := inf.Egress; e != nil {
			rows = append(rows, []string{"Egress:", egressSummary(*e)})
		}
	} else {
		rows = append(rows, []string{"Network:", "off"})
	}
	for _, m := range inf.Mounts {
		rows = append(rows, []string{"Mount:", m.HostPath + " -> " + m.GuestPath + map[bool]string{true: " (read-only)"}[m.ReadOnly]})
	}
	if len(inf.Config.EnvVars) > 0 {
		keys := make([]string, 0, len(inf.Config.EnvVars))
		for k := range inf.Config.EnvVars {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		rows = append(rows, []string{"Env vars:", strings.Join(keys, ", ")})
	}
	if inf.Error != "" {
		rows = append(rows, []string{"Error:", inf.Error})
	}
	rows = append(rows, []string{"Created:", inf.CreatedAt.Local().Format("2006-01-02 15:04:05")})
	w := c.OutOrStdout()
	for _, r := range rows {
		fmt.Fprintf(w, "%-14s %s\n", r[0], r[1])
	}
	return nil
}

func bracket(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// joinErrors returns nil, the one error, or all of them on separate lines.
func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%d of the VMs failed:\n  %s", len(errs), strings.Join(msgs, "\n  "))
}
