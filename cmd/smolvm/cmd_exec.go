package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// exitOf turns a guest command's outcome into the CLI's: its exit code
// passes through; a timeout is reported and keeps the code (137).
func exitOf(c *cobra.Command, st smolvm.ExitStatus, err error) error {
	if err != nil && !st.TimedOut {
		switch {
		case errors.Is(err, smolvm.ErrNotFound):
			return guestCmdError{err: err, code: exitNotFoundCmd} // the program does not exist in the guest
		case errors.Is(err, fs.ErrPermission):
			return guestCmdError{err: err, code: exitCannotRun}
		}
		return err // the code of its kind (125 for an unclassified failure)
	}
	if err != nil {
		fmt.Fprintln(c.ErrOrStderr(), "smolvm: "+err.Error())
	}
	if st.ExitCode != 0 {
		return exitCodeError{st.ExitCode}
	}
	return nil
}

// onVM runs fn on the VM named id and releases it after.
func onVM(c *cobra.Command, g *globals, id string, fn func(vm *smolvm.VM) error) error {
	vm, err := g.get(c.Context(), id)
	if err != nil {
		return err
	}
	defer vm.Release()
	return fn(vm)
}

// onHandle is onVM for commands that also work against a remote server.
func onHandle(c *cobra.Command, g *globals, id string, fn func(vm vmHandle) error) error {
	vm, err := g.vm(c.Context(), id)
	if err != nil {
		return err
	}
	defer vm.Release()
	return fn(vm)
}

func newExecCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	var env []string
	var dir, user string
	var interactive, tty, detached bool
	var tag string
	c := &cobra.Command{
		Use:   "exec ID [flags] -- COMMAND [ARG...]",
		Short: "Run a command in a running VM",
		Long: `Run COMMAND in the VM through its agent (sh -lc, so the VM's env vars apply), with
stdout and stderr streamed separately. The command's exit code becomes smolvm's exit code.
-i forwards smolvm's standard input to the command. -t runs it on a pseudo-terminal (stdout
and stderr merged; input forwarded when stdin is a terminal). --detach starts it in the
background, prints its pid and returns: see ps, attach, kill.`,
		Example: `  smolvm exec web -- uname -a
  echo hi | smolvm exec -i web -- cat
  smolvm exec web --timeout 5s -- 'sleep 10'
  smolvm exec -t web -- top
  smolvm exec --detach --tag server web -- httpd -f -p 8080`,
		Args: args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			envm, err := parseEnv(env)
			if err != nil {
				return err
			}
			if detached || tty {
				return onVM(c, g, a[0], func(vm *smolvm.VM) error {
					if detached {
						return detach(c, g, vm, smolvm.ProcessOptions{Shell: shellJoin(a[1:]), Env: envm, Dir: dir, User: user,
							Timeout: timeout, Tag: tag, Stdin: interactive, Pty: tty})
					}
					st, err := runTerminal(c, vm, smolvm.TerminalOptions{Shell: shellJoin(a[1:]), Env: envm, Dir: dir, User: user}, interactive)
					return exitOf(c, st, err)
				})
			}
			return onHandle(c, g, a[0], func(vm vmHandle) error {
				eo := smolvm.ExecOptions{Shell: shellJoin(a[1:]), Env: envm, Dir: dir, User: user, Timeout: timeout,
					Stdout: c.OutOrStdout(), Stderr: c.ErrOrStderr()}
				if interactive {
					eo.Stdin = os.Stdin
				}
				st, err := vm.Exec(c.Context(), eo)
				return exitOf(c, st, err)
			})
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 0, "kill the command's process group after this long (0: no limit)")
	c.Flags().StringArrayVarP(&env, "env", "e", nil, "set KEY=VALUE for this command (repeatable)")
	c.Flags().StringVarP(&dir, "workdir", "w", "", "working directory in the guest")
	c.Flags().StringVarP(&user, "user", "u", "", "user name or uid in the guest (default root)")
	c.Flags().BoolVarP(&interactive, "interactive", "i", false, "forward standard input to the command")
	c.Flags().BoolVarP(&tty, "tty", "t", false, "run the command on a pseudo-terminal")
	c.Flags().BoolVarP(&detached, "detach", "d", false, "start the command in the background and print its pid")
	c.Flags().StringVar(&tag, "tag", "", "label shown by ps (with --detach)")
	c.Flags().BoolVar(&g.jsonOut, "json", false, `with --detach, print {"pid": N}`)
	return c
}

func newFileCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "file",
		Short: "Copy files and directories into and out of a running VM, and manage its files",
	}
	c.AddCommand(newFileFsCmds(g)...)
	c.AddCommand(&cobra.Command{
		Use:     "upload ID LOCAL GUEST",
		Short:   "Copy a host file or directory into the guest (modes, links and mtimes kept; parents created)",
		Example: "  smolvm file upload web ./script.py /root/script.py",
		Args:    args(cobra.ExactArgs(3)),
		RunE: func(c *cobra.Command, a []string) error {
			if g.remoteURL() != "" { // a server takes single files
				return onHandle(c, g, a[0], func(vm vmHandle) error {
					return vm.UploadFile(c.Context(), a[1], a[2])
				})
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return uploadPath(c, g, vm, a[1], a[2])
			})
		},
	}, newFileDownloadCmd(g))
	return c
}

func newEnvCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "env",
		Short: "Manage environment variables persisted in a running VM",
		Long:  "Variables live in /etc/profile.d/smolvm_env.sh in the guest: every later command and SSH login sees them.",
	}
	var replace bool
	set := &cobra.Command{
		Use:     "set ID KEY=VALUE...",
		Short:   "Set variables (merged with those set before, unless --replace)",
		Example: "  smolvm env set web API_URL=http://10.0.0.1 DEBUG=1",
		Args:    args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			vars, err := parseEnv(a[1:])
			if err != nil {
				return err
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				if replace {
					return vm.ReplaceEnvVars(c.Context(), vars)
				}
				return vm.SetEnvVars(c.Context(), vars)
			})
		},
	}
	set.Flags().BoolVar(&replace, "replace", false, "drop every variable not given")
	unset := &cobra.Command{
		Use:   "unset ID KEY...",
		Short: "Remove variables",
		Args:  args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return vm.UnsetEnvVars(c.Context(), a[1:]...)
			})
		},
	}
	var show bool
	list := &cobra.Command{
		Use:   "list ID",
		Short: "List variables (names only, unless --show-values)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				vars, err := vm.ListEnvVars(c.Context())
				if err != nil {
					return err
				}
				if !show {
					for k := range vars {
						vars[k] = "********"
					}
				}
				if g.jsonOut {
					return writeJSON(c.OutOrStdout(), vars)
				}
				keys := make([]string, 0, len(vars))
				for k := range vars {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					if show {
						fmt.Fprintf(c.OutOrStdout(), "%s=%q\n", k, vars[k])
					} else {
						fmt.Fprintln(c.OutOrStdout(), k)
					}
				}
				return nil
			})
		},
	}
	list.Flags().BoolVar(&show, "show-values", false, "print values too")
	list.Flags().BoolVar(&g.jsonOut, "json", false, "print a JSON object")
	c.AddCommand(set, unset, list)
	return c
}
