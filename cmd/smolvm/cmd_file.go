package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// uploadPath copies a host file or directory into the guest. A directory's
// content becomes the guest directory's (created with its parents).
func uploadPath(c *cobra.Command, g *globals, vm *smolvm.VM, local, guest string) error {
	fi, err := os.Stat(local)
	if err == nil && fi.IsDir() {
		st, err := vm.UploadDir(c.Context(), local, guest)
		if err != nil {
			return err
		}
		return printStats(c, g, st)
	}
	return vm.UploadFile(c.Context(), local, guest)
}

// downloadPath copies a guest file or directory to the host. A directory is
// extracted with the host-side protections (no absolute names, no "..", no
// writes through links, bounded size); a missing LOCAL appears only on success.
func downloadPath(c *cobra.Command, g *globals, vm *smolvm.VM, guest, local string, opts ...smolvm.DownloadOption) error {
	fi, err := vm.Stat(c.Context(), guest)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		st, err := vm.DownloadDir(c.Context(), guest, local)
		if err != nil {
			return err
		}
		return printStats(c, g, st)
	}
	return vm.DownloadFile(c.Context(), guest, local, opts...)
}

func printStats(c *cobra.Command, g *globals, st smolvm.TransferStats) error {
	if g.jsonOut {
		return writeJSON(c.OutOrStdout(), st)
	}
	if st.Skipped > 0 {
		fmt.Fprintf(c.ErrOrStderr(), "smolvm: skipped %d special files (devices, fifos, sockets)\n", st.Skipped)
	}
	return nil
}

// newFileFsCmds are the file-system subcommands of `smolvm file`.
func newFileFsCmds(g *globals) []*cobra.Command {
	var depth int
	var long bool
	ls := &cobra.Command{
		Use:   "ls ID PATH...",
		Short: "List guest directories (--depth N descends N levels)",
		Long: `List the entries of guest directories, sorted by name, parents before children.
--json prints one array of {"name", "path", "type", "size", "mode", "mod_time", "symlink_target"}
(mode holds the Unix permission bits as a number).`,
		Example: `  smolvm file ls web /root
  smolvm file ls web /srv --depth 3 --json`,
		Args: args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				out := c.OutOrStdout()
				all := []smolvm.FileInfo{}
				for _, p := range a[1:] {
					err := vm.ListFunc(c.Context(), p, smolvm.ListFilesOptions{Depth: depth}, func(fi smolvm.FileInfo) error {
						if g.jsonOut {
							all = append(all, fi)
							return nil
						}
						return printEntry(out, fi, long, depth > 1)
					})
					if err != nil {
						return err
					}
				}
				if g.jsonOut {
					return writeJSON(out, all)
				}
				return nil
			})
		},
	}
	ls.Flags().IntVar(&depth, "depth", 1, "levels to descend (1: the directory's own entries)")
	ls.Flags().BoolVarP(&long, "long", "l", false, "show type, mode, size and modification time")
	ls.Flags().BoolVar(&g.jsonOut, "json", false, "print a JSON array")

	stat := &cobra.Command{
		Use:   "stat ID PATH...",
		Short: "Describe guest paths (a final symlink is described, not followed)",
		Long:  `--json prints the object ls --json lists for one PATH, an array of them for several.`,
		Args:  args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				var all []smolvm.FileInfo
				for _, p := range a[1:] {
					fi, err := vm.Stat(c.Context(), p)
					if err != nil {
						return err
					}
					all = append(all, fi)
				}
				if g.jsonOut {
					if len(all) == 1 {
						return writeJSON(c.OutOrStdout(), all[0])
					}
					return writeJSON(c.OutOrStdout(), all)
				}
				for _, fi := range all {
					if err := printEntry(c.OutOrStdout(), fi, true, true); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	stat.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")

	var mode string
	mkdir := &cobra.Command{
		Use:     "mkdir ID PATH...",
		Short:   "Create guest directories with their parents (mkdir -p)",
		Example: "  smolvm file mkdir web /srv/app/data",
		Args:    args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			m, err := strconv.ParseUint(mode, 8, 32)
			if err != nil || m > 0o7777 {
				return usageError{fmt.Errorf("--mode %q: want octal permission bits like 755", mode)}
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				for _, p := range a[1:] {
					if err := vm.MkdirAll(c.Context(), p, os.FileMode(m).Perm()); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	mkdir.Flags().StringVarP(&mode, "mode", "m", "755", "permission bits (octal)")
	mkdir.Flags().BoolP("parents", "p", true, "create parents (always on)")
	mkdir.Flags().BoolVar(&g.jsonOut, "json", false, "no output; accepted for symmetry")

	mv := &cobra.Command{
		Use:     "mv ID FROM TO",
		Short:   "Rename a guest path (an existing TO is replaced, as rename(2) does)",
		Example: "  smolvm file mv web /tmp/out.txt /root/out.txt",
		Args:    args(cobra.ExactArgs(3)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error { return vm.Move(c.Context(), a[1], a[2]) })
		},
	}
	mv.Flags().BoolVar(&g.jsonOut, "json", false, "no output; accepted for symmetry")

	var recursive, force bool
	rm := &cobra.Command{
		Use:   "rm ID PATH...",
		Short: "Remove guest paths (-r: directories with their content)",
		Long: `Remove guest files and empty directories; with -r, directories with everything under them
(and a missing path is not an error, as with rm -rf).`,
		Example: "  smolvm file rm web -r /srv/app",
		Args:    args(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				for _, p := range a[1:] {
					var err error
					if recursive || force {
						err = vm.RemoveAll(c.Context(), p)
					} else {
						err = vm.Remove(c.Context(), p)
					}
					if err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	rm.Flags().BoolVarP(&recursive, "recursive", "r", false, "remove directories and their content")
	rm.Flags().BoolVarP(&force, "force", "f", false, "same as -r: a missing path is not an error")
	rm.Flags().BoolVar(&g.jsonOut, "json", false, "no output; accepted for symmetry")
	return []*cobra.Command{ls, stat, mkdir, mv, rm}
}

// printEntry prints one directory entry for humans; names are quoted when
// they hold characters a terminal would not show plainly.
func printEntry(w io.Writer, fi smolvm.FileInfo, long, fullPath bool) error {
	name := fi.Name
	if fullPath {
		name = fi.Path
	}
	name = quoteName(name)
	if fi.Type == "symlink" {
		name += " -> " + quoteName(fi.SymlinkTarget)
	}
	if !long {
		_, err := fmt.Fprintln(w, name)
		return err
	}
	_, err := fmt.Fprintf(w, "%-7s %04o %10d %s %s\n", fi.Type, fi.Mode, fi.Size, fi.ModTime.Local().Format("2006-01-02 15:04:05"), name)
	return err
}

// quoteName returns s, Go-quoted if it holds control characters or invalid UTF-8.
func quoteName(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return strconv.Quote(s)
		}
	}
	return s
}

func newPortWaitCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "wait ID GUEST_PORT",
		Short: "Wait until something in the guest listens on a TCP port",
		Long: `Return once a TCP socket in the guest listens on GUEST_PORT (IPv4 or IPv6). Exits 6 if
--timeout passes first.`,
		Example: "  smolvm port wait web 8080 --timeout 30s",
		Args:    args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			port, err := strconv.Atoi(a[1])
			if err != nil || port < 1 || port > 65535 {
				return usageError{fmt.Errorf("guest port %q: want a number from 1 to 65535", a[1])}
			}
			ctx := c.Context()
			if timeout > 0 {
				var cancel func()
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error { return vm.WaitPort(ctx, port) })
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "give up after this long (0: wait forever)")
	return c
}

// parseMounts reads --mount values; a relative host path is taken from the
// current directory.
func parseMounts(vals []string) ([]smolvm.Mount, error) {
	var out []smolvm.Mount
	for _, v := range vals {
		if host, rest, ok := strings.Cut(v, ":"); ok && host != "" && !filepath.IsAbs(host) {
			if abs, err := filepath.Abs(host); err == nil {
				v = abs + ":" + rest
			}
		}
		m, err := smolvm.ParseMount(v)
		if err != nil {
			return nil, usageError{fmt.Errorf("--mount %q: %w", v, err)}
		}
		out = append(out, m)
	}
	return out, nil
}
