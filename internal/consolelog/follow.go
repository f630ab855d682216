package consolelog

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// Follower reads a log as it grows, across rotations: when the logger
// starts a new file, the follower finishes the old one (now the rotated
// half) and continues with the new one from its start.
type Follower struct {
	path string
	f    *os.File
	ino  uint64
}

// NewFollower returns a Follower of the log at path positioned at its
// start (the current file, not the rotated half).
func NewFollower(path string) *Follower { return &Follower{path: path} }

// ReadNew writes to w what was added to the log since the last call and
// reports whether anything was. A missing log is empty.
func (fl *Follower) ReadNew(w io.Writer) (bool, error) {
	any := false
	for {
		if fl.f == nil {
			f, err := os.Open(fl.path)
			if errors.Is(err, os.ErrNotExist) {
				return any, nil
			}
			if err != nil {
				return any, err
			}
			fl.f, fl.ino = f, inode(f)
		}
		n, err := io.Copy(w, fl.f)
		any = any || n > 0
		if err != nil {
			return any, err
		}
		// Rotated since it was opened? Then the old file is complete once
		// read to its end (the logger writes only to the new one).
		var st syscall.Stat_t
		if syscall.Stat(fl.path, &st) == nil && st.Ino == fl.ino {
			return any, nil
		}
		n, err = io.Copy(w, fl.f)
		any = any || n > 0
		fl.f.Close()
		fl.f = nil
		if err != nil {
			return any, err
		}
	}
}

// Close closes the file being followed.
func (fl *Follower) Close() error {
	if fl.f == nil {
		return nil
	}
	return fl.f.Close()
}

func inode(f *os.File) uint64 {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
