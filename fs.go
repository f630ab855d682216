package smolvm

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// FileInfo describes a guest file.
type FileInfo struct {
	// Name is the last path element.
	Name string `json:"name"`
	// Path is the absolute guest path.
	Path string `json:"path"`
	// Type is "file", "dir", "symlink", "fifo", "socket", "device",
	// "chardev" or "other".
	Type string `json:"type"`
	// Size is the length in bytes.
	Size int64 `json:"size"`
	// Mode holds the Unix permission bits, including setuid (04000),
	// setgid (02000) and sticky (01000).
	Mode uint32 `json:"mode"`
	// ModTime is the modification time.
	ModTime time.Time `json:"mod_time"`
	// SymlinkTarget is a symlink's target, as stored.
	SymlinkTarget string `json:"symlink_target,omitempty"`
}

// IsDir reports whether the entry is a directory.
func (fi FileInfo) IsDir() bool { return fi.Type == "dir" }

// FileMode returns Mode as an os.FileMode (permission and special bits).
func (fi FileInfo) FileMode() os.FileMode { return proto.ModeFromWire(fi.Mode) }

func fileInfoOf(fi agent.FileInfo) FileInfo {
	return FileInfo{Name: fi.Name, Path: fi.Path, Type: fi.Type, Size: fi.Size, Mode: proto.ModeToWire(fi.Mode),
		ModTime: fi.ModTime.UTC(), SymlinkTarget: fi.Target}
}

// Stat describes a guest path; a final symlink is described, not followed.
// A missing path fails with ErrNotFound, a relative one with ErrInvalidConfig.
func (vm *VM) Stat(ctx context.Context, guestPath string) (FileInfo, error) {
	if err := validateGuestPath("path", guestPath); err != nil {
		return FileInfo{}, wrapErr("stat", vm.id, ErrInvalidConfig, err)
	}
	var fi agent.FileInfo
	err := vm.agentCall(ctx, "stat", func(c *agent.Client) (err error) {
		fi, err = c.Stat(ctx, guestPath)
		return err
	})
	if err != nil {
		return FileInfo{}, err
	}
	return fileInfoOf(fi), nil
}

// Exists reports whether a guest path exists (as anything, including a
// dangling symlink).
func (vm *VM) Exists(ctx context.Context, guestPath string) (bool, error) {
	_, err := vm.Stat(ctx, guestPath)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// ListFilesOptions adjust List.
type ListFilesOptions struct {
	// Depth is how many levels to descend: 0 or 1 lists the directory's own
	// entries, 2 also their children's, and so on (at most 64). Symlinks to
	// directories are not followed.
	Depth int `json:"depth,omitempty"`
	// MaxEntries bounds the entries accepted from the guest; 0 means 1 Mi.
	// A directory with more fails.
	MaxEntries int `json:"max_entries,omitempty"`
}

// List returns the entries under a guest directory, parents before their
// children, sorted by name within a directory.
func (vm *VM) List(ctx context.Context, guestDir string, opts ListFilesOptions) ([]FileInfo, error) {
	var out []FileInfo
	err := vm.ListFunc(ctx, guestDir, opts, func(fi FileInfo) error { out = append(out, fi); return nil })
	return out, err
}

// ListFunc is List that passes each entry to fn as it arrives; an error
// from fn stops the listing and is returned.
func (vm *VM) ListFunc(ctx context.Context, guestDir string, opts ListFilesOptions, fn func(FileInfo) error) error {
	if err := validateGuestPath("path", guestDir); err != nil {
		return wrapErr("list", vm.id, ErrInvalidConfig, err)
	}
	if opts.Depth < 0 || opts.Depth > 64 {
		return wrapErr("list", vm.id, ErrInvalidConfig, configErr("depth", "", "must be between 0 and 64"))
	}
	return vm.agentCall(ctx, "list", func(c *agent.Client) error {
		return c.ListFunc(ctx, guestDir, agent.ListOptions{Depth: opts.Depth, MaxEntries: opts.MaxEntries},
			func(fi agent.FileInfo) error { return fn(fileInfoOf(fi)) })
	})
}

// MkdirAll creates a guest directory and its missing parents with mode (0
// means 0755); an existing directory is not an error.
func (vm *VM) MkdirAll(ctx context.Context, guestDir string, mode os.FileMode) error {
	if err := validateGuestPath("path", guestDir); err != nil {
		return wrapErr("mkdir", vm.id, ErrInvalidConfig, err)
	}
	return vm.agentCall(ctx, "mkdir", func(c *agent.Client) error { return c.Mkdir(ctx, guestDir, mode, true) })
}

// Move renames a guest path, replacing an existing target as rename(2) does.
func (vm *VM) Move(ctx context.Context, from, to string) error {
	if err := validateGuestPath("from", from); err != nil {
		return wrapErr("move", vm.id, ErrInvalidConfig, err)
	}
	if err := validateGuestPath("to", to); err != nil {
		return wrapErr("move", vm.id, ErrInvalidConfig, err)
	}
	return vm.agentCall(ctx, "move", func(c *agent.Client) error { return c.Move(ctx, from, to, false) })
}

// Remove deletes a guest file or empty directory; a missing path fails
// with ErrNotFound.
func (vm *VM) Remove(ctx context.Context, guestPath string) error {
	return vm.remove(ctx, guestPath, false)
}

// RemoveAll deletes a guest path with everything under it; a missing path
// is not an error.
func (vm *VM) RemoveAll(ctx context.Context, guestPath string) error {
	return vm.remove(ctx, guestPath, true)
}

func (vm *VM) remove(ctx context.Context, guestPath string, recursive bool) error {
	if err := validateGuestPath("path", guestPath); err != nil {
		return wrapErr("remove", vm.id, ErrInvalidConfig, err)
	}
	if guestPath == "/" {
		return wrapErr("remove", vm.id, ErrInvalidConfig, configErr("path", guestPath, "the root directory cannot be removed"))
	}
	return vm.agentCall(ctx, "remove", func(c *agent.Client) error { return c.Remove(ctx, guestPath, recursive) })
}

// DefaultMaxReadFile is ReadFile's bound when its caller gives none.
const DefaultMaxReadFile = agent.DefaultMaxReadFile

// ReadFile returns the whole content of a guest file of at most maxBytes
// (0 means DefaultMaxReadFile, 16 MiB); a larger file fails without more
// than the bound being buffered.
func (vm *VM) ReadFile(ctx context.Context, guestPath string, maxBytes int64) ([]byte, error) {
	if err := validateGuestPath("path", guestPath); err != nil {
		return nil, wrapErr("read file", vm.id, ErrInvalidConfig, err)
	}
	var b []byte
	err := vm.agentCall(ctx, "read file", func(c *agent.Client) (err error) {
		b, err = c.ReadFile(ctx, guestPath, maxBytes)
		return err
	})
	return b, err
}

// WriteFile replaces a guest file with data atomically, creating missing
// parent directories; mode 0 means 0644.
func (vm *VM) WriteFile(ctx context.Context, guestPath string, data []byte, mode os.FileMode) error {
	if err := validateGuestPath("path", guestPath); err != nil {
		return wrapErr("write file", vm.id, ErrInvalidConfig, err)
	}
	if mode == 0 {
		mode = 0o644
	}
	return vm.agentCall(ctx, "write file", func(c *agent.Client) error { return c.WriteFile(ctx, guestPath, data, mode) })
}

// WatchOptions adjust Watch.
type WatchOptions struct {
	// Recursive also watches subdirectories, including new ones.
	Recursive bool `json:"recursive,omitempty"`
}

// FsEvent is one guest file-system change.
type FsEvent struct {
	// Op is "created", "modified", "removed", "renamed" or "overflow" (some
	// events were lost; see Dropped).
	Op string `json:"op"`
	// Path is the absolute path concerned (a rename's new name).
	Path string `json:"path"`
	// OldPath is a rename's old name, when it was inside the watch.
	OldPath string `json:"old_path,omitempty"`
	// Dir reports whether Path is a directory.
	Dir bool `json:"dir,omitempty"`
	// Dropped counts the events lost before an overflow event.
	Dropped int `json:"dropped,omitempty"`
}

// Watcher streams the changes under a guest path. It holds the VM's agent
// channel until closed.
type Watcher struct {
	vm      *VM
	w       *agent.Watcher
	release func()
	closed  chan struct{}
}

// Watch starts watching a guest path (inotify in the guest) and returns
// once the watch is in place: changes made after it returns are reported.
// ctx bounds the setup; Close ends the watch.
func (vm *VM) Watch(ctx context.Context, guestPath string, opts WatchOptions) (*Watcher, error) {
	if err := validateGuestPath("path", guestPath); err != nil {
		return nil, wrapErr("watch", vm.id, ErrInvalidConfig, err)
	}
	c, release, err := vm.acquire(ctx)
	if err != nil {
		return nil, wrapErr("watch", vm.id, ErrCommandUnavailable, err)
	}
	w, err := c.Watch(ctx, guestPath, agent.WatchOptions{Recursive: opts.Recursive})
	if err != nil {
		release()
		return nil, vm.agentErr(ctx, "watch", err)
	}
	return &Watcher{vm: vm, w: w, release: release, closed: make(chan struct{})}, nil
}

// Next returns the next change, waiting for one until ctx ends. After the
// watch ended (Close, or the guest path was removed) it returns an error
// wrapping io.EOF.
func (w *Watcher) Next(ctx context.Context) (FsEvent, error) {
	select {
	case <-w.closed:
		return FsEvent{}, wrapErr("watch", w.vm.id, ErrState, io.EOF)
	default:
	}
	ev, err := w.w.Next(ctx)
	if err != nil {
		return FsEvent{}, w.vm.agentErr(ctx, "watch", err)
	}
	return FsEvent{Op: ev.Op, Path: ev.Path, OldPath: ev.OldPath, Dir: ev.Dir, Dropped: ev.Dropped}, nil
}

// Close ends the watch and releases the agent channel.
func (w *Watcher) Close() error {
	select {
	case <-w.closed:
		return nil
	default:
	}
	close(w.closed)
	w.w.Close()
	w.release()
	return nil
}

// TransferStats count a directory transfer.
type TransferStats struct {
	// Entries is the number of files, directories and links transferred.
	Entries int `json:"entries"`
	// Bytes is the total size of the regular files' content.
	Bytes int64 `json:"bytes"`
	// Skipped counts entries of types that are not transferred (devices,
	// fifos, sockets).
	Skipped int `json:"skipped"`
}

func statsOf(s agent.TarStats) TransferStats {
	return TransferStats{Entries: s.Entries, Bytes: s.Bytes, Skipped: s.Skipped}
}

// UploadDir copies the host directory hostDir into the guest directory
// guestDir (created with its parents) as a tar stream: modes, mtimes and
// symlinks (as links) are kept; no entry may land outside guestDir.
func (vm *VM) UploadDir(ctx context.Context, hostDir, guestDir string) (TransferStats, error) {
	if err := validateGuestPath("guest_path", guestDir); err != nil {
		return TransferStats{}, wrapErr("upload", vm.id, ErrInvalidConfig, err)
	}
	fi, err := os.Stat(hostDir)
	if err != nil {
		return TransferStats{}, wrapErr("upload", vm.id, ErrNotFound, err)
	}
	if !fi.IsDir() {
		return TransferStats{}, wrapErr("upload", vm.id, ErrInvalidConfig, configErr("host_path", hostDir, "is not a directory"))
	}
	var st agent.TarStats
	err = vm.agentCall(ctx, "upload", func(c *agent.Client) (err error) {
		st, err = c.UploadDir(ctx, hostDir, guestDir)
		return err
	})
	return statsOf(st), err
}

// DownloadDir copies the guest directory guestDir into the host directory
// hostDir. The tar stream from the guest is untrusted: absolute names,
// "..", writes through symlinks and special bits are refused or dropped,
// and its size is bounded. A missing hostDir is created only on success;
// an existing one is merged into.
func (vm *VM) DownloadDir(ctx context.Context, guestDir, hostDir string) (TransferStats, error) {
	if err := validateGuestPath("guest_path", guestDir); err != nil {
		return TransferStats{}, wrapErr("download", vm.id, ErrInvalidConfig, err)
	}
	var st agent.TarStats
	err := vm.agentCall(ctx, "download", func(c *agent.Client) (err error) {
		st, err = c.DownloadDir(ctx, guestDir, hostDir, agent.TarLimits{})
		return err
	})
	return statsOf(st), err
}

// UploadTar extracts a tar stream into the guest directory guestDir
// (created with its parents); the guest refuses entries that would land
// outside it.
func (vm *VM) UploadTar(ctx context.Context, guestDir string, r io.Reader) (TransferStats, error) {
	if err := validateGuestPath("guest_path", guestDir); err != nil {
		return TransferStats{}, wrapErr("upload", vm.id, ErrInvalidConfig, err)
	}
	var st agent.TarStats
	err := vm.agentCall(ctx, "upload", func(c *agent.Client) (err error) {
		st, err = c.UploadTar(ctx, guestDir, r)
		return err
	})
	return statsOf(st), err
}

// DownloadTar streams the guest directory guestDir to w as a tar archive.
// The bytes come from the guest: extract them with ExtractTar, never with
// a tool that trusts its input. w is written unbounded: bound it yourself.
func (vm *VM) DownloadTar(ctx context.Context, guestDir string, w io.Writer) (TransferStats, error) {
	if err := validateGuestPath("guest_path", guestDir); err != nil {
		return TransferStats{}, wrapErr("download", vm.id, ErrInvalidConfig, err)
	}
	var st agent.TarStats
	err := vm.agentCall(ctx, "download", func(c *agent.Client) (err error) {
		st, err = c.DownloadTar(ctx, guestDir, w)
		return err
	})
	return statsOf(st), err
}

// ExtractTar unpacks an untrusted tar stream (one from DownloadTar) into
// the existing host directory dir, refusing absolute names, "..", and
// writes through symlinks, dropping special mode bits and bounding entries
// and bytes.
func ExtractTar(ctx context.Context, r io.Reader, dir string) (TransferStats, error) {
	st, err := agent.ExtractTar(ctx, r, dir, agent.TarLimits{})
	return statsOf(st), wrapErr("extract", "", ErrInvalidConfig, err)
}

// WaitPort returns once something in the guest listens on TCP port (IPv4
// or IPv6). If ctx ends first it fails with ErrTimeout (deadline) and the
// guest stops polling.
func (vm *VM) WaitPort(ctx context.Context, port int) error {
	if port < 1 || port > 65535 {
		return wrapErr("port wait", vm.id, ErrInvalidConfig, configErr("guest_port", "", "must be between 1 and 65535"))
	}
	return vm.agentCall(ctx, "port wait", func(c *agent.Client) error { return c.WaitPort(ctx, port) })
}
