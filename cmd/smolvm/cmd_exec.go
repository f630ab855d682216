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

func newExecCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	var env []string
	var dir, user string
	var interactive bool
	c := &cobra.Command{
		Use:   "exec ID [flags] -- COMMAND [ARG...]",
		Short: "Run a command in a running VM",
		Long: `Run COMMAND in the VM through its agent (sh -lc, so the VM's env vars apply), with
stdout and stderr streamed separately. The command's exit code becomes smolvm's exit code.
-i forwards smolvm's standard input to the command.`,
		Example: `  smolvm exec web -- uname -a
  echo hi | smolvm exec -i web -- cat
  smolvm exec web --timeout 5s -- 'sleep 10'`,
		Args: args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			envm, err := parseEnv(env)
			if err != nil {
				return err
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
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
	return c
}

func newFileCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "file",
		Short: "Copy files into and out of a running VM",
	}
	c.AddCommand(&cobra.Command{
		Use:     "upload ID LOCAL GUEST",
		Short:   "Copy a host file into the guest (mode kept, parents created, replaced atomically)",
		Example: "  smolvm file upload web ./script.py /root/script.py",
		Args:    args(cobra.ExactArgs(3)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return vm.UploadFile(c.Context(), a[1], a[2])
			})
		},
	}, &cobra.Command{
		Use:     "download ID GUEST LOCAL",
		Short:   "Copy a guest file to the host (mode kept)",
		Example: "  smolvm file download web /root/out.txt ./out.txt",
		Args:    args(cobra.ExactArgs(3)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return vm.DownloadFile(c.Context(), a[1], a[2])
			})
		},
	})
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

func newImageCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Build, list and remove guest images",
	}
	var kernel string
	var force bool
	build := &cobra.Command{
		Use:   "build [default|minimal]",
		Short: "Build an image from Debian packages (default: the default image)",
		Long: `Build an image: Debian's cloud kernel, an initramfs with the smolvm agent as init, and an ext4
root disk (default: Debian bookworm with openssh-server and python3; minimal: busybox).
An image whose inputs did not change is not rebuilt.`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			name := smolvm.ImageDefault
			if len(a) == 1 {
				name = a[0]
			}
			if name != smolvm.ImageDefault && name != smolvm.ImageMinimal {
				return usageError{fmt.Errorf("image %q: must be default or minimal", name)}
			}
			start := time.Now()
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			img, err := h.BuildImage(c.Context(), name, smolvm.ImageBuildOptions{KernelPath: kernel, Force: force, Progress: smolvm.ProgressWriter(c.ErrOrStderr())})
			if err != nil {
				return err
			}
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), img)
			}
			fmt.Fprintf(c.OutOrStdout(), "image %s ready in %.1fs (%s, kernel %s)\n", img.Name, time.Since(start).Seconds(), mib(img.SizeBytes), img.KernelVersion)
			return nil
		},
	}
	build.Flags().StringVar(&kernel, "kernel", "", "use this kernel (bzImage or ELF vmlinux) instead of Debian's")
	build.Flags().BoolVar(&force, "force", false, "rebuild even if nothing changed")
	build.Flags().BoolVar(&g.jsonOut, "json", false, "print the image as JSON")
	list := &cobra.Command{
		Use:   "list",
		Short: "List built images",
		Args:  args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			imgs, err := h.Images(c.Context())
			if err != nil {
				return err
			}
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), imgs)
			}
			if len(imgs) == 0 {
				fmt.Fprintln(c.OutOrStdout(), "No images. Build one with: smolvm image build")
				return nil
			}
			rows := [][]string{}
			for _, i := range imgs {
				rows = append(rows, []string{i.Name, dash(i.KernelVersion), mib(i.SizeBytes), i.BuiltAt.Local().Format("2006-01-02 15:04"), i.Fingerprint[:min(12, len(i.Fingerprint))]})
			}
			return table(c.OutOrStdout(), []string{"NAME", "KERNEL", "SIZE", "BUILT", "FINGERPRINT"}, rows)
		},
	}
	list.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove built images",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			var failed []error
			for _, n := range a {
				if err := h.RemoveImage(c.Context(), n); err != nil {
					failed = append(failed, err)
					continue
				}
				fmt.Fprintln(c.OutOrStdout(), "removed", n)
			}
			return joinErrors(failed)
		},
	}
	c.AddCommand(build, list, rm)
	return c
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
