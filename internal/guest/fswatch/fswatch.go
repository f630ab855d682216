// Package fswatch reports file-system changes under a path with Linux
// inotify, optionally recursively, through a bounded queue: when the
// consumer falls behind, events are dropped and counted, and the consumer
// sees one Overflow event saying how many. Consecutive identical events are
// merged. It uses only golang.org/x/sys/unix (no package net), for the guest
// agent.
package fswatch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Op is the kind of an Event.
type Op int

// Event kinds.
const (
	// Created: a file or directory appeared (also a move into the tree
	// whose source is unknown).
	Created Op = iota + 1
	// Modified: a file's content changed.
	Modified
	// Removed: a file or directory disappeared.
	Removed
	// Renamed: a file or directory moved; Path is the new name and OldPath
	// the old one, either empty when that end is outside the watch.
	Renamed
	// Overflow: events were lost; Dropped says how many.
	Overflow
)

var opNames = [...]string{Created: "created", Modified: "modified", Removed: "removed", Renamed: "renamed", Overflow: "overflow"}

// String returns the lower-case name of op.
func (op Op) String() string {
	if op > 0 && int(op) < len(opNames) {
		return opNames[op]
	}
	return fmt.Sprintf("Op(%d)", int(op))
}

// Event is one change.
type Event struct {
	// Op is the kind of change.
	Op Op
	// Path is the absolute path concerned.
	Path string
	// OldPath is a rename's source.
	OldPath string
	// Dir reports whether the path is a directory.
	Dir bool
	// Dropped counts lost events, for Overflow.
	Dropped int
}

// Options configure a Watcher.
type Options struct {
	// Recursive watches every directory below the root, including ones
	// created later.
	Recursive bool
	// QueueSize bounds the queued events; default 4096.
	QueueSize int
	// MaxWatches bounds the directories watched; default 65536.
	MaxWatches int
}

// mask is the set of inotify events a Watcher asks for.
const mask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_MOVED_FROM |
	unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// Watcher watches one path.
type Watcher struct {
	f    *os.File // the inotify descriptor, non-blocking (polled)
	opts Options
	done chan struct{} // closed when the reader has stopped

	mu      sync.Mutex
	wds     map[int]string // guarded by mu; watch descriptor -> path
	queue   []Event        // guarded by mu
	dropped int            // guarded by mu; events lost since the last Overflow
	err     error          // guarded by mu; why reading stopped
	wake    chan struct{}  // guarded by mu
}

// New starts watching root, an absolute path to a directory or a file.
func New(root string, opts Options) (*Watcher, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("fswatch: %q is not absolute", root)
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 4096
	}
	if opts.MaxWatches <= 0 {
		opts.MaxWatches = 65536
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fswatch: inotify: %w", err)
	}
	w := &Watcher{
		f: os.NewFile(uintptr(fd), "inotify"), opts: opts, done: make(chan struct{}),
		wds: map[int]string{}, wake: make(chan struct{}),
	}
	root = filepath.Clean(root)
	fi, err := os.Lstat(root)
	if err != nil {
		w.f.Close()
		return nil, fmt.Errorf("fswatch: %w", err)
	}
	if fi.IsDir() && opts.Recursive {
		err = w.addTree(root)
	} else {
		err = w.add(root)
	}
	if err != nil {
		w.f.Close()
		return nil, err
	}
	go w.read()
	return w, nil
}

// add watches one path.
func (w *Watcher) add(path string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.wds) >= w.opts.MaxWatches {
		return fmt.Errorf("fswatch: more than %d directories to watch", w.opts.MaxWatches)
	}
	conn, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	var wd int
	var aerr error
	if err := conn.Control(func(fd uintptr) { wd, aerr = unix.InotifyAddWatch(int(fd), path, mask|unix.IN_DONT_FOLLOW) }); err != nil {
		return err
	}
	if aerr != nil {
		return fmt.Errorf("fswatch: watch %s: %w", path, aerr)
	}
	w.wds[wd] = path
	return nil
}

// addTree watches dir and every directory below it. Directories that
// vanish meanwhile are skipped.
func (w *Watcher) addTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != dir {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if err := w.add(p); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
		return nil
	})
}

// Close stops watching; Next returns an error from then on.
func (w *Watcher) Close() error {
	err := w.f.Close()
	<-w.done
	return err
}

// Next returns the next event, waiting for one.
func (w *Watcher) Next(ctx context.Context) (Event, error) {
	for {
		w.mu.Lock()
		if w.dropped > 0 {
			ev := Event{Op: Overflow, Dropped: w.dropped}
			w.dropped = 0
			w.mu.Unlock()
			return ev, nil
		}
		if len(w.queue) > 0 {
			ev := w.queue[0]
			w.queue[0] = Event{}
			w.queue = w.queue[1:]
			w.mu.Unlock()
			return ev, nil
		}
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			return Event{}, err
		}
		wake := w.wake
		w.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// Pending returns the number of queued events.
func (w *Watcher) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

// push queues ev, merging it with an identical last event, or counts it
// as dropped when the queue is full.
func (w *Watcher) push(ev Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := len(w.queue); n > 0 && w.queue[n-1] == ev {
		return
	}
	if len(w.queue) >= w.opts.QueueSize {
		w.dropped++
	} else {
		w.queue = append(w.queue, ev)
	}
	close(w.wake)
	w.wake = make(chan struct{})
}

// read decodes inotify records until the descriptor is closed.
func (w *Watcher) read() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			w.mu.Lock()
			w.err = fmt.Errorf("fswatch: %w", err)
			close(w.wake)
			w.wake = make(chan struct{})
			w.mu.Unlock()
			return
		}
		w.decode(buf[:n])
	}
}

// decode turns one read's worth of records into events. Rename halves are
// paired by cookie within the read; unpaired halves become renames with
// one end empty.
func (w *Watcher) decode(b []byte) {
	type half struct {
		path string
		dir  bool
	}
	from := map[uint32]half{}
	var order []uint32
	for len(b) >= unix.SizeofInotifyEvent {
		raw := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(raw.Len)
		if end > len(b) {
			break
		}
		name := string(bytesBeforeNUL(b[unix.SizeofInotifyEvent:end]))
		b = b[end:]
		if raw.Mask&unix.IN_Q_OVERFLOW != 0 {
			w.mu.Lock()
			w.dropped++
			w.mu.Unlock()
			continue
		}
		w.mu.Lock()
		base, ok := w.wds[int(raw.Wd)]
		if raw.Mask&unix.IN_IGNORED != 0 {
			delete(w.wds, int(raw.Wd))
		}
		w.mu.Unlock()
		if !ok {
			continue
		}
		path := base
		if name != "" {
			path = filepath.Join(base, name)
		}
		dir := raw.Mask&unix.IN_ISDIR != 0
		switch {
		case raw.Mask&unix.IN_CREATE != 0:
			w.push(Event{Op: Created, Path: path, Dir: dir})
			if dir && w.opts.Recursive {
				_ = w.addTree(path)
			}
		case raw.Mask&unix.IN_MODIFY != 0:
			w.push(Event{Op: Modified, Path: path})
		case raw.Mask&unix.IN_DELETE != 0:
			w.push(Event{Op: Removed, Path: path, Dir: dir})
		case raw.Mask&unix.IN_MOVED_FROM != 0:
			from[raw.Cookie] = half{path, dir}
			order = append(order, raw.Cookie)
		case raw.Mask&unix.IN_MOVED_TO != 0:
			old := from[raw.Cookie]
			delete(from, raw.Cookie)
			w.push(Event{Op: Renamed, Path: path, OldPath: old.path, Dir: dir})
			if dir && w.opts.Recursive {
				// Re-adding a moved directory's inodes returns their old
				// watch descriptors, which then map to the new paths.
				_ = w.addTree(path)
			}
		case raw.Mask&unix.IN_DELETE_SELF != 0 && name == "":
			w.push(Event{Op: Removed, Path: path})
		}
	}
	for _, c := range order {
		if h, ok := from[c]; ok {
			w.push(Event{Op: Renamed, OldPath: h.path, Dir: h.dir})
		}
	}
}

// bytesBeforeNUL trims the NUL padding of an inotify name.
func bytesBeforeNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}
