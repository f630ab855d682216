package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/smolvm-go/smolvm/internal/imagecfg"
)

// RunConfig is how a user image runs, recorded in its manifest.
type RunConfig struct {
	// Source is the spec's from: value.
	Source string `json:"source"`
	// Format is how an imported base was packed (FormatOCI, ...), or
	// "builtin" or "image".
	Format string `json:"format"`
	// Digest identifies the base (see ImportResult.Digest, Inputs.BaseDigest).
	Digest string `json:"digest,omitempty"`
	// Start and Ready are the spec's commands (start falls back to an OCI
	// image's entrypoint and command).
	Start string `json:"start,omitempty"`
	Ready string `json:"ready,omitempty"`
	// Env is the environment: an OCI image's, then the spec's on top.
	Env map[string]string `json:"env,omitempty"`
	// Workdir and User run the start command.
	Workdir string `json:"workdir,omitempty"`
	User    string `json:"user,omitempty"`
	// Steps are the spec's run: steps, run in a build VM before the image
	// was installed.
	Steps []string `json:"steps,omitempty"`
}

// envFile is where a user image's environment is exported for login shells.
const envFile = "etc/profile.d/zz-smolvm-image.sh"

// resolveUser records a user image's inputs: the spec, its files, and what
// identifies its base.
func (b *builder) resolveUser(ctx context.Context, in *Inputs) error {
	s := b.opts.Spec
	in.Spec = s
	sum, err := specFilesSum(s)
	if err != nil {
		return err
	}
	in.SpecFilesSHA256 = sum
	if j, err := json.Marshal(s); err == nil {
		in.SpecSHA256 = sha256Hex(j)
	}
	kind, arg := s.Base()
	switch kind {
	case FromBuiltin:
		if err := b.resolveBuiltin(ctx, in, arg); err != nil {
			return err
		}
		if arg == NameDefault {
			in.Packages = append(slices.Clone(DefaultPackages), s.Packages...)
			if in.PackageVersions, err = b.resolvePackages(ctx, s.Packages); err != nil {
				return err
			}
		}
	case FromImage:
		base, err := Get(b.opts.CacheDir, arg)
		if err != nil {
			return fmt.Errorf("from %s: %w", arg, err)
		}
		if _, err := LookTool("debugfs"); err != nil {
			return err
		}
		in.BaseDigest = base.Manifest.Fingerprint
	default:
		if in.BaseDigest, err = sourceDigest(arg); err != nil {
			return fmt.Errorf("from %s: %w", s.From, err)
		}
	}
	return nil
}

// resolvePackages asks apt for each package's candidate version: a package
// the archive does not have is an error naming it, before anything is built.
func (b *builder) resolvePackages(ctx context.Context, names []string) ([]debPackage, error) {
	var out []debPackage
	for i, n := range names {
		// apt-cache alone: the package lists were refreshed if needed when
		// the kernel was resolved, and a missing package must not trigger
		// an update.
		p, err := b.apt.showNoUpdate(ctx, n)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: packages[%d]: %q: no such package in the Debian archive (%s): %w", ErrInvalidSpec, i, n, debianSuite, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// specFilesSum fingerprints the spec's host files by name, size and time.
func specFilesSum(s *Spec) (string, error) {
	var parts []string
	for i, f := range s.Files {
		sum, err := treeSum(s.SrcPath(f))
		if err != nil {
			return "", fmt.Errorf("%w: files[%d].src: %w", ErrInvalidSpec, i, err)
		}
		parts = append(parts, sum)
	}
	return sha256Hex([]byte(strings.Join(parts, "\n"))), nil
}

// userTree fills rootDir with the spec's base, files, environment, the
// agent and the /etc files every image needs, and records the run
// configuration.
func (b *builder) userTree(ctx context.Context, rootDir string) error {
	s := b.opts.Spec
	kind, arg := s.Base()
	cfg := &RunConfig{Source: s.From, Format: kind, Digest: b.m.Inputs.BaseDigest}
	var err error
	switch kind {
	case FromBuiltin:
		if arg == NameMinimal {
			err = b.minimalTree(ctx, rootDir)
		} else {
			err = b.defaultTree(ctx, rootDir)
		}
	case FromImage:
		err = b.dumpImage(ctx, arg, rootDir, cfg)
	default:
		err = b.importTree(ctx, arg, rootDir, cfg)
	}
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := copySpecFiles(s, root, rootDir); err != nil {
		return err
	}
	if err := ensureUser(root, s.User); err != nil {
		return fmt.Errorf("user: %w", err)
	}
	b.m.Config = finishConfig(cfg, s)
	guest := b.m.Config.Guest()
	if len(b.m.Config.Steps) > 0 {
		// The build VM runs the steps as root with the image's environment
		// and starts nothing; the final configuration goes in after them.
		guest = imagecfg.Config{Env: guest.Env}
	}
	return writeImageFiles(root, b.agent, b.m.Config.Env, guest)
}

// Guest returns the part of c the guest reads (imagecfg.File).
func (c *RunConfig) Guest() imagecfg.Config {
	return imagecfg.Config{Env: c.Env, User: c.User, Workdir: c.Workdir, Start: c.Start, Ready: c.Ready}
}

// importTree imports an oci: or tar: base into rootDir.
func (b *builder) importTree(ctx context.Context, src, rootDir string, cfg *RunConfig) error {
	b.progress("rootfs: import "+filepath.Base(src), 0, 1)
	res, err := Import(ctx, src, rootDir, b.opts.Import)
	if err != nil {
		return err
	}
	cfg.Format, cfg.Digest = res.Format, res.Digest
	cfg.Env = map[string]string{}
	for _, kv := range res.Config.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && envKeyRE.MatchString(k) {
			cfg.Env[k] = v
		}
	}
	cfg.Workdir, cfg.User = res.Config.WorkingDir, res.Config.User
	if argv := append(slices.Clone(res.Config.Entrypoint), res.Config.Cmd...); len(argv) > 0 {
		cfg.Start = shellJoin(argv)
	}
	b.progress("rootfs: import "+filepath.Base(src), 1, 1)
	return nil
}

// dumpImage copies a cached image's root filesystem into rootDir with
// debugfs (no mount needed).
func (b *builder) dumpImage(ctx context.Context, name, rootDir string, cfg *RunConfig) error {
	base, err := Get(b.opts.CacheDir, name)
	if err != nil {
		return err
	}
	if bc := base.Manifest.Config; bc != nil {
		// A user image built on another inherits how it runs.
		cfg.Start, cfg.Ready, cfg.Workdir, cfg.User = bc.Start, bc.Ready, bc.Workdir, bc.User
		cfg.Env = maps.Clone(bc.Env)
	}
	b.progress("rootfs: copy "+name, 0, 1)
	if err := os.MkdirAll(rootDir, 0o755); err != nil {
		return err
	}
	if _, err := runTool(ctx, "", "debugfs", "-R", "rdump / "+rootDir, base.Rootfs); err != nil {
		return fmt.Errorf("copy image %s: %w", name, err)
	}
	if err := os.RemoveAll(filepath.Join(rootDir, "lost+found")); err != nil {
		return err
	}
	b.progress("rootfs: copy "+name, 1, 1)
	return nil
}

// finishConfig puts the spec's settings over the base's.
func finishConfig(cfg *RunConfig, s *Spec) *RunConfig {
	if cfg.Env == nil && len(s.Env) > 0 {
		cfg.Env = map[string]string{}
	}
	for k, v := range s.Env {
		cfg.Env[k] = v
	}
	if len(cfg.Env) == 0 {
		cfg.Env = nil
	}
	for _, p := range []struct {
		dst *string
		v   string
	}{
		{&cfg.Start, s.Start}, {&cfg.Ready, s.Ready}, {&cfg.Workdir, s.Workdir}, {&cfg.User, s.User},
	} {
		if p.v != "" {
			*p.dst = p.v
		}
	}
	cfg.Steps = s.Steps()
	return cfg
}

// copySpecFiles copies the spec's host files into the tree, owned by root,
// through the same safe extractor an import uses: nothing is written
// through a symlink of the image.
func copySpecFiles(s *Spec, root *os.Root, rootDir string) error {
	x := &extractor{root: root, dir: rootDir, maxBytes: 1 << 40, maxFiles: 1 << 30, asRoot: os.Geteuid() == 0}
	for i, f := range s.Files {
		src := s.SrcPath(f)
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			dest := path.Join(strings.TrimPrefix(f.Dest, "/"), filepath.ToSlash(rel))
			return copyHostEntry(x, p, dest, d, f.Mode, p == src)
		})
		if err != nil {
			return fmt.Errorf("files[%d] %s -> %s: %w", i, f.Src, f.Dest, err)
		}
	}
	return nil
}

// copyHostEntry writes one host file, directory or symlink at dest; mode,
// if set, applies to the top entry.
func copyHostEntry(x *extractor, p, dest string, d fs.DirEntry, mode FileMode, top bool) error {
	info, err := d.Info()
	if err != nil {
		return err
	}
	link := ""
	if info.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	h, err := tar.FileInfoHeader(info, link)
	if err != nil {
		return err
	}
	h.Uid, h.Gid = 0, 0
	if top && mode != 0 {
		h.Mode = h.Mode&^0o7777 | int64(mode)
	}
	if err := x.checkParents(dest); err != nil {
		return err
	}
	var r io.Reader
	if h.Typeflag == tar.TypeReg {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	return x.entry(h, dest, r)
}

// writeImageFiles writes what every user image needs into the tree: the
// agent, a resolver placeholder, hostname and hosts, and the environment
// for login shells. Writes go through root: symlinks in the image are
// followed only inside it.
func writeImageFiles(root *os.Root, agent []byte, env map[string]string, guest imagecfg.Config) error {
	files := etcFiles()
	delete(files, "etc/fstab")
	if len(env) > 0 {
		keys := make([]string, 0, len(env))
		for k := range env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var sb strings.Builder
		sb.WriteString("# Written by smolvm from the image spec: defaults, so a command's own\n# variables (exec -e) win; PATH always (/etc/profile resets it).\n")
		for _, k := range keys {
			if k == "PATH" {
				fmt.Fprintf(&sb, "export %s=%s\n", k, shellQuote(env[k]))
				continue
			}
			fmt.Fprintf(&sb, "[ -n \"${%s+x}\" ] || export %s=%s\n", k, k, shellQuote(env[k]))
		}
		files[envFile] = sb.String()
	}
	cj, err := json.MarshalIndent(guest, "", "  ")
	if err != nil {
		return err
	}
	files[strings.TrimPrefix(imagecfg.File, "/")] = string(cj) + "\n"
	// The init mounts over these; an imported tree may lack them.
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp"} {
		if _, err := root.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			if err := root.Mkdir(d, 0o755); err != nil {
				return err
			}
			if d == "tmp" {
				if err := root.Chmod(d, 0o777|fs.ModeSticky); err != nil {
					return err
				}
			}
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := writeInRoot(root, n, []byte(files[n]), 0o644); err != nil {
			return err
		}
	}
	return writeInRoot(root, strings.TrimPrefix(AgentInstallPath, "/"), agent, 0o755)
}

// writeInRoot replaces the file name inside root with data.
func writeInRoot(root *os.Root, name string, data []byte, mode fs.FileMode) error {
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_ = root.Remove(name) // a symlink (resolv.conf often is one) is replaced, not followed
	if err := root.WriteFile(name, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return root.Chmod(name, mode)
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellJoin makes a shell command line of argv.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}
