package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/smolvm-go/smolvm/internal/agent/dirtar"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// dirUpload extracts the tar stream on ChanIn into a directory
// (proto.MethodDirUpload). Entries cannot escape the directory; setuid and
// similar bits are kept, since the host is trusted.
func (s *Server) dirUpload(st *stream, raw json.RawMessage) (any, error) {
	var a proto.DirArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("dir upload: %w", err)
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, fmt.Errorf("dir upload: %w", err)
	}
	in := &inboxReader{st: st}
	stats, err := dirtar.Extract(st.ctx, in, path, dirtar.Limits{}, dirtar.Options{KeepSpecialBits: true})
	if err != nil {
		return nil, fmt.Errorf("dir upload %s: %w", path, err)
	}
	// Consume the rest (tar padding after the end blocks) until EOF.
	_, _ = io.Copy(io.Discard, in)
	return proto.TarResult{Entries: stats.Entries, Bytes: stats.Bytes, Skipped: stats.Skipped}, nil
}

// dirDownload streams a directory as a tar on ChanOut
// (proto.MethodDirDownload).
func (s *Server) dirDownload(st *stream, raw json.RawMessage) (any, error) {
	var a proto.DirArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	path, err := guestPath(a.Path)
	if err != nil {
		return nil, fmt.Errorf("dir download: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("dir download: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: dir download: %s is not a directory", proto.ErrInvalidArgument, path)
	}
	stats, err := dirtar.Write(st.ctx, streamWriter{st: st, ch: proto.ChanOut}, path)
	if err != nil {
		return nil, fmt.Errorf("dir download: %w", err)
	}
	return proto.TarResult{Entries: stats.Entries, Bytes: stats.Bytes, Skipped: stats.Skipped}, nil
}

// inboxReader reads a stream's ChanIn data, granting window as it goes.
type inboxReader struct {
	st  *stream
	buf []byte
}

func (r *inboxReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		c, err := r.st.in.Pop(r.st.ctx)
		if err != nil {
			if !errors.Is(err, io.EOF) && r.st.ctx.Err() != nil {
				return 0, fmt.Errorf("%w: input", proto.ErrCanceled)
			}
			return 0, err
		}
		r.st.grant(len(c.Data))
		r.buf = c.Data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// streamWriter sends writes as stream data on one channel.
type streamWriter struct {
	st *stream
	ch proto.Channel
}

func (w streamWriter) Write(p []byte) (int, error) {
	if err := w.st.send(w.ch, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
