package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// FileInfo describes a guest file.
type FileInfo struct {
	// Name is the last path element.
	Name string
	// Path is the absolute guest path.
	Path string
	// Type is "file", "dir", "symlink", "fifo", "socket", "device",
	// "chardev" or "other" (the proto.File* constants).
	Type string
	// Size is the length in bytes.
	Size int64
	// Mode holds the permission bits, including setuid, setgid and sticky.
	Mode os.FileMode
	// ModTime is the modification time.
	ModTime time.Time
	// Target is a symlink's target, as stored.
	Target string
}

func fileInfoFrom(fi proto.FileInfo) FileInfo {
	return FileInfo{
		Name: fi.Name, Path: fi.Path, Type: fi.Type, Size: fi.Size,
		Mode: proto.ModeFromWire(fi.Mode), ModTime: time.Unix(0, fi.MtimeUnixNano), Target: fi.Target,
	}
}

// Stat describes the guest path (a final symlink is described, not
// followed). A missing path fails with proto.ErrNotFound; a relative one
// with proto.ErrInvalidArgument.
func (c *Client) Stat(ctx context.Context, guestPath string) (FileInfo, error) {
	var fi proto.FileInfo
	if err := c.roundTrip(ctx, proto.MethodFsStat, proto.PathArgs{Path: guestPath}, &fi); err != nil {
		return FileInfo{}, err
	}
	return fileInfoFrom(fi), nil
}

// Exists reports whether the guest path exists (as anything, including a
// dangling symlink).
func (c *Client) Exists(ctx context.Context, guestPath string) (bool, error) {
	_, err := c.Stat(ctx, guestPath)
	if errors.Is(err, proto.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// ListOptions adjust List.
type ListOptions struct {
	// Depth is how many levels to descend: 0 or 1 lists the directory's own
	// entries, 2 also their children's, and so on (at most 64). Symlinks to
	// directories are not followed.
	Depth int
	// MaxEntries bounds the entries accepted from the guest; 0 means
	// DefaultMaxListEntries. More fail with proto.ErrResourceExhausted.
	MaxEntries int
}

// DefaultMaxListEntries is List's default bound on entries.
const DefaultMaxListEntries = 1 << 20

// List returns the entries under a guest directory, parents before their
// children, in directory order sorted by name.
func (c *Client) List(ctx context.Context, guestDir string, opts ListOptions) ([]FileInfo, error) {
	var out []FileInfo
	err := c.ListFunc(ctx, guestDir, opts, func(fi FileInfo) error { out = append(out, fi); return nil })
	return out, err
}

// ListFunc is List that passes each entry to fn as it arrives instead of
// collecting them; an error from fn stops the listing and is returned.
func (c *Client) ListFunc(ctx context.Context, guestDir string, opts ListOptions, fn func(FileInfo) error) error {
	maxEntries := opts.MaxEntries
	if maxEntries <= 0 {
		maxEntries = DefaultMaxListEntries
	}
	cl, err := c.start(ctx, proto.MethodFsList, proto.FsListArgs{Path: guestDir, Depth: opts.Depth})
	if err != nil {
		return fmt.Errorf("agent list %s: %w", guestDir, err)
	}
	err = eachLine(ctx, c, cl, maxEntries, func(fi proto.FileInfo) error { return fn(fileInfoFrom(fi)) }, nil)
	if err != nil {
		return fmt.Errorf("agent list %s: %w", guestDir, err)
	}
	return nil
}

// Mkdir creates a guest directory with mode (0 means 0755). With parents,
// missing parents are created and an existing directory is not an error
// (mkdir -p).
func (c *Client) Mkdir(ctx context.Context, guestDir string, mode os.FileMode, parents bool) error {
	return c.roundTrip(ctx, proto.MethodFsMkdir, proto.FsMkdirArgs{Path: guestDir, Mode: proto.ModeToWire(mode), Parents: parents}, nil)
}

// Move renames a guest path. With noReplace, an existing target fails with
// proto.ErrAlreadyExists; otherwise it is replaced (as rename(2) does).
func (c *Client) Move(ctx context.Context, from, to string, noReplace bool) error {
	return c.roundTrip(ctx, proto.MethodFsMove, proto.FsMoveArgs{From: from, To: to, NoReplace: noReplace}, nil)
}

// Remove deletes a guest path. With recursive, a directory is removed with
// its content and a missing path is not an error; without, a non-empty
// directory fails with proto.ErrInvalidArgument.
func (c *Client) Remove(ctx context.Context, guestPath string, recursive bool) error {
	return c.roundTrip(ctx, proto.MethodFsRemove, proto.FsRemoveArgs{Path: guestPath, Recursive: recursive}, nil)
}

// DefaultMaxReadFile is ReadFile's default bound.
const DefaultMaxReadFile = 16 << 20

// ReadFile returns the content of a small guest file, at most maxBytes
// (0 means DefaultMaxReadFile); a larger file fails with
// proto.ErrResourceExhausted once the bound is passed, without buffering
// more.
func (c *Client) ReadFile(ctx context.Context, guestPath string, maxBytes int64) ([]byte, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxReadFile
	}
	var buf bytes.Buffer
	w := &boundedBuffer{buf: &buf, max: maxBytes}
	if _, err := c.Download(ctx, guestPath, w); err != nil {
		if w.over {
			return nil, fmt.Errorf("agent read %s: %w: file larger than %d bytes", guestPath, proto.ErrResourceExhausted, maxBytes)
		}
		return nil, err
	}
	return buf.Bytes(), nil
}

// boundedBuffer fails a write that would pass max bytes.
type boundedBuffer struct {
	buf  *bytes.Buffer
	max  int64
	over bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if int64(b.buf.Len()+len(p)) > b.max {
		b.over = true
		return 0, proto.ErrResourceExhausted
	}
	return b.buf.Write(p)
}

// WriteFile replaces a guest file with data atomically (see Upload),
// creating missing parent directories.
func (c *Client) WriteFile(ctx context.Context, guestPath string, data []byte, mode os.FileMode) error {
	return c.Upload(ctx, guestPath, bytes.NewReader(data), mode, true)
}

// WatchOptions adjust Watch.
type WatchOptions struct {
	// Recursive also watches subdirectories, including new ones.
	Recursive bool
}

// FsEvent is one guest file-system change.
type FsEvent struct {
	// Op is "created", "modified", "removed", "renamed" or "overflow" (the
	// proto.Event* constants).
	Op string
	// Path is the absolute path concerned (a rename's new name).
	Path string
	// OldPath is a rename's old name, when it was inside the watch.
	OldPath string
	// Dir reports whether Path is a directory.
	Dir bool
	// Dropped counts the events lost before an overflow event.
	Dropped int
}

// Watcher streams the changes under a guest path.
type Watcher struct {
	c  *Client
	cl *call
	lr *lineReader
}

// Watch starts watching a guest path with inotify and returns once the
// watch is in place, so changes made after it returns are reported. The
// guest queue is bounded: a consumer that falls behind sees an "overflow"
// event counting what was lost. ctx bounds the setup only.
func (c *Client) Watch(ctx context.Context, guestPath string, opts WatchOptions) (*Watcher, error) {
	cl, err := c.start(ctx, proto.MethodFsWatch, proto.FsWatchArgs{Path: guestPath, Recursive: opts.Recursive})
	if err != nil {
		return nil, fmt.Errorf("agent watch %s: %w", guestPath, err)
	}
	w := &Watcher{c: c, cl: cl, lr: &lineReader{c: c, cl: cl}}
	ev, err := w.next(ctx)
	if err == nil && ev.Op != proto.EventWatching {
		err = fmt.Errorf("%w: watch began with %q", proto.ErrProtocol, ev.Op)
	}
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("agent watch %s: %w", guestPath, err)
	}
	return w, nil
}

// Next returns the next change, waiting for one.
func (w *Watcher) Next(ctx context.Context) (FsEvent, error) {
	ev, err := w.next(ctx)
	if err != nil {
		return FsEvent{}, fmt.Errorf("agent watch: %w", err)
	}
	return ev, nil
}

func (w *Watcher) next(ctx context.Context) (FsEvent, error) {
	line, err := w.lr.next(ctx)
	if err != nil {
		if isEOF(err) {
			// The watch ended on the guest side: report why.
			if werr := w.c.wait(ctx, w.cl, nil); werr != nil {
				return FsEvent{}, werr
			}
		}
		return FsEvent{}, err
	}
	var ev proto.FsEvent
	if err := jsonUnmarshal(line, &ev); err != nil {
		return FsEvent{}, fmt.Errorf("%w: bad event from the guest: %v", proto.ErrProtocol, err)
	}
	return FsEvent{Op: ev.Op, Path: ev.Path, OldPath: ev.OldPath, Dir: ev.Dir, Dropped: ev.Dropped}, nil
}

// Close stops the watch.
func (w *Watcher) Close() error {
	w.c.cancel(w.cl)
	return nil
}
