package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/consolelog"
)

// newFileDownloadCmd is `file download`, with an optional size limit
// (unlimited by default: the file goes to disk, not to memory) and the
// mode neutralised (at most 0755, no setuid).
func newFileDownloadCmd(g *globals) *cobra.Command {
	var maxSize int64
	c := &cobra.Command{
		Use:     "download ID GUEST LOCAL",
		Short:   "Copy a guest file or directory to the host (modes at most 0755, no setuid/setgid or group/other write; links and mtimes kept; nothing may escape LOCAL)",
		Example: "  smolvm file download web /root/out.txt ./out.txt\n  smolvm file download web /work/out ./out",
		Args:    args(cobra.ExactArgs(3)),
		RunE: func(c *cobra.Command, a []string) error {
			if g.remoteURL() != "" { // a server gives single files
				if maxSize != 0 {
					return usageError{fmt.Errorf("--max-size works on local VMs only, not through --host")}
				}
				return onHandle(c, g, a[0], func(vm vmHandle) error {
					d, ok := vm.(interface {
						DownloadFile(context.Context, string, string) error
					})
					if !ok {
						return fmt.Errorf("this server handle cannot download files")
					}
					return d.DownloadFile(c.Context(), a[1], a[2])
				})
			}
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return downloadPath(c, g, vm, a[1], a[2], smolvm.DownloadMaxBytes(maxSize))
			})
		},
	}
	c.Flags().Int64Var(&maxSize, "max-size", 0, "fail if the file is larger than this many bytes (0: no limit)")
	return c
}

// newLogsCmd is `logs`: the console log (rotated half first), followed
// across rotations with -f, or its last lines with --tail (read from the
// end of the file, never loaded whole). Terminal control sequences the
// guest printed are removed unless --raw.
func newLogsCmd(g *globals) *cobra.Command {
	var follow, raw bool
	var tail int
	c := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a VM's serial console (capped on disk; control sequences removed unless --raw)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			vm, err := g.get(c.Context(), a[0])
			if err != nil {
				return err
			}
			defer vm.Release()
			path := vm.ConsoleLog()
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s has no console log yet (it never started)", a[0])
			}
			var out io.Writer = c.OutOrStdout()
			if !raw {
				out = sanitizer{out}
			}
			if tail > 0 {
				b, err := consolelog.Tail(path, tail, int64(tail)*1024+64<<10)
				if err != nil {
					return err
				}
				if len(b) > 0 {
					b = append(b, '\n')
				}
				if _, err := out.Write(b); err != nil {
					return err
				}
				if !follow {
					return nil
				}
			} else if !follow {
				return consolelog.Copy(out, path)
			}
			fl := consolelog.NewFollower(path)
			defer fl.Close()
			if tail > 0 {
				fl.ReadNew(io.Discard) // already printed
			}
			for {
				if _, err := fl.ReadNew(out); err != nil {
					return err
				}
				if vm.Refresh(c.Context()) == nil && vm.Info().Status != smolvm.StateRunning && vm.Info().Status != smolvm.StatePaused {
					_, err := fl.ReadNew(out)
					return err
				}
				select {
				case <-c.Context().Done():
					return nil
				case <-time.After(200 * time.Millisecond):
				}
			}
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing while the VM runs")
	c.Flags().BoolVar(&raw, "raw", false, "print the console as the guest wrote it, terminal control sequences included")
	c.Flags().IntVarP(&tail, "tail", "n", 0, "print only the last N lines")
	return c
}

// sanitizer removes terminal control sequences from what it writes.
type sanitizer struct{ w io.Writer }

func (s sanitizer) Write(p []byte) (int, error) {
	if _, err := s.w.Write(smolvm.SanitizeTerminal(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
