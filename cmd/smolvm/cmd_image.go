package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

func newImageCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Build, list and remove guest images",
	}
	c.AddCommand(newImageBuildCmd(g), newImageListCmd(g), newImageRmCmd(g))
	return c
}

func newImageBuildCmd(g *globals) *cobra.Command {
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
	return build
}

func newImageListCmd(g *globals) *cobra.Command {
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
	return list
}

func newImageRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
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
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
