package agent

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Upload writes the content of r to the absolute guest path, streaming it in
// chunks. The guest writes a temporary file in the same directory, syncs it,
// sets mode and renames it over guestPath, so readers see the old or the new
// file, never a partial one. With mkdirParents, missing parent directories
// are created; otherwise a missing parent fails with proto.ErrNotFound. A
// relative path fails with proto.ErrInvalidArgument. If reading r fails, the
// upload is aborted and guestPath is left unchanged.
func (c *Client) Upload(ctx context.Context, guestPath string, r io.Reader, mode os.FileMode, mkdirParents bool) error {
	args := proto.UploadArgs{Path: guestPath, Mode: proto.ModeToWire(mode), MkdirParents: mkdirParents}
	cl, err := c.start(ctx, proto.MethodUpload, args)
	if err != nil {
		return fmt.Errorf("agent upload %s: %w", guestPath, err)
	}
	if err := c.send(ctx, cl, r); err != nil {
		c.cancel(cl)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("agent upload %s: %w", guestPath, err)
	}
	if err := c.wait(ctx, cl, nil); err != nil {
		return fmt.Errorf("agent upload %s: %w", guestPath, err)
	}
	return nil
}

// Download streams the guest file at the absolute guestPath to w and returns
// its permission bits. A missing file fails with proto.ErrNotFound before
// anything is written.
func (c *Client) Download(ctx context.Context, guestPath string, w io.Writer) (os.FileMode, error) {
	cl, err := c.start(ctx, proto.MethodDownload, proto.DownloadArgs{Path: guestPath})
	if err != nil {
		return 0, fmt.Errorf("agent download %s: %w", guestPath, err)
	}
	if err := c.drain(ctx, cl, map[proto.Channel]io.Writer{proto.ChanOut: w}); err != nil {
		c.cancel(cl)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return 0, fmt.Errorf("agent download %s: %w", guestPath, err)
	}
	var res proto.DownloadResult
	if err := c.wait(ctx, cl, &res); err != nil {
		return 0, fmt.Errorf("agent download %s: %w", guestPath, err)
	}
	return proto.ModeFromWire(res.Mode), nil
}
