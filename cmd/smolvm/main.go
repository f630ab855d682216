// Command smolvm creates, runs and manages SmolVM microVMs.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// Exit codes of the CLI, by error kind. run and exec pass the guest
// command's own code through; their own failures keep the code of their
// kind, and 1 becomes the container conventions' 125 (126 and 127 when the
// guest command cannot be run or is not found).
const (
	exitOK          = 0
	exitError       = 1 // any other failure
	exitUsage       = 2 // bad flags, arguments or configuration values
	exitNotFound    = 3 // no such VM, image or snapshot
	exitState       = 4 // the VM is in the wrong state (e.g. exec on a stopped VM)
	exitUnavailable = 5 // the host lacks something (QEMU, /dev/net/tun, CAP_NET_ADMIN, KVM)
	exitTimeout     = 6 // timed out
	exitRunFailed   = 125
	exitCannotRun   = 126
	exitNotFoundCmd = 127
)

// exitCodeFor maps an error to the CLI's exit code by its kind.
func exitCodeFor(err error) int {
	var ue usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, smolvm.ErrInvalidConfig):
		return exitUsage
	case errors.Is(err, smolvm.ErrNotFound):
		return exitNotFound
	case errors.Is(err, smolvm.ErrState):
		return exitState
	case errors.Is(err, smolvm.ErrUnavailable):
		return exitUnavailable
	case errors.Is(err, smolvm.ErrTimeout):
		return exitTimeout
	}
	return exitError
}

// exitHelp is the exit code table shown by --help.
const exitHelp = `
Exit codes: 0 success; 1 other failure; 2 bad flags, arguments or configuration;
3 no such VM, image or snapshot; 4 wrong state (e.g. exec on a stopped VM);
5 the host lacks something (QEMU, /dev/net/tun, CAP_NET_ADMIN, KVM); 6 timed out.
run and exec pass the guest command's exit code through; their own failures
keep these codes, except that 1 becomes 125 (smolvm failed), and 126 (command
could not be run) and 127 (command not found) come from the guest command.`

// usageError marks bad flags or arguments: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// guestCmdError is a failure to run a guest command in run or exec, with
// its container-convention exit code (125, 126 or 127).
type guestCmdError struct {
	err  error
	code int
}

func (e guestCmdError) Error() string { return e.err.Error() }
func (e guestCmdError) Unwrap() error { return e.err }

// exitCodeError carries an exit code to pass through without printing anything.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the flags every command has and the Host they open.
type globals struct {
	dataDir     string
	fcPath      string
	jsonOut     bool
	bootTimeout time.Duration // set by a command's own flags
	h           *smolvm.Host
	remote      string // --host: a server's URL (remote.go)
}

// host opens the data directory once per command.
func (g *globals) host(ctx context.Context) (*smolvm.Host, error) {
	if g.h != nil {
		return g.h, nil
	}
	if g.remoteURL() != "" {
		return nil, errLocalOnly()
	}
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: g.dataDir, FirecrackerBinary: g.fcPath, BootTimeout: g.bootTimeout})
	if err != nil {
		return nil, err
	}
	g.h = h
	return h, nil
}

func (g *globals) close() {
	if g.h != nil {
		g.h.Close()
		g.h = nil
	}
}

func (g *globals) get(ctx context.Context, id string) (*smolvm.VM, error) {
	h, err := g.host(ctx)
	if err != nil {
		return nil, err
	}
	return h.Get(ctx, id)
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "smolvm",
		Short: "Run untrusted code in hardware-isolated microVMs",
		Long: `smolvm creates and runs microVMs (QEMU or Firecracker) with automatic networking,
images built from Debian packages and a fast guest agent for commands and files.

State lives in --data-dir (default: $SMOLVM_DATA_DIR, /var/lib/smolvm for root,
else $XDG_STATE_HOME/smolvm).
` + exitHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          args(cobra.NoArgs),
		RunE:          func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", "", "state directory (default $SMOLVM_DATA_DIR or the per-user default)")
	root.PersistentFlags().StringVar(&g.fcPath, "firecracker", "", "Firecracker binary (default $SMOLVM_FIRECRACKER, else firecracker in PATH)")
	root.PersistentFlags().StringVar(&g.remote, "host", "", "drive the smolvm server at this URL (default $SMOLVM_HOST; key in $SMOLVM_API_KEY)")
	root.PersistentPostRun = func(*cobra.Command, []string) { g.close() }
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newPauseCmds(g)...)
	root.AddCommand(
		newVersionCmd(g),
		newListCmd(g),
		newInfoCmd(g),
		newDeleteCmd(g),
		newCreateCmd(g),
		newStartCmd(g),
		newStopCmd(g),
		newRunCmd(g),
		newLogsCmd(g),
		newExecCmd(g),
		newFileCmd(g),
		newShellCmd(g), newPsCmd(g), newAttachCmd(g), newKillCmd(g),
		newEnvCmd(g),
		newImageCmd(g),
		newSSHCmd(g),
		newPortCmd(g),
		newDoctorCmd(g),
		newCleanupCmd(g),
		newSnapshotCmd(g),
		newSetupCmd(g),
		newNetworkCmd(g),
		newDNSForwarderCmd(),
		newServeCmd(g),
		newAPIKeyCmd(g),
	)
	return root
}

// args wraps a cobra argument validator so its failures exit with code 2.
func args(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, a []string) error {
		if err := v(c, a); err != nil {
			return usageError{fmt.Errorf("%w\nSee '%s --help'.", err, c.CommandPath())}
		}
		return nil
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, newRoot(), os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes the CLI and maps its error to an exit code, printing it once.
func run(ctx context.Context, root *cobra.Command, argv []string) int {
	root.SetArgs(argv)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	// Errors can carry guest text (console tails, agent messages): no
	// terminal control sequences reach the terminal.
	fmt.Fprintln(root.ErrOrStderr(), "smolvm: "+string(smolvm.SanitizeTerminal([]byte(err.Error()))))
	var ge guestCmdError
	if errors.As(err, &ge) {
		return ge.code
	}
	code := exitCodeFor(err)
	if cmd, _, ferr := root.Find(argv); ferr == nil && (cmd.Name() == "run" || cmd.Name() == "exec") && code == exitError {
		// Their exit code is the guest command's: a failure of smolvm's
		// own that has no code of its kind uses the container convention.
		return exitRunFailed
	}
	return code
}
