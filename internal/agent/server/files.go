package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// guestPath validates an absolute guest path and returns it cleaned.
func guestPath(p string) (string, error) {
	if p == "" || !filepath.IsAbs(p) {
		return "", fmt.Errorf("%w: guest path %q is not absolute", proto.ErrInvalidArgument, p)
	}
	return filepath.Clean(p), nil
}

// upload writes the stream's ChanIn data to a file (proto.MethodUpload). The
// data goes to a temporary file in the target's directory, which is synced
// and renamed over the target only once complete.
func (s *Server) upload(st *stream, raw json.RawMessage) (any, error) {
	var a proto.UploadArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("%w: upload: %s is a directory", proto.ErrInvalidArgument, path)
	}
	if a.MkdirParents {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
	}
	tmp, err := createTemp(path)
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	defer tmp.Close()
	for {
		c, err := st.in.Pop(st.ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("upload %s: %w", path, err)
		}
		if _, err := tmp.Write(c.Data); err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		st.grant(len(c.Data))
	}
	if err := commitTemp(tmp, path, proto.ModeFromWire(a.Mode)); err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	return nil, nil
}

// createTemp creates a hidden temporary file next to path.
func createTemp(path string) (*os.File, error) {
	return os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".smolvm-*")
}

// commitTemp sets tmp's mode, syncs and closes it, renames it to path and
// syncs the directory, so path holds either the old or the new content.
func commitTemp(tmp *os.File, path string, mode os.FileMode) error {
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// writeFileAtomic replaces path with data, like an upload.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := createTemp(path)
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	return commitTemp(tmp, path, mode)
}

// download streams a file on ChanOut (proto.MethodDownload).
func (s *Server) download(st *stream, raw json.RawMessage) (any, error) {
	var a proto.DownloadArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("%w: download: %s is a directory", proto.ErrInvalidArgument, path)
	}
	var size int64
	buf := make([]byte, proto.ChunkSize)
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			if err := st.send(proto.ChanOut, buf[:n]); err != nil {
				return nil, fmt.Errorf("download %s: %w", path, err)
			}
			size += int64(n)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("download: %w", rerr)
		}
	}
	return proto.DownloadResult{Mode: proto.ModeToWire(fi.Mode()), Size: size}, nil
}
