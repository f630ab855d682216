package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// vmFlags are the flags that describe a VM to create.
type vmFlags struct {
	name, image, diskMode, backend, accel, network, sshPort string
	memory, vcpus, diskSize                                 int
	env, dns                                                []string
	bootTimeout                                             time.Duration
	mounts                                                  []string // host folders (issue 15)
	cpuQuota                                                float64  // resource limits (issue 13)
	diskBPS, diskIOPS                                       int64
	egress                                                  egressFlags // network policy (cmd_network.go)
	consoleLogMiB                                           int         // bounds (issue 13)
	attachIface                                             string      // attached networking (attach.go)
	cold                                                    bool        // warm templates (warm.go)
}

func (f *vmFlags) add(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.name, "name", "", "VM id (default vm-<8 hex>)")
	fl.IntVar(&f.memory, "memory", smolvm.DefaultMemoryMiB, "guest memory in MiB (128-16384)")
	fl.IntVar(&f.vcpus, "vcpus", smolvm.DefaultVCPUs, "virtual CPUs (1-32)")
	fl.StringVar(&f.image, "image", smolvm.ImageDefault, "image: default (Debian), minimal (busybox) or one of yours (smolvm image list)")
	fl.IntVar(&f.diskSize, "disk-size", 0, "grow the VM's disk to this many MiB (default: the image's size)")
	fl.StringVar(&f.diskMode, "disk-mode", "isolated", "isolated (own copy of the disk) or shared (boot the image's disk)")
	fl.StringVar(&f.backend, "backend", "auto", "auto, qemu or firecracker")
	fl.StringVar(&f.accel, "accel", "auto", "auto, kvm or tcg (auto: KVM where it can run a standard guest)")
	fl.StringVar(&f.network, "network", "on", "on, or off for no NIC at all")
	fl.StringVar(&f.sshPort, "ssh-port", "", "forward this host port to the guest's SSH (or 'auto')")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set KEY=VALUE in the guest (repeatable)")
	fl.StringArrayVar(&f.dns, "dns", nil, "the guest's DNS resolver, an IPv4 address (repeatable; default: its gateway)")
	fl.DurationVar(&f.bootTimeout, "boot-timeout", smolvm.DefaultBootTimeout, "how long to wait for the guest to boot")
	fl.StringArrayVar(&f.mounts, "mount", nil, "share a host folder: HOST_DIR:GUEST_DIR[:ro] (repeatable; QEMU only)")
	fl.Float64Var(&f.cpuQuota, "cpu-quota", 0, "cap the VM's CPU time in CPUs, e.g. 0.5 (default: its vCPU count)")
	fl.Int64Var(&f.diskBPS, "disk-bps", 0, "throttle the VM's disk to this many bytes/s, reads and writes together (0: no limit)")
	fl.Int64Var(&f.diskIOPS, "disk-iops", 0, "throttle the VM's disk to this many operations/s (0: no limit)")
	f.egress.add(c, true)
	fl.IntVar(&f.consoleLogMiB, "console-log-size", 0, "cap the console log on disk at this many MiB, newest output kept (default 8)")
	fl.StringVar(&f.attachIface, "attach-interface", "", "give the VM this interface of the current network namespace (its IPv4 address, MAC and gateway) instead of NAT, e.g. a pod's eth0")
	fl.BoolVar(&f.cold, "cold", false, "boot the image instead of restoring its warm template (a booted snapshot made on first use)")
}

// config turns the flags into a VMConfig and create options, or a usage error.
func (f *vmFlags) config() (smolvm.VMConfig, error) {
	cfg := smolvm.VMConfig{
		VMID: f.name, MemSizeMiB: f.memory, VCPUCount: f.vcpus, Image: f.image, DiskSizeMiB: f.diskSize,
		DiskMode: smolvm.DiskMode(f.diskMode), Backend: smolvm.BackendKind(f.backend),
	}
	cfg.Accel = smolvm.Accel(f.accel)
	cfg.CPUQuota, cfg.DiskBPS, cfg.DiskIOPS = f.cpuQuota, f.diskBPS, f.diskIOPS
	cfg.ConsoleLogMaxBytes = int64(f.consoleLogMiB) << 20
	cfg.Cold = f.cold
	// Zero means "default" in VMConfig; typed on the command line it is a mistake.
	if f.vcpus < smolvm.MinVCPUs || f.vcpus > smolvm.MaxVCPUs {
		return cfg, usageError{fmt.Errorf("--vcpus %d: vcpu_count must be between %d and %d", f.vcpus, smolvm.MinVCPUs, smolvm.MaxVCPUs)}
	}
	if f.memory < smolvm.MinMemoryMiB || f.memory > smolvm.MaxMemoryMiB {
		return cfg, usageError{fmt.Errorf("--memory %d: mem_size_mib must be between %d and %d", f.memory, smolvm.MinMemoryMiB, smolvm.MaxMemoryMiB)}
	}
	switch f.accel {
	case "auto", "kvm", "tcg":
	default:
		return cfg, usageError{fmt.Errorf("--accel %q: must be auto, kvm or tcg", f.accel)}
	}
	if f.bootTimeout <= 0 {
		return cfg, usageError{fmt.Errorf("--boot-timeout %v: must be positive", f.bootTimeout)}
	}
	switch f.network {
	case "on", "":
	case "off":
		cfg.NoNetwork = true
	default:
		return cfg, usageError{fmt.Errorf("--network %q: must be on or off", f.network)}
	}
	switch f.sshPort {
	case "":
	case "auto":
		cfg.SSHHostPort = smolvm.SSHPortAuto
	default:
		var p int
		if _, err := fmt.Sscan(f.sshPort, &p); err != nil || p < 1 || p > 65535 {
			return cfg, usageError{fmt.Errorf("--ssh-port %q: must be a port number 1-65535 or auto", f.sshPort)}
		}
		cfg.SSHHostPort = p
	}
	env, err := parseEnv(f.env)
	if err != nil {
		return cfg, err
	}
	cfg.EnvVars = env
	cfg.DNSServers = f.dns
	cfg.AttachInterface = f.attachIface
	if cfg.Mounts, err = parseMounts(f.mounts); err != nil {
		return cfg, err
	}
	if err := f.egress.apply(&cfg); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageError{err}
	}
	return cfg, nil
}

func parseEnv(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, usageError{fmt.Errorf("--env %q: must be KEY=VALUE", kv)}
		}
		if err := smolvm.ValidateEnvKey(k); err != nil {
			return nil, usageError{fmt.Errorf("--env: %w", err)}
		}
		m[k] = v
	}
	return m, nil
}

func newCreateCmd(g *globals) *cobra.Command {
	var f vmFlags
	var snap snapshotCreateFlags
	var start bool
	c := &cobra.Command{
		Use:   "create",
		Short: "Create a VM (and start it with --start)",
		Long: `Create a VM: record it, allocate its address, TAP name, MAC and ports, and copy its disk.
The image is built on first use. With --start it is booted too.`,
		Example: `  smolvm create --name web --ssh-port 2222 --start
  smolvm create --image minimal --memory 256 --network off`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			snap.apply(c, &cfg)
			g.bootTimeout = f.bootTimeout
			h, err := g.api(c.Context())
			if err != nil {
				return err
			}
			vm, err := h.Create(c.Context(), cfg, smolvm.ProgressWriter(c.ErrOrStderr()))
			if err != nil {
				return err
			}
			if start {
				if err := vm.Start(c.Context()); err != nil {
					if c.Context().Err() != nil {
						// Interrupted: undo the whole command, the create too.
						return errors.Join(err, vm.ForceDelete(context.WithoutCancel(c.Context())))
					}
					vm.Release()
					return fmt.Errorf("%w\nThe VM is kept for inspection: smolvm logs %s; remove it with: smolvm delete %s", err, vm.ID(), vm.ID())
				}
			}
			defer vm.Release()
			return printVM(c, g, vm.Info())
		},
	}
	f.add(c)
	snap.add(c)
	c.Flags().BoolVar(&start, "start", false, "boot the VM after creating it")
	c.Flags().BoolVar(&g.jsonOut, "json", false, "print the VM as JSON")
	return c
}

func printVM(c *cobra.Command, g *globals, inf smolvm.VMInfo) error {
	if g.jsonOut {
		return writeJSON(c.OutOrStdout(), inf.Redacted())
	}
	return printInfo(c, inf)
}

// withVMs runs fn on each VM named in ids and reports every failure.
func withVMs(c *cobra.Command, g *globals, ids []string, fn func(ctx context.Context, vm vmHandle) error) error {
	var failed []error
	for _, id := range ids {
		vm, err := g.vm(c.Context(), id)
		if err == nil {
			err = fn(c.Context(), vm)
		}
		if err != nil {
			failed = append(failed, err)
		}
	}
	return joinErrors(failed)
}

func newStartCmd(g *globals) *cobra.Command {
	var bootTimeout time.Duration
	c := &cobra.Command{
		Use:   "start ID...",
		Short: "Boot VMs and wait until their agent answers",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return withVMs(c, g, a, func(ctx context.Context, vm vmHandle) error {
				defer vm.Release()
				start := time.Now()
				if err := vm.Start(ctx); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "started %s in %.2fs\n", vm.ID(), time.Since(start).Seconds())
				if inf := vm.Info(); inf.SSHReady {
					fmt.Fprintf(c.OutOrStdout(), "SSH ready: ssh -p %d root@localhost (or: smolvm ssh %s)\n", inf.Config.SSHHostPort, vm.ID())
				}
				return nil
			})
		},
	}
	c.Flags().DurationVar(&bootTimeout, "boot-timeout", smolvm.DefaultBootTimeout, "how long to wait for the guest to boot")
	c.PreRun = func(*cobra.Command, []string) { g.bootTimeout = bootTimeout }
	return c
}

func newStopCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	var save bool
	c := &cobra.Command{
		Use:   "stop ID...",
		Short: "Power VMs off cleanly (the disk is kept)",
		Long:  "Power VMs off through the guest agent (waiting at most --timeout), then tell the VMM to quit, then kill it.",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return withVMs(c, g, a, func(ctx context.Context, vm vmHandle) error {
				defer vm.Release()
				// The clean power-off gets --timeout; quitting and killing
				// the VMM afterwards have their own deadlines.
				if save {
					sv, ok := vm.(interface{ Suspend(context.Context) error })
					if !ok {
						return usageError{fmt.Errorf("stop --save works on local VMs only, not through --host")}
					}
					if err := sv.Suspend(ctx); err != nil {
						return err
					}
					fmt.Fprintln(c.OutOrStdout(), "saved", vm.ID())
					return nil
				}
				ctx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				if err := vm.Stop(ctx); err != nil {
					return err
				}
				fmt.Fprintln(c.OutOrStdout(), "stopped", vm.ID())
				return nil
			})
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", smolvm.DefaultStopTimeout, "how long a clean power-off may take")
	c.Flags().BoolVar(&save, "save", false, "save the memory and device state and free the VM's RAM; start resumes it")
	return c
}

func newPauseCmds(g *globals) []*cobra.Command {
	mk := func(use, short, done string, fn func(vmHandle, context.Context) error) *cobra.Command {
		return &cobra.Command{
			Use:   use + " ID...",
			Short: short,
			Args:  args(cobra.MinimumNArgs(1)),
			RunE: func(c *cobra.Command, a []string) error {
				return withVMs(c, g, a, func(ctx context.Context, vm vmHandle) error {
					defer vm.Release()
					if err := fn(vm, ctx); err != nil {
						return err
					}
					fmt.Fprintln(c.OutOrStdout(), done, vm.ID())
					return nil
				})
			},
		}
	}
	return []*cobra.Command{
		mk("pause", "Stop VMs' vCPUs (memory and network stay; commands wait)", "paused", vmHandle.Pause),
		mk("resume", "Restart paused VMs' vCPUs", "resumed", vmHandle.Resume),
	}
}

func newDeleteCmd(g *globals) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:     "delete ID...",
		Aliases: []string{"rm"},
		Short:   "Stop VMs and free everything they hold",
		Long:    "Stop VMs (cleanly, or at once with --force) and remove them: VMM process, sockets, disk copy, console log, address lease and port forwards.",
		Args:    args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return withVMs(c, g, a, func(ctx context.Context, vm vmHandle) error {
				del := vm.Delete
				if force {
					del = vm.ForceDelete
				}
				if err := del(ctx); err != nil {
					return err
				}
				fmt.Fprintln(c.OutOrStdout(), "deleted", vm.ID())
				return nil
			})
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "kill the VM instead of powering it off cleanly")
	return c
}

func newRunCmd(g *globals) *cobra.Command {
	var f vmFlags
	var keep, rm bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARG...]",
		Short: "Create a VM, run one command in it, and delete it",
		Long: `Create and boot a VM, run COMMAND in it (through sh -lc when it is a single word list
joined by spaces), print its output as it comes, and delete the VM (unless --keep).
The command's exit code becomes smolvm's exit code.`,
		Example: `  smolvm run -- python3 -c 'print(6*7)'
  smolvm run --image minimal -- uname -a`,
		Args: args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			keep := keep || !rm
			ctx := c.Context()
			g.bootTimeout = f.bootTimeout
			h, err := g.api(ctx)
			if err != nil {
				return err
			}
			vm, err := h.Create(ctx, cfg, smolvm.ProgressWriter(c.ErrOrStderr()))
			if err != nil {
				return err
			}
			cleanup := func() error {
				if keep {
					fmt.Fprintf(c.ErrOrStderr(), "kept VM %s (delete it with: smolvm delete %s)\n", vm.ID(), vm.ID())
					return vm.Release()
				}
				return vm.ForceDelete(context.WithoutCancel(ctx))
			}
			if err := vm.Start(ctx); err != nil {
				return errors.Join(err, cleanup())
			}
			st, err := vm.Exec(ctx, smolvm.ExecOptions{Shell: shellJoin(a), Timeout: timeout, Stdout: c.OutOrStdout(), Stderr: c.ErrOrStderr(), Stdin: stdinIfPiped()})
			if cerr := cleanup(); err == nil && cerr != nil {
				return cerr
			}
			return exitOf(c, st, err)
		},
	}
	f.add(c)
	c.Flags().BoolVar(&keep, "keep", false, "keep the VM after the command (default: delete it)")
	c.Flags().BoolVar(&rm, "rm", true, "delete the VM after the command (--rm=false is --keep)")
	c.Flags().DurationVar(&timeout, "timeout", 0, "kill the command after this long (0: no limit)")
	return c
}

// stdinIfPiped returns os.Stdin when it is not a terminal, so piped input
// reaches the command and an interactive shell does not block on it.
func stdinIfPiped() io.Reader {
	fi, err := os.Stdin.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice != 0 {
		return nil
	}
	return os.Stdin
}

// shellJoin makes one shell command of argv: a single argument is a script
// as written; several are quoted word by word.
func shellJoin(argv []string) string {
	if len(argv) == 1 {
		return argv[0]
	}
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
