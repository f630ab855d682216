package consolelog

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Watch tells a reader of a log when the log may have grown, so that it
// need not poll: an inotify watch on the log's directory (writes,
// creations and renames there; other files of the directory wake it too,
// harmlessly). Without inotify, Wait sleeps.
type Watch struct {
	f *os.File // the inotify descriptor; nil without inotify
}

// NewWatch watches the directory of the log at path. It does not fail: if
// inotify is not available, the Watch polls.
func NewWatch(path string) *Watch {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return &Watch{}
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_MODIFY|unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return &Watch{}
	}
	return &Watch{f: os.NewFile(uintptr(fd), "inotify")}
}

// pollInterval is how long Wait sleeps without inotify.
const pollInterval = 10 * time.Millisecond

// Wait returns when the watched directory changed since the last Wait (or
// the watch's start), when ctx ends, or after at most max.
func (w *Watch) Wait(ctx context.Context, max time.Duration) {
	if w.f == nil {
		t := time.NewTimer(min(max, pollInterval))
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return
	}
	w.f.SetReadDeadline(time.Now().Add(max))
	stop := context.AfterFunc(ctx, func() { w.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var buf [4096]byte // whole events only; what does not fit wakes the next Wait
	_, err := w.f.Read(buf[:])
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
		// A broken watch must not spin: wait as if polling.
		t := time.NewTimer(min(max, pollInterval))
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// Close ends the watch.
func (w *Watch) Close() error {
	if w.f == nil {
		return nil
	}
	return w.f.Close()
}
