package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// exportHeader is the first member of an exported image archive; the
// image's files follow, each checked against the manifest on import.
const exportHeader = "smolvm-image.json"

// exportFormat is the archive format's version.
const exportFormat = 1

// exportDoc is the content of exportHeader.
type exportDoc struct {
	// Format is exportFormat.
	Format int `json:"smolvm_image_format"`
	// Manifest is the image's manifest: inputs, files with sizes and
	// SHA-256 checksums.
	Manifest Manifest `json:"manifest"`
}

// Export writes the cached image name as a self-describing tar archive to
// file: a header with the manifest (names, sizes, checksums), then the
// image's files. It writes a temporary file renamed into place.
func Export(ctx context.Context, cacheDir, name, file string) (retErr error) {
	img, err := Get(cacheDir, name)
	if err != nil {
		return err
	}
	unlock, err := lockImage(ctx, cacheDir, name)
	if err != nil {
		return err
	}
	defer unlock()
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	tw := tar.NewWriter(tmp)
	doc, _ := json.MarshalIndent(exportDoc{Format: exportFormat, Manifest: img.Manifest}, "", "  ")
	mt := img.Manifest.BuiltAt
	if err := tw.WriteHeader(&tar.Header{Name: exportHeader, Mode: 0o644, Size: int64(len(doc)), ModTime: mt, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(doc); err != nil {
		return err
	}
	for _, fi := range img.Manifest.Files {
		if err := exportFile(ctx, tw, filepath.Join(img.Dir, fi.Name), fi, mt); err != nil {
			return fmt.Errorf("export %s: %w", fi.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// exportFile writes one image file, checking it still matches the manifest.
func exportFile(ctx context.Context, tw *tar.Writer, p string, fi FileInfo, mt time.Time) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tw.WriteHeader(&tar.Header{Name: fi.Name, Mode: 0o644, Size: fi.Size, ModTime: mt, Format: tar.FormatPAX}); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tw, h), ctxReader{ctx, f})
	if err != nil {
		return err
	}
	if n != fi.Size || hex.EncodeToString(h.Sum(nil)) != fi.SHA256 {
		return fmt.Errorf("the cached file changed since it was built (checksum differs): rebuild the image")
	}
	return nil
}

// IsExport reports whether file is an archive Export wrote.
func IsExport(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	h, err := tar.NewReader(f).Next()
	return err == nil && h.Name == exportHeader
}

// ImportExport installs an archive Export wrote as the image name: every
// file is checked against the manifest's size and checksum, unknown or
// missing members are errors, and the image appears only when complete.
// The image keeps its manifest (and so its fingerprint and checksums),
// renamed to name.
func ImportExport(ctx context.Context, cacheDir, name, file string) (img *Image, retErr error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockImage(ctx, cacheDir, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cleanStale(cacheDir, name)
	tmp, err := os.MkdirTemp(cacheDir, tmpPrefix(name))
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	m, err := unpackExport(ctx, file, tmp)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", file, err)
	}
	m.Name = name
	if err := writeManifest(tmp, m); err != nil {
		return nil, err
	}
	if err := syncDir(tmp); err != nil {
		return nil, err
	}
	if err := installImage(tmp, cacheDir, name); err != nil {
		return nil, err
	}
	return Get(cacheDir, name)
}

// maxExportFile bounds one member of an exported image.
const maxExportFile = 64 << 30

// unpackExport reads an exported archive into dir and returns its manifest.
func unpackExport(ctx context.Context, file, dir string) (*Manifest, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	h, err := tr.Next()
	if err != nil || h.Name != exportHeader || h.Size > maxJSONBytes {
		return nil, fmt.Errorf("%w: not an image archive from smolvm image export (first member must be %s)", ErrUnsafeArchive, exportHeader)
	}
	var doc exportDoc
	if err := json.NewDecoder(io.LimitReader(tr, maxJSONBytes)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnsafeArchive, exportHeader, err)
	}
	if doc.Format != exportFormat {
		return nil, fmt.Errorf("%w: archive format %d, this smolvm reads %d", ErrUnsafeArchive, doc.Format, exportFormat)
	}
	want := map[string]FileInfo{}
	allowed := []string{kernelFile, vmlinuxFile, initrdFile, rootfsFile}
	for _, fi := range doc.Manifest.Files {
		if !slices.Contains(allowed, fi.Name) || fi.Size < 0 || fi.Size > maxExportFile {
			return nil, fmt.Errorf("%w: manifest lists %q (%d bytes)", ErrUnsafeArchive, fi.Name, fi.Size)
		}
		want[fi.Name] = fi
	}
	got := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnsafeArchive, err)
		}
		fi, ok := want[h.Name]
		if !ok || got[h.Name] || h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: unexpected member %q", ErrUnsafeArchive, h.Name)
		}
		got[h.Name] = true
		if h.Size != fi.Size {
			return nil, fmt.Errorf("%w: %s is %d bytes, the manifest says %d", ErrUnsafeArchive, h.Name, h.Size, fi.Size)
		}
		if err := copyChecked(ctx, tr, filepath.Join(dir, h.Name), fi); err != nil {
			return nil, err
		}
	}
	for n := range want {
		if !got[n] {
			return nil, fmt.Errorf("%w: %s is missing", ErrUnsafeArchive, n)
		}
	}
	return &doc.Manifest, nil
}

// copyChecked writes r to p and checks its checksum against fi.
func copyChecked(ctx context.Context, r io.Reader, p string, fi FileInfo) error {
	out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(sparseWriter{out}, h), ctxReader{ctx, io.LimitReader(r, fi.Size)})
	if err == nil {
		err = out.Truncate(fi.Size)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", fi.Name, err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != fi.SHA256 {
		return fmt.Errorf("%w: %s has checksum %s, the manifest says %s", ErrUnsafeArchive, fi.Name, sum, fi.SHA256)
	}
	return nil
}

// sparseWriter writes to a file, seeking over blocks of zeros so that a
// disk image stays sparse.
type sparseWriter struct{ f *os.File }

func (w sparseWriter) Write(p []byte) (int, error) {
	const blk = 4096
	for off := 0; off < len(p); off += blk {
		end := min(off+blk, len(p))
		b := p[off:end]
		if isZero(b) {
			if _, err := w.f.Seek(int64(len(b)), io.SeekCurrent); err != nil {
				return off, err
			}
			continue
		}
		if _, err := w.f.Write(b); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
