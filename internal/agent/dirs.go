package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/smolvm-go/smolvm/internal/agent/dirtar"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// TarLimits bound what a host extraction accepts from the guest.
type TarLimits = dirtar.Limits

// TarStats count a directory transfer.
type TarStats = dirtar.Stats

// Default bounds of DownloadDir.
const (
	DefaultMaxDirEntries = 1 << 20
	DefaultMaxDirBytes   = 4 << 30
)

// ExtractTar unpacks an untrusted tar stream (for example one read from the
// guest) into the host directory dir, which must exist. It refuses absolute
// names, names with "..", and any write through a symlink (symlinks are
// created as links, and no later entry may pass through or replace their
// target); setuid, setgid and sticky bits are dropped; ownership is never
// changed. Zero limits mean DefaultMaxDirEntries and DefaultMaxDirBytes.
// Refused input fails with proto.ErrInvalidArgument, a limit with
// proto.ErrResourceExhausted.
func ExtractTar(ctx context.Context, r io.Reader, dir string, lim TarLimits) (TarStats, error) {
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = DefaultMaxDirEntries
	}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = DefaultMaxDirBytes
	}
	return dirtar.Extract(ctx, r, dir, lim, dirtar.Options{})
}

// WriteTar archives the host directory dir to w in the format UploadTar
// expects: directories, regular files and symlinks (as links) with modes
// and mtimes; other file types are skipped and counted.
func WriteTar(ctx context.Context, w io.Writer, dir string) (TarStats, error) {
	return dirtar.Write(ctx, w, dir)
}

// UploadTar extracts the tar stream r into the guest directory guestDir
// (created with its parents if missing). The guest refuses entries that
// would land outside guestDir. Special mode bits are kept.
func (c *Client) UploadTar(ctx context.Context, guestDir string, r io.Reader) (TarStats, error) {
	cl, err := c.start(ctx, proto.MethodDirUpload, proto.DirArgs{Path: guestDir})
	if err != nil {
		return TarStats{}, fmt.Errorf("agent dir upload %s: %w", guestDir, err)
	}
	if err := c.send(ctx, cl, r); err != nil {
		c.cancel(cl)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return TarStats{}, fmt.Errorf("agent dir upload %s: %w", guestDir, err)
	}
	var res proto.TarResult
	if err := c.wait(ctx, cl, &res); err != nil {
		return TarStats{}, fmt.Errorf("agent dir upload %s: %w", guestDir, err)
	}
	return TarStats{Entries: res.Entries, Bytes: res.Bytes, Skipped: res.Skipped}, nil
}

// UploadDir copies the host directory hostDir into the guest directory
// guestDir as a tar stream.
func (c *Client) UploadDir(ctx context.Context, hostDir, guestDir string) (TarStats, error) {
	pr, pw := io.Pipe()
	go func() {
		_, err := WriteTar(ctx, pw, hostDir)
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	return c.UploadTar(ctx, guestDir, pr)
}

// DownloadTar streams the guest directory guestDir to w as a tar archive.
// The bytes come from the guest: extract them with ExtractTar, never with
// a tool that trusts its input.
func (c *Client) DownloadTar(ctx context.Context, guestDir string, w io.Writer) (TarStats, error) {
	cl, err := c.start(ctx, proto.MethodDirDownload, proto.DirArgs{Path: guestDir})
	if err != nil {
		return TarStats{}, fmt.Errorf("agent dir download %s: %w", guestDir, err)
	}
	if err := c.drain(ctx, cl, map[proto.Channel]io.Writer{proto.ChanOut: w}); err != nil {
		c.cancel(cl)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return TarStats{}, fmt.Errorf("agent dir download %s: %w", guestDir, err)
	}
	var res proto.TarResult
	if err := c.wait(ctx, cl, &res); err != nil {
		return TarStats{}, fmt.Errorf("agent dir download %s: %w", guestDir, err)
	}
	return TarStats{Entries: res.Entries, Bytes: res.Bytes, Skipped: res.Skipped}, nil
}

// DownloadDir copies the guest directory guestDir into the host directory
// hostDir with ExtractTar's protections and bounds. If hostDir does not
// exist, the tree is extracted into a temporary sibling that is renamed to
// hostDir only on success, so a failure leaves nothing behind; an existing
// hostDir is extracted into (merged).
func (c *Client) DownloadDir(ctx context.Context, guestDir, hostDir string, lim TarLimits) (TarStats, error) {
	target := hostDir
	var tmp string
	if _, err := os.Lstat(hostDir); errors.Is(err, os.ErrNotExist) {
		tmp, err = os.MkdirTemp(filepath.Dir(hostDir), "."+filepath.Base(hostDir)+".smolvm-*")
		if err != nil {
			return TarStats{}, fmt.Errorf("agent dir download: %w", err)
		}
		defer os.RemoveAll(tmp) // a no-op after the rename
		target = tmp
	}
	pr, pw := io.Pipe()
	type result struct {
		st  TarStats
		err error
	}
	extracted := make(chan result, 1)
	go func() {
		st, err := ExtractTar(ctx, pr, target, lim)
		if err == nil {
			// Take the end blocks and padding; a guest sending more than
			// that after the end of the archive is cut off.
			if n, _ := io.Copy(io.Discard, io.LimitReader(pr, maxTrailer+1)); n > maxTrailer {
				err = fmt.Errorf("%w: more than %d bytes after the end of the archive", proto.ErrProtocol, maxTrailer)
			}
		}
		pr.CloseWithError(fmt.Errorf("extraction stopped: %w", errOr(err, io.ErrClosedPipe)))
		extracted <- result{st, err}
	}()
	_, derr := c.DownloadTar(ctx, guestDir, pw)
	pw.CloseWithError(errOr(derr, io.EOF))
	x := <-extracted
	if x.err != nil {
		return x.st, fmt.Errorf("agent dir download %s: %w", guestDir, x.err)
	}
	if derr != nil {
		return x.st, derr
	}
	if tmp != "" {
		if err := os.Chmod(tmp, 0o755); err != nil {
			return x.st, fmt.Errorf("agent dir download: %w", err)
		}
		if err := os.Rename(tmp, hostDir); err != nil {
			return x.st, fmt.Errorf("agent dir download: %w", err)
		}
	}
	return x.st, nil
}

// maxTrailer bounds the bytes accepted after a downloaded archive's end.
const maxTrailer = 1 << 20

// errOr returns err, or def when err is nil.
func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// WaitPort returns once a TCP socket in the guest listens on port (IPv4 or
// IPv6, read from /proc/net/tcp and tcp6). If ctx ends first, it returns
// ctx.Err() and the guest stops polling.
func (c *Client) WaitPort(ctx context.Context, port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("agent port wait: %w: port %d not in 1..65535", proto.ErrInvalidArgument, port)
	}
	return c.roundTrip(ctx, proto.MethodPortWait, proto.PortWaitArgs{Port: port}, nil)
}
