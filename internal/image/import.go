package image

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
)

// ImportOptions bounds an import. Zero fields take the defaults.
type ImportOptions struct {
	// MaxBytes bounds the total size of the regular files written
	// (default 32 GiB).
	MaxBytes int64
	// MaxFiles bounds the number of entries over all layers (default 2,000,000).
	MaxFiles int64
}

// Import formats.
const (
	FormatOCI        = "oci"         // OCI image layout, directory or tar
	FormatDockerSave = "docker-save" // docker save archive
	FormatRootfsTar  = "rootfs-tar"  // a root filesystem tarball (docker export), maybe gzipped
)

// ImageConfig is the part of an OCI image's config that says how to run it.
type ImageConfig struct {
	// Env are KEY=value entries.
	Env []string `json:"Env,omitempty"`
	// WorkingDir is the default directory.
	WorkingDir string `json:"WorkingDir,omitempty"`
	// User is the default user.
	User string `json:"User,omitempty"`
	// Entrypoint and Cmd make the default command.
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
}

// ImportResult says what Import read.
type ImportResult struct {
	// Format is FormatOCI, FormatDockerSave or FormatRootfsTar.
	Format string
	// Digest identifies the image: the manifest's digest (OCI), the config's
	// (docker save: the image id) or the archive's (rootfs tarball).
	Digest string
	// Layers is the number of layers applied.
	Layers int
	// Config is the image's run configuration (empty for a rootfs tarball).
	Config ImageConfig
	// Bytes and Files are what was written.
	Bytes, Files int64
}

// maxJSONBytes bounds manifests, indexes and configs.
const maxJSONBytes = 4 << 20

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Import flattens an image into dst, which must not exist or be empty: an
// OCI image layout (directory or tar), a docker save archive, or a root
// filesystem tarball (plain or gzipped). Layers are applied in order with
// their whiteouts; extraction never leaves dst (see ErrUnsafeArchive);
// blobs are checked against their digests. On error dst may hold a partial
// tree: the caller removes it.
func Import(ctx context.Context, src, dst string, opts ImportOptions) (*ImportResult, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 32 << 30
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = 2_000_000
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if ents, err := os.ReadDir(dst); err != nil || len(ents) > 0 {
		return nil, fmt.Errorf("import: %s is not an empty directory", dst)
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	defer root.Close()
	x := &extractor{root: root, dir: dst, maxBytes: opts.MaxBytes, maxFiles: opts.MaxFiles, asRoot: os.Geteuid() == 0}
	res, err := importSource(ctx, src, x)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	res.Bytes, res.Files = x.bytes, x.files
	return res, nil
}

// importSource detects src's format and applies its layers.
func importSource(ctx context.Context, src string, x *extractor) (*ImportResult, error) {
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		r, err := os.OpenRoot(src)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return importOCI(ctx, dirStore{r}, x)
	}
	f, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if isGzip(f) {
		return importRootfsTar(ctx, f, x)
	}
	ts, err := indexTar(f)
	if err != nil {
		return nil, err
	}
	switch {
	case ts.has("manifest.json"):
		return importDockerSave(ctx, ts, x)
	case ts.has("index.json") && ts.has("oci-layout"):
		return importOCI(ctx, ts, x)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return importRootfsTar(ctx, f, x)
}

// isGzip reports whether f starts with the gzip magic.
func isGzip(f *os.File) bool {
	var m [2]byte
	n, _ := f.ReadAt(m[:], 0)
	return n == 2 && m[0] == 0x1f && m[1] == 0x8b
}

// importRootfsTar applies a plain filesystem tarball (no whiteouts).
func importRootfsTar(ctx context.Context, f *os.File, x *extractor) (*ImportResult, error) {
	h := sha256.New()
	r, err := layerReader(ctx, io.TeeReader(f, h))
	if err != nil {
		return nil, err
	}
	if err := x.layer(r, false); err != nil {
		return nil, err
	}
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return &ImportResult{Format: FormatRootfsTar, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Layers: 1}, nil
}

// blobStore opens the files of an image archive or directory by name.
type blobStore interface {
	open(name string) (io.ReadCloser, error)
}

// dirStore is an OCI layout directory.
type dirStore struct{ r *os.Root }

func (d dirStore) open(name string) (io.ReadCloser, error) {
	f, err := d.r.Open(name)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	return f, nil
}

// tarStore is a tar file indexed by member name, read in place.
type tarStore struct {
	f    *os.File
	ents map[string][2]int64 // name -> offset, size
}

// indexTar records where each regular file of a tar starts.
func indexTar(f *os.File) (*tarStore, error) {
	ts := &tarStore{f: f, ents: map[string][2]int64{}}
	tr := tar.NewReader(f)
	for len(ts.ents) < 1_000_000 {
		h, err := tr.Next()
		if err == io.EOF {
			return ts, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read archive: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		if name, err := cleanEntry(h.Name); err == nil && name != "" {
			ts.ents[name] = [2]int64{off, h.Size}
		}
	}
	return nil, fmt.Errorf("%w: archive has more than 1000000 members", ErrUnsafeArchive)
}

func (t *tarStore) has(name string) bool { _, ok := t.ents[name]; return ok }

func (t *tarStore) open(name string) (io.ReadCloser, error) {
	e, ok := t.ents[path.Clean(name)]
	if !ok {
		return nil, fmt.Errorf("archive has no %s", name)
	}
	return io.NopCloser(io.NewSectionReader(t.f, e[0], e[1])), nil
}

// readJSON decodes a bounded JSON file from s; with a digest, the bytes
// must match it.
func readJSON(s blobStore, name, digest string, v any) error {
	r, err := s.open(name)
	if err != nil {
		return err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxJSONBytes+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if len(b) > maxJSONBytes {
		return fmt.Errorf("%w: %s is larger than %d bytes", ErrUnsafeArchive, name, maxJSONBytes)
	}
	if digest != "" && "sha256:"+sha256Hex(b) != digest {
		return fmt.Errorf("%s: content does not match digest %s", name, digest)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", name, err)
	}
	return nil
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform,omitempty"`
}

// blobPath is where a digest's blob lives in an OCI layout.
func blobPath(d string) (string, error) {
	if !digestRE.MatchString(d) {
		return "", fmt.Errorf("digest %q is not sha256:<64 hex digits>", d)
	}
	return "blobs/sha256/" + d[len("sha256:"):], nil
}

// importOCI reads index.json, picks the linux/amd64 manifest (following
// nested indexes) and applies its layers.
func importOCI(ctx context.Context, s blobStore, x *extractor) (*ImportResult, error) {
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := readJSON(s, "index.json", "", &idx); err != nil {
		return nil, err
	}
	for depth := 0; ; depth++ {
		d, err := pickManifest(idx.Manifests)
		if err != nil {
			return nil, err
		}
		p, err := blobPath(d.Digest)
		if err != nil {
			return nil, err
		}
		if d.MediaType == "application/vnd.oci.image.index.v1+json" ||
			d.MediaType == "application/vnd.docker.distribution.manifest.list.v2+json" {
			if depth > 2 {
				return nil, errors.New("image indexes nested too deep")
			}
			if err := readJSON(s, p, d.Digest, &idx); err != nil {
				return nil, err
			}
			continue
		}
		var m struct {
			Config descriptor   `json:"config"`
			Layers []descriptor `json:"layers"`
		}
		if err := readJSON(s, p, d.Digest, &m); err != nil {
			return nil, err
		}
		res := &ImportResult{Format: FormatOCI, Digest: d.Digest}
		if err := readConfig(s, m.Config.Digest, res); err != nil {
			return nil, err
		}
		var layers []string
		for _, l := range m.Layers {
			lp, err := blobPath(l.Digest)
			if err != nil {
				return nil, err
			}
			layers = append(layers, lp)
		}
		return res, applyLayers(ctx, s, layers, func(i int) string { return m.Layers[i].Digest }, x, res)
	}
}

// pickManifest chooses the only manifest, or the linux/amd64 one.
func pickManifest(ms []descriptor) (descriptor, error) {
	if len(ms) == 1 {
		return ms[0], nil
	}
	for _, m := range ms {
		if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == "amd64" {
			return m, nil
		}
	}
	return descriptor{}, fmt.Errorf("index lists %d manifests and none for linux/amd64", len(ms))
}

// readConfig reads the image config blob's run configuration.
func readConfig(s blobStore, digest string, res *ImportResult) error {
	p, err := blobPath(digest)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var c struct {
		Config ImageConfig `json:"config"`
	}
	if err := readJSON(s, p, digest, &c); err != nil {
		return err
	}
	res.Config = c.Config
	return nil
}

// importDockerSave reads a docker save archive's manifest.json (the first
// image in it) and applies its layers.
func importDockerSave(ctx context.Context, s blobStore, x *extractor) (*ImportResult, error) {
	var m []struct {
		Config string   `json:"Config"`
		Layers []string `json:"Layers"`
	}
	if err := readJSON(s, "manifest.json", "", &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, errors.New("manifest.json lists no image")
	}
	var c struct {
		Config ImageConfig `json:"config"`
	}
	if err := readJSON(s, m[0].Config, "", &c); err != nil {
		return nil, err
	}
	cr, err := s.open(m[0].Config)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	_, err = io.Copy(h, io.LimitReader(cr, maxJSONBytes))
	cr.Close()
	if err != nil {
		return nil, err
	}
	res := &ImportResult{Format: FormatDockerSave, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Config: c.Config}
	return res, applyLayers(ctx, s, m[0].Layers, func(int) string { return "" }, x, res)
}

// applyLayers applies the named layer blobs in order; digest(i), when not
// empty, is checked against layer i's bytes.
func applyLayers(ctx context.Context, s blobStore, layers []string, digest func(int) string, x *extractor, res *ImportResult) error {
	for i, name := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := applyLayer(ctx, s, name, digest(i), x); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, name, err)
		}
		res.Layers++
	}
	return nil
}

// applyLayer applies one (maybe gzipped) layer and checks its digest.
func applyLayer(ctx context.Context, s blobStore, name, digest string, x *extractor) error {
	rc, err := s.open(name)
	if err != nil {
		return err
	}
	defer rc.Close()
	var h hash.Hash = sha256.New()
	tee := io.TeeReader(rc, h)
	mismatch := func() error {
		if _, err := io.Copy(io.Discard, ctxReader{ctx, tee}); err != nil {
			return err
		}
		if digest != "" && "sha256:"+hex.EncodeToString(h.Sum(nil)) != digest {
			return fmt.Errorf("content does not match digest %s", digest)
		}
		return nil
	}
	r, err := layerReader(ctx, tee)
	if err == nil {
		err = x.layer(r, true)
	}
	if err != nil {
		// A blob that is not what its digest says is reported as such,
		// not as whatever its bytes failed to parse as.
		if derr := mismatch(); derr != nil && ctx.Err() == nil {
			return derr
		}
		return err
	}
	return mismatch()
}

// layerReader returns the tar stream of a layer: gunzipped if it is gzip,
// as is if it is a tar; zstd is refused with a clear error.
func layerReader(ctx context.Context, r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(ctxReader{ctx, r})
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return gzip.NewReader(br)
	case slices.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, errors.New("zstd-compressed layers are not supported (re-export with gzip)")
	}
	return br, nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// sourceDigest identifies an import source cheaply for the build
// fingerprint: an OCI directory by its index.json, a file by its bytes.
func sourceDigest(src string) (string, error) {
	st, err := os.Stat(src)
	if err != nil {
		return "", err
	}
	if st.IsDir() {
		b, err := os.ReadFile(src + "/index.json")
		if err != nil {
			return "", fmt.Errorf("%s is not an OCI image layout: %w", src, err)
		}
		return "sha256:" + sha256Hex(b), nil
	}
	fi, err := fileInfo(src)
	if err != nil {
		return "", err
	}
	return "sha256:" + fi.SHA256, nil
}
