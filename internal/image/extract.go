package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnsafeArchive means an archive entry would escape the root or write
// through a symlink, or the archive exceeds a bound.
var ErrUnsafeArchive = errors.New("unsafe archive")

// Whiteout markers of OCI and Docker layers.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// extractor applies tar layers onto one root directory without ever
// leaving it: entry names are cleaned and must stay inside; no entry is
// written through a symlink (a parent that is a symlink is refused, a
// final symlink is replaced, not followed); hard links must point inside;
// device nodes are made only by root; sizes and entry counts are bounded.
type extractor struct {
	root     *os.Root
	dir      string
	maxBytes int64 // bound on the regular files' total size
	maxFiles int64 // bound on the number of entries
	bytes    int64
	files    int64
	asRoot   bool
}

// layer applies one layer. With whiteouts, .wh. entries delete what lower
// layers wrote (OCI image spec); without, the tar is a plain filesystem.
func (x *extractor) layer(r io.Reader, whiteouts bool) error {
	tr := tar.NewReader(r)
	ours := map[string]bool{} // paths this layer wrote, kept by opaque whiteouts
	var opaque []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		name, err := cleanEntry(h.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue // the root itself
		}
		if x.files++; x.files > x.maxFiles {
			return fmt.Errorf("%w: more than %d entries", ErrUnsafeArchive, x.maxFiles)
		}
		if err := x.checkParents(name); err != nil {
			return err
		}
		base := path.Base(name)
		if whiteouts && strings.HasPrefix(base, whiteoutPrefix) {
			dir := path.Dir(name)
			if base == whiteoutOpaque {
				opaque = append(opaque, dir)
				continue
			}
			target := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
			if err := x.root.RemoveAll(target); err != nil {
				return fmt.Errorf("whiteout %s: %w", target, err)
			}
			continue
		}
		if err := x.entry(h, name, tr); err != nil {
			return err
		}
		for p := name; p != "."; p = path.Dir(p) {
			ours[p] = true
		}
	}
	for _, dir := range opaque {
		if err := x.clearLower(dir, ours); err != nil {
			return err
		}
	}
	return nil
}

// cleanEntry turns a tar entry name into a clean relative path, refusing
// names that climb out of the root. "" is the root itself.
func cleanEntry(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: entry name %q contains NUL", ErrUnsafeArchive, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: entry %q climbs out of the root (..)", ErrUnsafeArchive, name)
		}
	}
	c := path.Clean("/" + name)
	if c == "/" {
		return "", nil
	}
	return c[1:], nil
}

// checkParents refuses a path whose parent directories include a symlink.
func (x *extractor) checkParents(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		fi, err := x.root.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // created below as a directory
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: entry %q goes through the symlink %s", ErrUnsafeArchive, name, p)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: entry %q: %s is not a directory", ErrUnsafeArchive, name, p)
		}
	}
	return nil
}

// entry writes one tar entry at name.
func (x *extractor) entry(h *tar.Header, name string, r io.Reader) error {
	if err := x.root.MkdirAll(path.Dir(name), 0o755); err != nil && path.Dir(name) != "." {
		return fmt.Errorf("mkdir %s: %w", path.Dir(name), err)
	}
	mode := fs.FileMode(h.Mode).Perm() | modeBits(h.Mode)
	if h.Typeflag != tar.TypeDir {
		// Replace whatever is there; never write through a symlink.
		if fi, err := x.root.Lstat(name); err == nil && (!fi.IsDir() || h.Typeflag != tar.TypeDir) {
			if err := x.root.RemoveAll(name); err != nil {
				return fmt.Errorf("replace %s: %w", name, err)
			}
		}
	}
	var err error
	switch h.Typeflag {
	case tar.TypeDir:
		err = x.root.Mkdir(name, 0o755)
		if errors.Is(err, fs.ErrExist) {
			if fi, lerr := x.root.Lstat(name); lerr == nil && fi.IsDir() {
				err = nil
			}
		}
	case tar.TypeReg, tar.TypeRegA:
		err = x.regular(name, h.Size, r)
	case tar.TypeSymlink:
		err = x.root.Symlink(h.Linkname, name)
	case tar.TypeLink:
		err = x.hardlink(h.Linkname, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return x.special(h, name)
	default:
		return nil // pax headers are consumed by tar.Reader; others ignored
	}
	if err != nil {
		return fmt.Errorf("extract %s: %w", name, err)
	}
	return x.attrs(h, name, mode)
}

// modeBits maps the setuid/setgid/sticky bits of a tar mode to fs bits.
func modeBits(m int64) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

// regular writes a regular file, counting its bytes against the bound.
func (x *extractor) regular(name string, size int64, r io.Reader) error {
	if size < 0 || x.bytes+size > x.maxBytes {
		return fmt.Errorf("%w: %s makes the image larger than %d bytes", ErrUnsafeArchive, name, x.maxBytes)
	}
	x.bytes += size
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// hardlink links name to target, which must be an earlier entry inside
// the root and reached without symlinks.
func (x *extractor) hardlink(target, name string) error {
	t, err := cleanEntry(target)
	if err != nil || t == "" {
		return fmt.Errorf("%w: hard link %s -> %q leaves the root", ErrUnsafeArchive, name, target)
	}
	if err := x.checkParents(t); err != nil {
		return err
	}
	fi, err := x.root.Lstat(t)
	if err != nil {
		return fmt.Errorf("hard link %s -> %s: %w", name, t, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: hard link %s -> %s: target is not a regular file", ErrUnsafeArchive, name, t)
	}
	return x.root.Link(t, name)
}

// special makes device nodes (root only; skipped otherwise) and FIFOs.
func (x *extractor) special(h *tar.Header, name string) error {
	if h.Typeflag != tar.TypeFifo && !x.asRoot {
		return nil
	}
	mode := uint32(h.Mode & 0o7777)
	switch h.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	default:
		mode |= unix.S_IFIFO
	}
	// The parents were checked to hold no symlink, so the joined path
	// stays inside the root.
	p := x.dir + "/" + name
	if err := unix.Mknod(p, mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))); err != nil {
		return fmt.Errorf("mknod %s: %w", name, err)
	}
	if x.asRoot {
		return x.root.Lchown(name, h.Uid, h.Gid)
	}
	return nil
}

// attrs sets an entry's owner (root only), mode and times.
func (x *extractor) attrs(h *tar.Header, name string, mode fs.FileMode) error {
	if x.asRoot {
		if err := x.root.Lchown(name, h.Uid, h.Gid); err != nil {
			return fmt.Errorf("chown %s: %w", name, err)
		}
	}
	if h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink {
		return nil
	}
	if err := x.root.Chmod(name, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	if err := x.xattrs(h, name); err != nil {
		return err
	}
	return x.root.Chtimes(name, h.ModTime, h.ModTime)
}

// maxXattrBytes bounds one extended attribute's value (ext4 keeps at most
// a block's worth per inode).
const maxXattrBytes = 4096

// xattrs sets the entry's extended attributes (PAX SCHILY.xattr.*) in the
// namespaces ext4 holds: user., trusted., security. (file capabilities).
// Others are ignored, as are attributes the build directory's filesystem
// cannot hold. name's parents were checked: no symlink on the way.
func (x *extractor) xattrs(h *tar.Header, name string) error {
	for k, v := range h.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if !strings.HasPrefix(attr, "user.") && !strings.HasPrefix(attr, "trusted.") && !strings.HasPrefix(attr, "security.") {
			continue
		}
		if len(v) > maxXattrBytes {
			return fmt.Errorf("%w: %s: extended attribute %s is %d bytes, more than %d", ErrUnsafeArchive, name, attr, len(v), maxXattrBytes)
		}
		if !x.asRoot && !strings.HasPrefix(attr, "user.") {
			continue
		}
		err := unix.Lsetxattr(filepath.Join(x.dir, name), attr, []byte(v), 0)
		if err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("set %s on %s: %w", attr, name, err)
		}
	}
	return nil
}

// clearLower empties dir, recursively, of everything a lower layer put
// there (opaque whiteout), keeping what this layer wrote.
func (x *extractor) clearLower(dir string, ours map[string]bool) error {
	f, err := x.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opaque whiteout %s: %w", dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("opaque whiteout %s: %w", dir, err)
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if dir == "." {
			p = n
		}
		if ours[p] {
			if fi, err := x.root.Lstat(p); err == nil && fi.IsDir() {
				if err := x.clearLower(p, ours); err != nil {
					return err
				}
			}
			continue
		}
		if err := x.root.RemoveAll(p); err != nil {
			return fmt.Errorf("opaque whiteout %s: %w", p, err)
		}
	}
	return nil
}
