// Package snapfile copies and checks the large files of a snapshot (guest
// RAM images, disks): copies stay sparse (holes and all-zero blocks are not
// written), and a digest that does not depend on how a file is laid out on
// disk lets a restore detect a truncated or altered file.
package snapfile

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// BlockSize is the unit of zero detection and of the digest.
const BlockSize = 4096

// File describes one file of a snapshot as it was written.
type File struct {
	// Name is the file's name inside the snapshot's directory.
	Name string `json:"name"`
	// Size is the file's length in bytes.
	Size int64 `json:"size"`
	// Allocated is the space it takes on disk, in bytes.
	Allocated int64 `json:"allocated"`
	// SHA256 is the layout-independent digest (see Digest).
	SHA256 string `json:"sha256"`
	// Stamp identifies the file as written (inode, size, mtime, ctime): a
	// file whose stamp is unchanged was not modified since, so its digest
	// need not be computed again.
	Stamp string `json:"stamp"`
}

// digester hashes the non-zero blocks of a file with their index, so
// two files with the same contents have the same digest whatever their
// holes.
type digester struct {
	h   hash.Hash
	idx [8]byte
}

func newDigester() *digester { return &digester{h: sha256.New()} }

func (d *digester) block(off int64, b []byte) {
	binary.LittleEndian.PutUint64(d.idx[:], uint64(off/BlockSize))
	d.h.Write(d.idx[:])
	d.h.Write(b)
}

func (d *digester) sum(size int64) string {
	binary.LittleEndian.PutUint64(d.idx[:], uint64(size))
	d.h.Write(d.idx[:])
	return hex.EncodeToString(d.h.Sum(nil))
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// walk calls fn for every non-zero block of f (size bytes), skipping holes
// with SEEK_DATA where the file system has it.
func walk(ctx context.Context, f *os.File, size int64, fn func(off int64, b []byte) error) error {
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			data = off
		}
		end, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		// Align to blocks so digests do not depend on extent boundaries.
		data -= data % BlockSize
		for p := data; p < end; {
			n := int(min(int64(len(buf)), end-p))
			if r := n % BlockSize; r != 0 && p+int64(n) < size {
				n += BlockSize - r
			}
			m, err := f.ReadAt(buf[:n], p)
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			for i := 0; i < m; i += BlockSize {
				b := buf[i:min(i+BlockSize, m)]
				if !isZero(b) {
					if err := fn(p+int64(i), b); err != nil {
						return err
					}
				}
			}
			if m == 0 {
				break
			}
			p += int64(m)
		}
		off = end
		if off%BlockSize != 0 {
			off += BlockSize - off%BlockSize
		}
	}
	return nil
}

// Copy writes a sparse copy of src to the new file dst (mode 0600) and
// returns its description; Name is dst's base name. On error nothing is
// left at dst.
func Copy(ctx context.Context, src, dst string) (f File, retErr error) {
	in, err := os.Open(src)
	if err != nil {
		return File{}, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return File{}, err
	}
	return CopyFrom(ctx, in, st.Size(), dst)
}

// CopyFrom is Copy from an open file of size bytes.
func CopyFrom(ctx context.Context, in *os.File, size int64, dst string) (f File, retErr error) {
	return copyFrom(ctx, in, size, dst, true)
}

// CopySparse copies size bytes of in to the new file dst (mode 0600)
// without digesting them (for the part of a snapshot done while a guest is
// paused; Describe it afterwards). On error nothing is left at dst.
func CopySparse(ctx context.Context, in *os.File, size int64, dst string) error {
	_, err := copyFrom(ctx, in, size, dst, false)
	return err
}

func copyFrom(ctx context.Context, in *os.File, size int64, dst string, digest bool) (f File, retErr error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return File{}, err
	}
	defer func() {
		if cerr := out.Close(); retErr == nil && cerr != nil {
			retErr = cerr
		}
		if retErr != nil {
			os.Remove(dst)
		}
	}()
	if err := out.Truncate(size); err != nil {
		return File{}, err
	}
	d := newDigester()
	err = walk(ctx, in, size, func(off int64, b []byte) error {
		if digest {
			d.block(off, b)
		}
		_, err := out.WriteAt(b, off)
		return err
	})
	if err != nil {
		return File{}, fmt.Errorf("copy %s: %w", in.Name(), err)
	}
	if !digest {
		return File{}, nil
	}
	if err := out.Sync(); err != nil {
		return File{}, err
	}
	f = File{Name: baseName(dst), Size: size, SHA256: d.sum(size)}
	f.Stamp, f.Allocated, err = stamp(out)
	return f, err
}

// Describe digests an existing file (e.g. a small state file written by a
// VMM).
func Describe(ctx context.Context, path string) (File, error) {
	in, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return File{}, err
	}
	d := newDigester()
	if err := walk(ctx, in, st.Size(), func(off int64, b []byte) error { d.block(off, b); return nil }); err != nil {
		return File{}, err
	}
	f := File{Name: baseName(path), Size: st.Size(), SHA256: d.sum(st.Size())}
	f.Stamp, f.Allocated, err = stamp(in)
	return f, err
}

// ErrCorrupt means a snapshot file is missing, truncated or altered.
var ErrCorrupt = errors.New("snapshot file corrupt")

// Verify checks the file at path against f: its size always, its digest
// when the file changed since f was taken (its stamp differs) or when full
// is set. A mismatch wraps ErrCorrupt.
func Verify(ctx context.Context, path string, f File, full bool) error {
	in, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %v: %w", f.Name, err, ErrCorrupt)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("%s: %v: %w", f.Name, err, ErrCorrupt)
	}
	if st.Size() != f.Size {
		return fmt.Errorf("%s is %d bytes, the snapshot recorded %d (truncated or replaced): %w", f.Name, st.Size(), f.Size, ErrCorrupt)
	}
	if s, _, err := stamp(in); err == nil && s == f.Stamp && !full {
		return nil
	}
	d := newDigester()
	if err := walk(ctx, in, st.Size(), func(off int64, b []byte) error { d.block(off, b); return nil }); err != nil {
		return fmt.Errorf("%s: %w", f.Name, err)
	}
	if got := d.sum(st.Size()); got != f.SHA256 {
		return fmt.Errorf("%s was modified after the snapshot was taken (sha256 %s, recorded %s): %w", f.Name, got[:12], f.SHA256[:12], ErrCorrupt)
	}
	return nil
}

func stamp(f *os.File) (string, int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", 0, err
	}
	return fmt.Sprintf("%d:%d:%d:%d.%d:%d.%d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec), st.Blocks * 512, nil
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// WriteInto writes the non-zero blocks of src (size bytes) into dst at
// the same offsets; dst is expected to read as zeros elsewhere (a fresh
// memfd or a new sparse file).
func WriteInto(ctx context.Context, dst, src *os.File, size int64) error {
	return walk(ctx, src, size, func(off int64, b []byte) error {
		_, err := dst.WriteAt(b, off)
		return err
	})
}
