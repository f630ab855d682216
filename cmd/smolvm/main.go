// Command smolvm creates, runs and manages SmolVM microVMs.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// Exit codes of the CLI. A command run in a guest passes its own code through.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks bad flags or arguments: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCodeError carries an exit code to pass through without printing anything.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the flags every command has.
type globals struct {
	dataDir string
	jsonOut bool
	extra   []smolvm.Option // set by a command's own flags
}

func (g *globals) opts() []smolvm.Option {
	o := append([]smolvm.Option(nil), g.extra...)
	if g.dataDir != "" {
		o = append(o, smolvm.WithDataDir(g.dataDir))
	}
	return o
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "smolvm",
		Short: "Run untrusted code in hardware-isolated microVMs",
		Long: `smolvm creates and runs microVMs (QEMU or Firecracker) with automatic networking,
images built from Debian packages and a fast guest agent for commands and files.

State lives in --data-dir (default: $SMOLVM_DATA_DIR, /var/lib/smolvm for root,
else $XDG_STATE_HOME/smolvm).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          args(cobra.NoArgs),
		RunE:          func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", "", "state directory (default $SMOLVM_DATA_DIR or the per-user default)")
	var fcPath string
	root.PersistentFlags().StringVar(&fcPath, "firecracker", "", "Firecracker binary (default $SMOLVM_FIRECRACKER, else firecracker in PATH)")
	root.PersistentPreRun = func(*cobra.Command, []string) {
		if fcPath != "" {
			os.Setenv("SMOLVM_FIRECRACKER", fcPath)
		}
	}
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
		newEnvCmd(g),
		newImageCmd(g),
		newSSHCmd(g),
		newPortCmd(g),
		newDoctorCmd(g),
		newCleanupCmd(g),
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
	fmt.Fprintln(root.ErrOrStderr(), "smolvm: "+err.Error())
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, smolvm.ErrInvalidConfig) {
		return exitUsage // bad flags, arguments or configuration values
	}
	return exitError
}
