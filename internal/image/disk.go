package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// CloneDisk makes dst a private copy of the root filesystem base for one
// VM: a reflink (FICLONE) where the filesystem supports it, else a sparse
// copy that skips holes. If sizeMiB is larger than the copy, the file is
// grown and the ext4 filesystem resized to fill it; a smaller or zero
// sizeMiB keeps base's size. dst must not exist; on error nothing is left
// at dst.
func CloneDisk(ctx context.Context, base, dst string, sizeMiB int64) (retErr error) {
	src, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("clone disk: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return fmt.Errorf("clone disk: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("clone disk: %w", err)
	}
	defer func() {
		if cerr := out.Close(); retErr == nil && cerr != nil {
			retErr = fmt.Errorf("clone disk: %w", cerr)
		}
		if retErr != nil {
			os.Remove(dst)
		}
	}()
	if err := unix.IoctlFileClone(int(out.Fd()), int(src.Fd())); err != nil {
		if err := sparseCopy(ctx, out, src, st.Size()); err != nil {
			return fmt.Errorf("clone disk %s: %w", base, err)
		}
	}
	want := sizeMiB << 20
	if want <= st.Size() {
		return nil
	}
	if err := out.Truncate(want); err != nil {
		return fmt.Errorf("grow disk %s: %w", dst, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("grow disk %s: %w", dst, err)
	}
	// resize2fs wants a freshly checked filesystem; -p fixes only what is
	// safe to fix unattended, and exit status 1 means "fixed".
	if _, err := runTool(ctx, "", "e2fsck", "-f", "-p", dst); err != nil {
		var ee interface{ ExitCode() int }
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			return fmt.Errorf("check disk %s: %w", dst, err)
		}
	}
	if _, err := runTool(ctx, "", "resize2fs", dst); err != nil {
		return fmt.Errorf("resize disk %s: %w", dst, err)
	}
	return nil
}

// sparseCopy copies size bytes from src to dst, seeking over holes so the
// copy stays sparse.
func sparseCopy(ctx context.Context, dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			// No SEEK_DATA support: copy everything.
			data = off
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if _, err := copyRange(dst, src, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies n bytes at off from src to dst (same offset), with
// copy_file_range when possible.
func copyRange(dst, src *os.File, off, n int64) (int64, error) {
	var done int64
	for done < n {
		roff, woff := off+done, off+done
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n-done, 1<<30)), 0)
		if err != nil || c == 0 {
			// Fall back to read/write.
			sr := io.NewSectionReader(src, off+done, n-done)
			w := io.NewOffsetWriter(dst, off+done)
			m, err := io.Copy(w, sr)
			return done + m, err
		}
		done += int64(c)
	}
	return done, nil
}
