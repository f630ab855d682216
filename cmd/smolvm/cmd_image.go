package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
)

func newImageCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Build, list and remove guest images",
	}
	c.AddCommand(newImageBuildCmd(g), newImageListCmd(g), newImageRmCmd(g), newImageImportCmd(g), newImageExportCmd(g), newImagePruneCmd(g))
	return c
}

func newImageBuildCmd(g *globals) *cobra.Command {
	var kernel, specFile, from string
	var packages, run []string
	var force, keepFailed bool
	build := &cobra.Command{
		Use:   "build [NAME] [-f smolvm-image.yaml] [--from BASE] [--packages P,...] [--run CMD]...",
		Short: "Build an image: default, minimal, or your own from a spec",
		Long: `Build an image: Debian's cloud kernel, an initramfs with the smolvm agent as init, and an ext4
root disk. "default" is Debian bookworm with openssh-server and python3, "minimal" is busybox.

With a spec file (-f) or the shortcut flags, build your own image NAME: from a base
(default, minimal, another image, oci:PATH, tar:PATH), with Debian packages, files, env,
run: steps executed in a build VM, a user, a workdir, a start command and a ready check.
An image whose inputs did not change is not rebuilt (a cache hit).`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			name := smolvm.ImageDefault
			if len(a) == 1 {
				name = a[0]
			}
			bo := smolvm.ImageBuildOptions{KernelPath: kernel, Force: force, Progress: smolvm.ProgressWriter(c.ErrOrStderr()),
				SpecFile: specFile, From: from, Packages: splitList(packages), Run: run, KeepFailed: keepFailed, Output: c.ErrOrStderr()}
			user := specFile != "" || from != "" || len(packages) > 0 || len(run) > 0
			switch {
			case user && len(a) == 0:
				return usageError{fmt.Errorf("image build: name the image to build (smolvm image build NAME -f smolvm-image.yaml)")}
			case !user && name != smolvm.ImageDefault && name != smolvm.ImageMinimal:
				return usageError{fmt.Errorf("image %q: give a spec (-f smolvm-image.yaml) or --from/--packages/--run, or build default or minimal", name)}
			}
			start := time.Now()
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			img, err := h.BuildImage(c.Context(), name, bo)
			if err != nil {
				return err
			}
			return printImage(c, g, img, time.Since(start))
		},
	}
	build.Flags().StringVarP(&specFile, "file", "f", "", "the image spec (YAML)")
	build.Flags().StringVar(&from, "from", "", "base image: default, minimal, an image name, oci:PATH or tar:PATH")
	build.Flags().StringSliceVar(&packages, "packages", nil, "Debian packages to add (comma-separated; from default)")
	build.Flags().StringArrayVar(&run, "run", nil, "a shell step to run in the build VM (repeatable)")
	build.Flags().BoolVar(&keepFailed, "keep-failed", false, "keep a failed build's directory for inspection")
	build.Flags().StringVar(&kernel, "kernel", "", "use this kernel (bzImage or ELF vmlinux) instead of Debian's")
	build.Flags().BoolVar(&force, "force", false, "rebuild even if nothing changed")
	build.Flags().BoolVar(&g.jsonOut, "json", false, "print the image as JSON")
	return build
}

// splitList splits comma-separated flag values and drops empty items.
func splitList(in []string) []string {
	var out []string
	for _, v := range in {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// printImage prints a built or imported image.
func printImage(c *cobra.Command, g *globals, img smolvm.ImageInfo, took time.Duration) error {
	if g.jsonOut {
		return writeJSON(c.OutOrStdout(), img)
	}
	fmt.Fprintf(c.OutOrStdout(), "image %s ready in %.1fs (%s, kernel %s)\n", img.Name, took.Seconds(), mib(img.SizeBytes), img.KernelVersion)
	return nil
}

func newImageImportCmd(g *globals) *cobra.Command {
	var keepFailed bool
	imp := &cobra.Command{
		Use:   "import NAME FILE",
		Short: "Import an image: a rootfs tarball, an OCI layout (dir or tar), a docker save archive, or an image export",
		Long: `Import an image as NAME from FILE: a root filesystem tarball (docker export, plain or gzipped),
an OCI image layout (directory or tar), a docker save archive, or an archive written by
smolvm image export (installed unchanged, checksums checked). Layers are applied with their
whiteouts; this host's kernel and agent initramfs are added. The OCI config's env, workdir
and user become the defaults of every command in the image's VMs, its entrypoint and cmd
the start command.`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			start := time.Now()
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			img, err := h.ImportImage(c.Context(), a[0], a[1], smolvm.ImageBuildOptions{
				Progress: smolvm.ProgressWriter(c.ErrOrStderr()), KeepFailed: keepFailed})
			if err != nil {
				return err
			}
			return printImage(c, g, img, time.Since(start))
		},
	}
	imp.Flags().BoolVar(&keepFailed, "keep-failed", false, "keep a failed import's directory for inspection")
	imp.Flags().BoolVar(&g.jsonOut, "json", false, "print the image as JSON")
	return imp
}

func newImageExportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export NAME FILE.tar",
		Short: "Write an image to a self-describing archive (manifest and checksums) for image import elsewhere",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, a []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			if err := h.ExportImage(c.Context(), a[0], a[1]); err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), "exported", a[0], "to", a[1])
			return nil
		},
	}
}

func newImagePruneCmd(g *globals) *cobra.Command {
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove the user images no VM or snapshot uses, and kept failed builds",
		Args:  args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			removed, err := h.PruneImages(c.Context())
			if g.jsonOut {
				if jerr := writeJSON(c.OutOrStdout(), map[string]any{"removed": removed}); jerr != nil {
					return jerr
				}
				return err
			}
			for _, n := range removed {
				fmt.Fprintln(c.OutOrStdout(), "removed", n)
			}
			return err
		},
	}
	prune.Flags().BoolVar(&g.jsonOut, "json", false, "print {\"removed\": [...]}")
	return prune
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
				rows = append(rows, []string{i.Name, dash(i.Base), dash(i.KernelVersion), mib(i.SizeBytes), i.BuiltAt.Local().Format("2006-01-02 15:04"), i.Fingerprint[:min(12, len(i.Fingerprint))]})
			}
			return table(c.OutOrStdout(), []string{"NAME", "BASE", "KERNEL", "SIZE", "BUILT", "FINGERPRINT"}, rows)
		},
	}
	list.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return list
}

func newImageRmCmd(g *globals) *cobra.Command {
	var force bool
	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove built images (refused while a VM or snapshot uses one, unless --force)",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			h, err := g.host(c.Context())
			if err != nil {
				return err
			}
			var failed []error
			remove := h.RemoveImage
			if force {
				remove = h.ForceRemoveImage
			}
			for _, n := range a {
				if err := remove(c.Context(), n); err != nil {
					failed = append(failed, err)
					continue
				}
				fmt.Fprintln(c.OutOrStdout(), "removed", n)
			}
			return joinErrors(failed)
		},
	}
	rm.Flags().BoolVar(&force, "force", false, "remove even while VMs or snapshots use the image")
	return rm
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
