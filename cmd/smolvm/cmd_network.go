package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// egressFlags are the network policy flags of create, run and network set.
type egressFlags struct {
	internet          string
	allowOut, denyOut []string
	rate              string
	dnsUpstream       []string
	cmd               *cobra.Command
}

func (f *egressFlags) add(c *cobra.Command, create bool) {
	f.cmd = c
	fl := c.Flags()
	fl.StringVar(&f.internet, "internet", "", "on or off: whether public addresses are reachable by default (default on)")
	fl.StringArrayVar(&f.allowOut, "allow-out", nil, "allow an IPv4 address, CIDR or domain (pypi.org, *.github.com), even with --internet off or in a private range (repeatable)")
	fl.StringArrayVar(&f.denyOut, "deny-out", nil, "deny an IPv4 address, CIDR or domain; wins over --allow-out (repeatable)")
	fl.StringVar(&f.rate, "egress-rate", "", "cap outbound traffic, e.g. 10mbit, 512kbit, 2MB/s")
	if create {
		fl.StringArrayVar(&f.dnsUpstream, "dns-upstream", nil, "resolver (IPv4[:port]) the DNS forwarder asks for this VM (repeatable; default: the host's /etc/resolv.conf)")
	}
}

// parseInternet reads --internet.
func parseInternet(s string) (bool, error) {
	switch s {
	case "on", "true", "yes":
		return true, nil
	case "off", "false", "no":
		return false, nil
	}
	return false, usageError{fmt.Errorf("--internet %q: must be on or off", s)}
}

// apply puts the flags given into cfg.
func (f *egressFlags) apply(cfg *smolvm.VMConfig) error {
	if f.internet != "" {
		on, err := parseInternet(f.internet)
		if err != nil {
			return err
		}
		cfg.Internet = &on
	}
	cfg.AllowOut, cfg.DenyOut, cfg.EgressRate, cfg.DNSUpstream = f.allowOut, f.denyOut, f.rate, f.dnsUpstream
	return nil
}

// changed applies the flags given on the command line to p: each flag
// given replaces its field (an empty value clears a list or the rate).
func (f *egressFlags) changed(p *smolvm.EgressPolicy) (bool, error) {
	fl := f.cmd.Flags()
	any := false
	if fl.Changed("internet") {
		on, err := parseInternet(f.internet)
		if err != nil {
			return false, err
		}
		p.Internet, any = on, true
	}
	nonEmpty := func(l []string) []string {
		out := []string{}
		for _, s := range l {
			if s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	if fl.Changed("allow-out") {
		p.AllowOut, any = nonEmpty(f.allowOut), true
	}
	if fl.Changed("deny-out") {
		p.DenyOut, any = nonEmpty(f.denyOut), true
	}
	if fl.Changed("egress-rate") {
		p.EgressRate, any = f.rate, true
		if f.rate == "none" || f.rate == "0" {
			p.EgressRate = ""
		}
	}
	return any, nil
}

func newNetworkCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "network",
		Short: "Show or change a VM's egress policy",
		Long: `A VM's egress policy decides what the guest may reach outside the host. Rules, first match
wins: --deny-out drops; --allow-out accepts; with --internet off everything else drops; the safe
defaults (169.254.0.0/16 metadata, 10/8, 172.16/12, 192.168/16, 100.64/10, 127/8, 0/8,
224/4, 240/4) drop; the rest is accepted. Domains are enforced by smolvm's DNS forwarder
on the VM's gateway: only allowed names resolve, and their answers' addresses are reachable
for the records' TTL.`,
	}
	var f egressFlags
	set := &cobra.Command{
		Use:   "set ID [--internet on|off] [--allow-out R]... [--deny-out R]... [--egress-rate RATE]",
		Short: "Change a VM's egress policy (at once if it runs); flags not given keep their value",
		Example: `  smolvm network set web --internet off --allow-out pypi.org --allow-out '*.pythonhosted.org'
  smolvm network set web --allow-out ''        # clear the allow list
  smolvm network set web --egress-rate none`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				inf := vm.Info()
				if inf.Egress == nil {
					return fmt.Errorf("%s has no network: %w", vm.ID(), smolvm.ErrState)
				}
				p := *inf.Egress
				changed, err := f.changed(&p)
				if err != nil {
					return err
				}
				if !changed {
					return usageError{fmt.Errorf("nothing to change: give --internet, --allow-out, --deny-out or --egress-rate")}
				}
				start := time.Now()
				if err := vm.SetEgress(c.Context(), p); err != nil {
					return err
				}
				if g.jsonOut {
					return writeJSON(c.OutOrStdout(), vm.Info().Egress)
				}
				fmt.Fprintf(c.ErrOrStderr(), "egress policy of %s changed in %v\n", vm.ID(), time.Since(start).Round(time.Millisecond))
				return printEgress(c, vm.Info())
			})
		},
	}
	f.add(set, false)
	set.Flags().BoolVar(&g.jsonOut, "json", false, "print the new policy as JSON")
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a VM's egress policy",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				inf := vm.Info()
				if g.jsonOut {
					return writeJSON(c.OutOrStdout(), inf.Egress)
				}
				return printEgress(c, inf)
			})
		},
	}
	show.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	c.AddCommand(set, show)
	return c
}

func printEgress(c *cobra.Command, inf smolvm.VMInfo) error {
	w := c.OutOrStdout()
	e := inf.Egress
	if e == nil {
		fmt.Fprintln(w, "Network:       off")
		return nil
	}
	onOff := map[bool]string{true: "on", false: "off"}
	list := func(l []string) string {
		if len(l) == 0 {
			return "-"
		}
		return strings.Join(l, ", ")
	}
	fmt.Fprintf(w, "%-14s %s\n%-14s %s\n%-14s %s\n%-14s %s\n", "Internet:", onOff[e.Internet],
		"Allow out:", list(e.AllowOut), "Deny out:", list(e.DenyOut), "Egress rate:", dash(e.EgressRate))
	return nil
}

// newDNSForwarderCmd is the hidden command that runs the DNS forwarder
// supervisor; the SDK starts it when a VM needs it.
func newDNSForwarderCmd() *cobra.Command {
	var dir string
	var idle time.Duration
	c := &cobra.Command{
		Use:    smolvm.DNSForwarderCommand + " --dir DIR",
		Short:  "Run the DNS forwarder for the VMs registered in DIR (started by smolvm itself)",
		Hidden: true,
		Args:   args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			return smolvm.ServeDNSForwarder(context.WithoutCancel(c.Context()), dir, idle)
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "state directory")
	c.Flags().DurationVar(&idle, "idle-exit", smolvm.DNSForwarderIdleExit, "exit after this long without a VM")
	return c
}

// parsePublish reads docker's -p form [HOST_IP:][HOST_PORT:]GUEST_PORT.
func parsePublish(s string) (hostIP string, hostPort, guestPort int, err error) {
	bad := func(why string) (string, int, int, error) {
		return "", 0, 0, usageError{fmt.Errorf("port %q: %s; want [HOST_IP:][HOST_PORT:]GUEST_PORT, e.g. 8080, 9000:8080 or 0.0.0.0:9000:8080", s, why)}
	}
	parts := strings.Split(s, ":")
	num := func(p string, zeroOK bool) (int, bool) {
		if p == "" && zeroOK {
			return 0, true
		}
		n, err := strconv.Atoi(p)
		return n, err == nil && n >= 0 && n <= 65535 && (n > 0 || zeroOK) && p[0] != '+' && p[0] != '-'
	}
	var hs, gs string
	switch len(parts) {
	case 1:
		gs = parts[0]
	case 2:
		if _, e := netip.ParseAddr(parts[0]); e == nil {
			return bad("a host address needs a host port or an empty one (ADDR::GUEST)")
		}
		hs, gs = parts[0], parts[1]
	case 3:
		hostIP = parts[0]
		if a, e := netip.ParseAddr(hostIP); e != nil || !a.Is4() {
			return bad(fmt.Sprintf("host_ip %q is not an IPv4 address", hostIP))
		}
		hs, gs = parts[1], parts[2]
	default:
		return bad("too many ':'")
	}
	var ok bool
	if hostPort, ok = num(hs, true); !ok {
		return bad(fmt.Sprintf("host_port %q must be a number 1-65535", hs))
	}
	if guestPort, ok = num(gs, false); !ok {
		return bad(fmt.Sprintf("guest_port %q must be a number 1-65535", gs))
	}
	return hostIP, hostPort, guestPort, nil
}

func newPortCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "port",
		Short: "Forward host TCP ports to a VM",
		Long: `Forward host TCP ports to guest ports. A forward answers on 127.0.0.1 only unless published
on another host address ([HOST_IP:] in port expose; 0.0.0.0 means every address). Forwarded
ports are the only way into a VM.`,
	}
	expose := &cobra.Command{
		Use:   "expose ID [HOST_IP:][HOST_PORT:]GUEST_PORT",
		Short: "Forward a host port (free one from 2200 up unless given) to a guest port",
		Example: `  smolvm port expose web 8080                 # 127.0.0.1:<free port>; prints it
  smolvm port expose web 9000:8080            # 127.0.0.1:9000
  smolvm port expose web 0.0.0.0:9000:8080    # every host address
  smolvm port expose web 192.0.2.10::8080     # that address, a free port`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			hostIP, host, guest, err := parsePublish(a[1])
			if err != nil {
				return err
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				hp, err := vm.ExposeOn(c.Context(), hostIP, guest, host)
				if err != nil {
					return err
				}
				if hostIP == "" {
					hostIP = "127.0.0.1"
				}
				if g.jsonOut {
					return writeJSON(c.OutOrStdout(), map[string]any{"host_ip": hostIP, "host_port": hp, "guest_port": guest})
				}
				fmt.Fprintf(c.OutOrStdout(), "%s:%d -> %s:%d\n", hostIP, hp, vm.ID(), guest)
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
					rows = append(rows, []string{p.HostIP, fmt.Sprint(p.HostPort), fmt.Sprint(p.GuestPort), p.Kind})
				}
				return table(c.OutOrStdout(), []string{"ADDRESS", "HOST", "GUEST", "KIND"}, rows)
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

// egressSummary is one line for info.
func egressSummary(e smolvm.EgressPolicy) string {
	s := "internet on"
	if !e.Internet {
		s = "internet off"
	}
	if len(e.AllowOut) > 0 {
		s += "; allow " + strings.Join(e.AllowOut, ", ")
	}
	if len(e.DenyOut) > 0 {
		s += "; deny " + strings.Join(e.DenyOut, ", ")
	}
	if e.EgressRate != "" {
		s += "; rate " + e.EgressRate
	}
	return s
}
