package e2b

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"

	"github.com/smolvm-go/smolvm"
)

// maxUploadParts bounds the files of one multipart upload.
const maxUploadParts = 1000

func (h *Handler) registerFiles() {
	h.mux.Handle("GET /files", h.envd(http.HandlerFunc(h.download)))
	h.mux.Handle("POST /files", h.envd(http.HandlerFunc(h.upload)))
	h.mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
}

// filesUser applies the username query parameter, which the SDK sends on
// /files instead of the authorization header.
func (h *Handler) filesUser(r *http.Request) *http.Request {
	u := r.URL.Query().Get("username")
	if u == "" {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), ctxUser, u))
}

// writtenFile is one entry of an upload's answer.
type writtenFile struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}

// download streams a guest file's bytes.
func (h *Handler) download(w http.ResponseWriter, r *http.Request) {
	r = h.filesUser(r)
	ctx := r.Context()
	vm := vmOf(ctx)
	p := resolvePath(ctx, r.URL.Query().Get("path"))
	fi, err := vm.Stat(ctx, p)
	if err != nil {
		h.apiFail(w, r, err)
		return
	}
	if fi.IsDir() {
		h.apiFail(w, r, &smolvm.ConfigError{Field: "path", Value: p, Rule: "is a directory"})
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	if fi.Type == "file" {
		w.Header().Set("Content-Length", strconv.FormatInt(fi.Size, 10))
	}
	lw := &lazyStatus{w: w}
	if _, err := vm.Download(ctx, p, lw); err != nil {
		if !lw.wrote {
			h.apiFail(w, r, err)
			return
		}
		// Headers are gone; cutting the connection tells the client.
		panic(http.ErrAbortHandler)
	}
	if !lw.wrote {
		w.WriteHeader(http.StatusOK)
	}
}

// lazyStatus commits the response status with the first byte, so an error
// before any byte still gets an error status.
type lazyStatus struct {
	w     http.ResponseWriter
	wrote bool
}

func (l *lazyStatus) Write(p []byte) (int, error) {
	if !l.wrote {
		l.wrote = true
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}

// upload writes files from a multipart form (part "file", the file name
// being its path when the query names none) or an octet-stream body
// (optionally gzip-encoded) to the query's path.
func (h *Handler) upload(w http.ResponseWriter, r *http.Request) {
	r = h.filesUser(r)
	if h.cfg.MaxUploadBytes > 0 {
		r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxUploadBytes)
	}
	ctx := r.Context()
	qpath := r.URL.Query().Get("path")
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var out []writtenFile
	var err error
	switch mt {
	case "multipart/form-data":
		out, err = h.uploadMultipart(ctx, multipart.NewReader(r.Body, params["boundary"]), qpath)
	default:
		if qpath == "" {
			err = &smolvm.ConfigError{Field: "path", Rule: "is required for an octet-stream upload"}
			break
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, zerr := gzip.NewReader(r.Body)
			if zerr != nil {
				err = &smolvm.ConfigError{Field: "body", Rule: "is not gzip: " + zerr.Error()}
				break
			}
			defer zr.Close()
			body = zr
		}
		var f writtenFile
		f, err = h.writeOne(ctx, qpath, body)
		out = append(out, f)
	}
	if err != nil {
		h.apiFail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) uploadMultipart(ctx context.Context, mr *multipart.Reader, qpath string) ([]writtenFile, error) {
	var out []writtenFile
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, &smolvm.ConfigError{Field: "body", Rule: "is not a valid multipart form: " + err.Error()}
		}
		if part.FormName() != "file" {
			part.Close()
			continue
		}
		if len(out) >= maxUploadParts {
			return nil, &smolvm.ConfigError{Field: "body", Rule: fmt.Sprintf("at most %d files per upload", maxUploadParts)}
		}
		p := qpath
		if p == "" {
			p = part.FileName()
		}
		if p == "" {
			return nil, &smolvm.ConfigError{Field: "path", Rule: "is required (in the query or as the part's file name)"}
		}
		f, err := h.writeOne(ctx, p, part)
		part.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, &smolvm.ConfigError{Field: "body", Rule: "holds no part named file"}
	}
	return out, nil
}

// writeOne writes one file, creating its parents, owned by the calling
// user when that is not root.
func (h *Handler) writeOne(ctx context.Context, p string, r io.Reader) (writtenFile, error) {
	vm := vmOf(ctx)
	p = resolvePath(ctx, p)
	if path.Clean(p) != p || p == "/" {
		return writtenFile{}, &smolvm.ConfigError{Field: "path", Value: p, Rule: "must be a clean file path"}
	}
	if err := vm.Upload(ctx, p, r, 0o644); err != nil {
		return writtenFile{}, err
	}
	if u := userOf(ctx); u != "root" && u != "0" {
		if _, err := vm.Exec(ctx, smolvm.ExecOptions{Argv: []string{"chown", u + ":", p}}); err != nil {
			return writtenFile{}, err
		}
	}
	return writtenFile{Name: path.Base(p), Type: "file", Path: p}, nil
}
