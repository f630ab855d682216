package smolvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockVM takes the per-VM file lock that serialises lifecycle steps on one
// VM across processes. The kernel drops it if the process dies.
func (h *host) lockVM(ctx context.Context, id string) (unlock func(), err error) {
	p := h.lockPath(id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, wrapErr("lock", id, ErrTimeout, fmt.Errorf("another smolvm process is working on this VM: %w", ctx.Err()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
