// Package dirtar moves directory trees as tar streams, for directory
// uploads and downloads over the agent: Write archives a directory (modes,
// mtimes, symlinks as links), and Extract unpacks an untrusted archive into
// a directory without letting any entry escape it.
//
// Extract refuses names that are absolute or contain "..", refuses to write
// through a symlink (a symlink may be created, but no later entry may pass
// through it or replace its target), and bounds the number of entries and
// the bytes written. It works through an os.Root, so even a tree changed
// concurrently cannot lead it outside the target. Both sides of the agent
// use it: the guest when extracting an upload, the host when extracting a
// download. It does not import package net.
package dirtar

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Stats count what Write archived or Extract unpacked.
type Stats struct {
	// Entries is the number of tar entries processed.
	Entries int
	// Bytes is the total size of regular file content.
	Bytes int64
	// Skipped counts entries left out: devices, fifos, sockets, hard links.
	Skipped int
}

// Write archives the tree under dir to w: directories, regular files and
// symlinks (as links, never followed), with permission bits and mtimes.
// Other file types are skipped and counted. Names are relative to dir.
func Write(ctx context.Context, w io.Writer, dir string) (Stats, error) {
	var st Stats
	bw := bufio.NewWriterSize(w, proto.ChunkSize)
	tw := newTarWriter(bw)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		return writeEntry(tw, p, filepath.ToSlash(rel), &st)
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return st, fmt.Errorf("tar %s: %w", dir, err)
	}
	return st, nil
}

// writeEntry archives one file.
func writeEntry(tw *tarWriter, p, name string, st *Stats) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	link := ""
	switch fi.Mode().Type() {
	case 0, fs.ModeDir:
	case fs.ModeSymlink:
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	default:
		st.Skipped++
		return nil
	}
	hdr := &header{Name: name, Linkname: link, Mode: int64(proto.ModeToWire(fi.Mode())), ModTime: fi.ModTime()}
	switch {
	case fi.IsDir():
		hdr.Typeflag = typeDir
		hdr.Name += "/"
	case link != "":
		hdr.Typeflag = typeSymlink
	default:
		hdr.Typeflag = typeReg
		hdr.Size = fi.Size()
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	st.Entries++
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.OpenFile(p, os.O_RDONLY|noFollow, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.CopyN(tw, f, hdr.Size)
	st.Bytes += n
	if err != nil {
		return fmt.Errorf("%s changed while archived: %w", p, err)
	}
	return nil
}

// Limits bound an extraction. Zero fields mean no limit.
type Limits struct {
	// MaxEntries bounds the number of entries.
	MaxEntries int
	// MaxBytes bounds the total size of regular file content.
	MaxBytes int64
}

// Options adjust an extraction.
type Options struct {
	// KeepSpecialBits keeps the mode as sent. Off, the mode goes through
	// SafeMode: a host extracting a guest's archive must not create setuid
	// or group/other-writable files.
	KeepSpecialBits bool
}

// Extract unpacks the tar stream r into the existing directory dir. See the
// package comment for what it refuses; a refused archive fails with
// proto.ErrInvalidArgument, a limit with proto.ErrResourceExhausted. Entries
// extracted before a failure stay in place.
func Extract(ctx context.Context, r io.Reader, dir string, lim Limits, opts Options) (Stats, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Stats{}, fmt.Errorf("extract: %w", err)
	}
	defer root.Close()
	x := &extractor{root: root, lim: lim, opts: opts}
	tr := newTarReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return x.st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return x.st, fmt.Errorf("extract: %w", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			return x.st, fmt.Errorf("extract %q: %w", hdr.Name, err)
		}
	}
	x.finish()
	return x.st, nil
}

// extractor is the state of one Extract.
type extractor struct {
	root *os.Root
	lim  Limits
	opts Options
	st   Stats
	dirs []dirTime // directory mtimes, applied at the end
}

type dirTime struct {
	name  string
	mtime time.Time
}

// cleanName validates an entry name and returns it relative and clean.
func cleanName(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: absolute or empty name", proto.ErrInvalidArgument)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: name contains \"..\"", proto.ErrInvalidArgument)
		}
	}
	return path.Clean(name), nil
}

// mode returns the permission bits to apply. Without KeepSpecialBits (the
// host extracting what a guest sent) the mode is at most 0755 for
// directories and executables and 0644 otherwise: no setuid, setgid or
// sticky bit and no group or other write.
func (x *extractor) mode(hdr *header) fs.FileMode {
	m := proto.ModeFromWire(uint32(hdr.Mode & 0o7777))
	if x.opts.KeepSpecialBits {
		return m
	}
	return SafeMode(m)
}

// SafeMode returns m without setuid, setgid and sticky bits and without
// group or other write permission: what the host applies to files that
// come from a guest.
func SafeMode(m fs.FileMode) fs.FileMode { return m.Perm() &^ 0o022 }

// entry extracts one entry.
func (x *extractor) entry(hdr *header, r io.Reader) error {
	x.st.Entries++
	if x.lim.MaxEntries > 0 && x.st.Entries > x.lim.MaxEntries {
		return fmt.Errorf("%w: more than %d entries", proto.ErrResourceExhausted, x.lim.MaxEntries)
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return nil // the target directory itself
	}
	if err := x.parents(name); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case typeDir:
		return x.dir(name, hdr)
	case typeReg, typeRegA:
		return x.file(name, hdr, r)
	case typeSymlink:
		if err := x.clear(name, false); err != nil {
			return err
		}
		return x.root.Symlink(hdr.Linkname, name)
	default:
		x.st.Skipped++
		return nil
	}
}

// parents makes sure every parent of name is a real directory (created
// if missing), never a symlink.
func (x *extractor) parents(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		fi, err := x.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := x.root.Mkdir(p, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case fi.Mode().Type() == fs.ModeSymlink:
			return fmt.Errorf("%w: refusing to write through symlink %q", proto.ErrInvalidArgument, p)
		case !fi.IsDir():
			return fmt.Errorf("%w: parent %q is not a directory", proto.ErrInvalidArgument, p)
		}
	}
	return nil
}

// clear removes whatever non-directory is at name, so a new entry never
// writes through an existing symlink. An existing directory is an error
// unless keepDir.
func (x *extractor) clear(name string, keepDir bool) error {
	fi, err := x.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if keepDir {
			return nil
		}
		return fmt.Errorf("%w: a directory is in the way", proto.ErrInvalidArgument)
	}
	return x.root.Remove(name)
}

// dir creates (or keeps) a directory.
func (x *extractor) dir(name string, hdr *header) error {
	if err := x.clear(name, true); err != nil {
		return err
	}
	if err := x.root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := x.root.Chmod(name, x.mode(hdr)); err != nil {
		return err
	}
	x.dirs = append(x.dirs, dirTime{name, hdr.ModTime})
	return nil
}

// file writes a regular file, created afresh (never through a link).
func (x *extractor) file(name string, hdr *header, r io.Reader) error {
	if hdr.Size < 0 || (x.lim.MaxBytes > 0 && x.st.Bytes+hdr.Size > x.lim.MaxBytes) {
		return fmt.Errorf("%w: content exceeds %d bytes", proto.ErrResourceExhausted, x.lim.MaxBytes)
	}
	if err := x.clear(name, false); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, 0o600)
	if err != nil {
		return err
	}
	n, err := io.CopyN(f, r, hdr.Size)
	x.st.Bytes += n
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := x.root.Chmod(name, x.mode(hdr)); err != nil {
		return err
	}
	return x.root.Chtimes(name, hdr.ModTime, hdr.ModTime)
}

// finish applies directory mtimes, deepest last-created first, after their
// content is written.
func (x *extractor) finish() {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		_ = x.root.Chtimes(d.name, d.mtime, d.mtime)
	}
}
