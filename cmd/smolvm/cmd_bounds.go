package main

import (
	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

// newFileDownloadCmd is `file download`, with an optional size limit
// (unlimited by default: the file goes to disk, not to memory) and the
// mode neutralised (at most 0755, no setuid).
func newFileDownloadCmd(g *globals) *cobra.Command {
	var maxSize int64
	c := &cobra.Command{
		Use:     "download ID GUEST LOCAL",
		Short:   "Copy a guest file to the host (mode kept, at most 0755; no setuid/setgid, no group/other write)",
		Example: "  smolvm file download web /root/out.txt ./out.txt",
		Args:    args(cobra.ExactArgs(3)),
		RunE: func(c *cobra.Command, a []string) error {
			return onVM(c, g, a[0], func(vm *smolvm.VM) error {
				return vm.DownloadFile(c.Context(), a[1], a[2], smolvm.DownloadMaxBytes(maxSize))
			})
		},
	}
	c.Flags().Int64Var(&maxSize, "max-size", 0, "fail if the file is larger than this many bytes (0: no limit)")
	return c
}
