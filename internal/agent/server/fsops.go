package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/guest/fswatch"
)

// maxListDepth bounds FsListArgs.Depth.
const maxListDepth = 64

// fileInfo describes path (not following a final symlink).
func fileInfo(path string, fi fs.FileInfo) proto.FileInfo {
	info := proto.FileInfo{
		Name: fi.Name(), Path: path, Size: fi.Size(),
		Mode: proto.ModeToWire(fi.Mode()), MtimeUnixNano: fi.ModTime().UnixNano(),
	}
	if path == "/" {
		info.Name = "/"
	}
	switch t := fi.Mode().Type(); {
	case t == 0:
		info.Type = proto.FileRegular
	case t&fs.ModeDir != 0:
		info.Type = proto.FileDir
	case t&fs.ModeSymlink != 0:
		info.Type = proto.FileSymlink
		info.Target, _ = os.Readlink(path)
	case t&fs.ModeNamedPipe != 0:
		info.Type = proto.FileFIFO
	case t&fs.ModeSocket != 0:
		info.Type = proto.FileSocket
	case t&fs.ModeCharDevice != 0:
		info.Type = proto.FileCharDev
	case t&fs.ModeDevice != 0:
		info.Type = proto.FileDevice
	default:
		info.Type = proto.FileOther
	}
	return info
}

// fsStat describes one path (proto.MethodFsStat).
func (s *Server) fsStat(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.PathArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	return fileInfo(path, fi), nil
}

// fsList streams the entries under a directory (proto.MethodFsList).
func (s *Server) fsList(st *stream, raw json.RawMessage) (any, error) {
	var a proto.FsListArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	depth := max(a.Depth, 1)
	if depth > maxListDepth {
		return nil, fmt.Errorf("%w: list: depth %d exceeds %d", proto.ErrInvalidArgument, a.Depth, maxListDepth)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: list: %s is not a directory", proto.ErrInvalidArgument, path)
	}
	lw := newLineWriter(st)
	var res proto.FsListResult
	if err := listDir(st, lw, path, depth, &res, true); err != nil {
		return nil, err
	}
	return res, lw.flush()
}

// listDir sends dir's entries and, while depth allows, those of its
// subdirectories (never through symlinks). An unreadable subdirectory is
// counted, not fatal; an unreadable top directory is an error.
func listDir(st *stream, lw *lineWriter, dir string, depth int, res *proto.FsListResult, top bool) error {
	if err := st.ctx.Err(); err != nil {
		return fmt.Errorf("%w: list", proto.ErrCanceled)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if top {
			return fmt.Errorf("list: %w", err)
		}
		res.Errors++
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		if err := lw.encode(fileInfo(p, fi)); err != nil {
			return err
		}
		res.Entries++
		if depth > 1 && e.IsDir() {
			if err := listDir(st, lw, p, depth-1, res, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// fsMkdir creates a directory (proto.MethodFsMkdir).
func (s *Server) fsMkdir(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.FsMkdirArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("mkdir: %w", err)
	}
	mode := proto.ModeFromWire(a.Mode)
	if a.Mode == 0 {
		mode = 0o755
	}
	if a.Parents {
		err = os.MkdirAll(path, mode)
	} else {
		err = os.Mkdir(path, mode)
	}
	if err != nil {
		return nil, fmt.Errorf("mkdir: %w", err)
	}
	return nil, nil
}

// fsMove renames a path (proto.MethodFsMove).
func (s *Server) fsMove(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.FsMoveArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	from, err := guestPath(a.From)
	if err != nil {
		return nil, fmt.Errorf("move: from: %w", err)
	}
	to, err := guestPath(a.To)
	if err != nil {
		return nil, fmt.Errorf("move: to: %w", err)
	}
	if from == "/" || to == "/" {
		return nil, fmt.Errorf("%w: move: cannot move / or onto /", proto.ErrInvalidArgument)
	}
	var flags uint
	if a.NoReplace {
		flags = unix.RENAME_NOREPLACE
	}
	if err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, flags); err != nil {
		return nil, fmt.Errorf("move %s to %s: %w", from, to, err)
	}
	return nil, nil
}

// fsRemove removes a path (proto.MethodFsRemove).
func (s *Server) fsRemove(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.FsRemoveArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("remove: %w", err)
	}
	if path == "/" {
		return nil, fmt.Errorf("%w: remove: refusing to remove /", proto.ErrInvalidArgument)
	}
	if a.Recursive {
		err = os.RemoveAll(path)
	} else {
		err = os.Remove(path)
	}
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && errors.Is(err, unix.ENOTEMPTY) {
			return nil, fmt.Errorf("%w: remove: directory %s is not empty (use recursive)", proto.ErrInvalidArgument, path)
		}
		return nil, fmt.Errorf("remove: %w", err)
	}
	return nil, nil
}

// fsWatch streams file-system events (proto.MethodFsWatch) until canceled.
func (s *Server) fsWatch(st *stream, raw json.RawMessage) (any, error) {
	var a proto.FsWatchArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	if _, err := os.Lstat(path); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w, err := fswatch.New(path, fswatch.Options{Recursive: a.Recursive})
	if err != nil {
		return nil, fmt.Errorf("%w: watch: %v", proto.KindOf(errors.Unwrap(err)), err)
	}
	defer w.Close()
	lw := newLineWriter(st)
	if err := lw.encode(proto.FsEvent{Op: proto.EventWatching, Path: path}); err != nil {
		return nil, err
	}
	for {
		if err := lw.flush(); err != nil {
			return nil, err
		}
		ev, err := w.Next(st.ctx)
		if err != nil {
			if st.ctx.Err() != nil {
				return nil, fmt.Errorf("%w: watch", proto.ErrCanceled)
			}
			return nil, fmt.Errorf("watch: %w", err)
		}
		for {
			wev := proto.FsEvent{Op: ev.Op.String(), Path: ev.Path, OldPath: ev.OldPath, Dir: ev.Dir, Dropped: ev.Dropped}
			if err := lw.encode(wev); err != nil {
				return nil, err
			}
			if w.Pending() == 0 {
				break
			}
			if ev, err = w.Next(st.ctx); err != nil {
				break
			}
		}
	}
}
