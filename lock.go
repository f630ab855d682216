package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// errLockBusy means another process holds a VM's lock.
var errLockBusy = errors.New("another smolvm process is working on this VM")

// lockVM takes the per-VM file lock that serialises lifecycle steps on one
// VM across processes, waiting while another process holds it. The kernel
// drops it if the process dies.
func (h *Host) lockVM(ctx context.Context, id string) (unlock func(), err error) {
	for {
		unlock, err := h.tryLockVM(id)
		if !errors.Is(err, errLockBusy) {
			if err != nil {
				return nil, wrapErr("lock", id, ErrBackend, err)
			}
			return unlock, nil
		}
		select {
		case <-ctx.Done():
			kind := ErrTimeout
			if errors.Is(ctx.Err(), context.Canceled) {
				kind = ErrState
			}
			return nil, wrapErr("lock", id, kind, fmt.Errorf("%w: %w", errLockBusy, ctx.Err()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tryLockVM takes a VM's lock if it is free, or fails with errLockBusy.
//
// Lock files may be unlinked by their holder (a delete, a failed create):
// after taking the lock on an open file, it checks that the path still
// names that same file, and starts over if not, so two processes never
// both "hold" a VM's lock through different files.
func (h *Host) tryLockVM(id string) (unlock func(), err error) {
	p := h.lockPath(id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	for {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, err
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == unix.EWOULDBLOCK || err == unix.EINTR {
			f.Close()
			return nil, errLockBusy
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(p, &now) == nil && held.Ino == now.Ino && held.Dev == now.Dev {
			return func() { f.Close() }, nil
		}
		f.Close() // the file was unlinked (and maybe replaced) meanwhile
	}
}

// lockBusy reports whether another process holds a VM's lock, without
// creating a lock file where there is none.
func (h *Host) lockBusy(id string) bool {
	f, err := os.OpenFile(h.lockPath(id), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil
}

// flockTry takes an exclusive lock on the file at path if it is free.
func flockTry(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// flockWait takes an exclusive lock on the file at path, waiting while
// another process holds it.
func flockWait(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
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
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
