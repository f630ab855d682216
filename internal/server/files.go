package server

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/smolvm-go/smolvm"
)

// guestPath returns the query parameter name as a guest path: absolute and
// clean, so "../" tricks are refused rather than resolved.
func guestPath(r *http.Request, name string) (string, error) {
	p := r.URL.Query().Get(name)
	if p == "" {
		return "", &smolvm.ConfigError{Field: name, Rule: "is required: an absolute guest path"}
	}
	if !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsRune(p, 0) || len(p) > 4096 {
		return "", &smolvm.ConfigError{Field: name, Value: p, Rule: errBadPath.Error()}
	}
	return p, nil
}

// counter counts bytes passing through a reader or writer.
type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// lazyWriter sends the response's headers on the first byte written, so a
// download that fails before any byte still gets an error response.
type lazyWriter struct {
	w       http.ResponseWriter
	started bool
	n       int64
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.w.WriteHeader(http.StatusOK)
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// download streams a guest file as raw bytes; its mode is in the trailer
// X-File-Mode (octal), as it is known only at the end.
func (s *Server) download(w http.ResponseWriter, r *http.Request, key string) error {
	p, err := guestPath(r, "path")
	if err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Trailer", "X-File-Mode")
	lw := &lazyWriter{w: w}
	mode, err := vm.Download(r.Context(), p, lw)
	s.metrics.bytes.WithLabelValues("download").Add(float64(lw.n))
	if err != nil {
		if lw.started {
			// The client sees a body shorter than it should, without the trailer.
			panic(http.ErrAbortHandler)
		}
		w.Header().Del("Trailer")
		return err
	}
	w.Header().Set("X-File-Mode", fmt.Sprintf("%04o", mode.Perm()))
	if !lw.started {
		w.WriteHeader(http.StatusOK)
	}
	return nil
}

// upload streams the raw request body into a guest file (any size),
// replaced atomically; ?mode= is its octal mode (default 0644).
func (s *Server) upload(w http.ResponseWriter, r *http.Request, key string) error {
	p, err := guestPath(r, "path")
	if err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if m := r.URL.Query().Get("mode"); m != "" {
		v, err := strconv.ParseUint(m, 8, 32)
		if err != nil || v > 0o7777 {
			return &smolvm.ConfigError{Field: "mode", Value: m, Rule: "must be an octal file mode such as 0644"}
		}
		mode = os.FileMode(v)
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	c := &counter{r: r.Body}
	err = vm.Upload(r.Context(), p, c, mode)
	s.metrics.bytes.WithLabelValues("upload").Add(float64(c.n))
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
