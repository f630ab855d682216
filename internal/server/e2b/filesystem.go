package e2b

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sync"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/server/e2b/filesystempb"
)

// Bounds of the filesystem service.
const (
	// maxListEntries bounds one ListDir answer.
	maxListEntries = 100_000
	// maxWatcherEvents bounds the events a polled watcher keeps between
	// polls; older ones are dropped.
	maxWatcherEvents = 10_000
	// maxWatchers bounds the polled watchers of one handler.
	maxWatchers = 1024
)

// filesystemService answers filesystem.Filesystem calls on a sandbox's VM.
type filesystemService struct{ h *Handler }

// entryOf converts a SmolVM file description to E2B's.
func entryOf(fi smolvm.FileInfo) *filesystempb.EntryInfo {
	e := &filesystempb.EntryInfo{
		Name: fi.Name, Path: fi.Path, Size: fi.Size, Mode: fi.Mode,
		Permissions:  fi.FileMode().String(),
		ModifiedTime: timestamppb.New(fi.ModTime),
	}
	switch fi.Type {
	case "file":
		e.Type = filesystempb.FileType_FILE_TYPE_FILE
	case "dir":
		e.Type = filesystempb.FileType_FILE_TYPE_DIRECTORY
		e.Permissions = (fs.ModeDir | fi.FileMode()).String()
	case "symlink":
		e.Type = filesystempb.FileType_FILE_TYPE_SYMLINK
		e.Permissions = (fs.ModeSymlink | fi.FileMode()).String()
		t := fi.SymlinkTarget
		e.SymlinkTarget = &t
	}
	return e
}

func (f *filesystemService) stat(ctx context.Context, p string) (*filesystempb.EntryInfo, error) {
	fi, err := vmOf(ctx).Stat(ctx, p)
	if err != nil {
		return nil, connectErr(err)
	}
	return entryOf(fi), nil
}

// Stat describes a path.
func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[filesystempb.StatRequest]) (*connect.Response[filesystempb.StatResponse], error) {
	e, err := f.stat(ctx, resolvePath(ctx, req.Msg.GetPath()))
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystempb.StatResponse{Entry: e}), nil
}

// MakeDir creates a directory and its parents; an existing path is
// AlreadyExists (the SDK then reports false).
func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[filesystempb.MakeDirRequest]) (*connect.Response[filesystempb.MakeDirResponse], error) {
	vm, p := vmOf(ctx), resolvePath(ctx, req.Msg.GetPath())
	if ok, err := vm.Exists(ctx, p); err != nil {
		return nil, connectErr(err)
	} else if ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s already exists", p))
	}
	if err := vm.MkdirAll(ctx, p, 0o755); err != nil {
		return nil, connectErr(err)
	}
	if err := f.chownHome(ctx, p); err != nil {
		return nil, err
	}
	e, err := f.stat(ctx, p)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystempb.MakeDirResponse{Entry: e}), nil
}

// chownHome gives a path made for a non-root user to that user, as envd
// (which runs the call as the user) would have.
func (f *filesystemService) chownHome(ctx context.Context, p string) error {
	u := userOf(ctx)
	if u == "root" || u == "0" {
		return nil
	}
	_, err := vmOf(ctx).Exec(ctx, smolvm.ExecOptions{Argv: []string{"chown", u + ":", p}})
	if err != nil {
		return connectErr(err)
	}
	return nil
}

// Move renames a path.
func (f *filesystemService) Move(ctx context.Context, req *connect.Request[filesystempb.MoveRequest]) (*connect.Response[filesystempb.MoveResponse], error) {
	vm := vmOf(ctx)
	from, to := resolvePath(ctx, req.Msg.GetSource()), resolvePath(ctx, req.Msg.GetDestination())
	if err := vm.Move(ctx, from, to); err != nil {
		return nil, connectErr(err)
	}
	e, err := f.stat(ctx, to)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystempb.MoveResponse{Entry: e}), nil
}

// ListDir lists a directory to the depth asked (1: its own entries).
func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[filesystempb.ListDirRequest]) (*connect.Response[filesystempb.ListDirResponse], error) {
	vm, p := vmOf(ctx), resolvePath(ctx, req.Msg.GetPath())
	depth := int(req.Msg.GetDepth())
	if depth > 64 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("depth must be at most 64"))
	}
	fi, err := vm.Stat(ctx, p)
	if err != nil {
		return nil, connectErr(err)
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s is not a directory", p))
	}
	out := &filesystempb.ListDirResponse{}
	err = vm.ListFunc(ctx, p, smolvm.ListFilesOptions{Depth: depth, MaxEntries: maxListEntries}, func(fi smolvm.FileInfo) error {
		out.Entries = append(out.Entries, entryOf(fi))
		return nil
	})
	if err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(out), nil
}

// Remove removes a path, recursively.
func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[filesystempb.RemoveRequest]) (*connect.Response[filesystempb.RemoveResponse], error) {
	vm, p := vmOf(ctx), resolvePath(ctx, req.Msg.GetPath())
	if path.Clean(p) == "/" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("refusing to remove /"))
	}
	if err := vm.RemoveAll(ctx, p); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&filesystempb.RemoveResponse{}), nil
}

// eventsOf converts a SmolVM file-system event to E2B's, as inotify
// watchers report them: a rename is a rename of the old name (when it was
// inside the watch) and a creation of the new one. Overflow and unknown
// operations have none.
func eventsOf(root string, ev smolvm.FsEvent) []*filesystempb.FilesystemEvent {
	name := func(p string) string {
		if rel, ok := relTo(root, p); ok {
			return rel
		}
		return p
	}
	one := func(t filesystempb.EventType, p string) []*filesystempb.FilesystemEvent {
		return []*filesystempb.FilesystemEvent{{Name: name(p), Type: t}}
	}
	switch ev.Op {
	case "created":
		return one(filesystempb.EventType_EVENT_TYPE_CREATE, ev.Path)
	case "modified":
		return one(filesystempb.EventType_EVENT_TYPE_WRITE, ev.Path)
	case "removed":
		return one(filesystempb.EventType_EVENT_TYPE_REMOVE, ev.Path)
	case "renamed":
		var out []*filesystempb.FilesystemEvent
		if ev.OldPath != "" {
			out = one(filesystempb.EventType_EVENT_TYPE_RENAME, ev.OldPath)
		}
		if ev.Path != "" {
			out = append(out, one(filesystempb.EventType_EVENT_TYPE_CREATE, ev.Path)...)
		}
		return out
	}
	return nil
}

// relTo returns p relative to root when it is inside it.
func relTo(root, p string) (string, bool) {
	root = path.Clean(root)
	if root == "/" {
		return p[1:], len(p) > 1
	}
	if len(p) > len(root) && p[:len(root)] == root && p[len(root)] == '/' {
		return p[len(root)+1:], true
	}
	return "", false
}

// WatchDir streams the changes under a directory.
func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[filesystempb.WatchDirRequest], stream *connect.ServerStream[filesystempb.WatchDirResponse]) error {
	vm, p := vmOf(ctx), resolvePath(ctx, req.Msg.GetPath())
	w, err := vm.Watch(ctx, p, smolvm.WatchOptions{Recursive: req.Msg.GetRecursive()})
	if err != nil {
		return connectErr(err)
	}
	defer w.Close()
	if err := stream.Send(&filesystempb.WatchDirResponse{Event: &filesystempb.WatchDirResponse_Start{Start: &filesystempb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	for {
		ev, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // the SDK stopped watching
			}
			return connectErr(err)
		}
		for _, fe := range eventsOf(p, ev) {
			if err := stream.Send(&filesystempb.WatchDirResponse{Event: &filesystempb.WatchDirResponse_Filesystem{Filesystem: fe}}); err != nil {
				return err
			}
		}
	}
}

// pollWatcher is a watch whose events are fetched by GetWatcherEvents.
type pollWatcher struct {
	sandbox string
	root    string
	w       *smolvm.Watcher
	cancel  context.CancelFunc

	mu     sync.Mutex
	events []*filesystempb.FilesystemEvent
	err    error
}

func (pw *pollWatcher) run(ctx context.Context) {
	for {
		ev, err := pw.w.Next(ctx)
		pw.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				pw.err = err
			}
			pw.mu.Unlock()
			return
		}
		for _, fe := range eventsOf(pw.root, ev) {
			if len(pw.events) >= maxWatcherEvents {
				pw.events = pw.events[1:]
			}
			pw.events = append(pw.events, fe)
		}
		pw.mu.Unlock()
	}
}

func (pw *pollWatcher) close() {
	pw.cancel()
	pw.w.Close()
}

// CreateWatcher starts a watch polled with GetWatcherEvents.
func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[filesystempb.CreateWatcherRequest]) (*connect.Response[filesystempb.CreateWatcherResponse], error) {
	vm, p := vmOf(ctx), resolvePath(ctx, req.Msg.GetPath())
	f.h.mu.Lock()
	n := len(f.h.watchers)
	f.h.mu.Unlock()
	if n >= maxWatchers {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("at most %d watchers", maxWatchers))
	}
	w, err := vm.Watch(ctx, p, smolvm.WatchOptions{Recursive: req.Msg.GetRecursive()})
	if err != nil {
		return nil, connectErr(err)
	}
	var b [12]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pw := &pollWatcher{sandbox: vm.ID(), root: p, w: w, cancel: cancel}
	go pw.run(wctx)
	f.h.mu.Lock()
	f.h.watchers[id] = pw
	f.h.mu.Unlock()
	return connect.NewResponse(&filesystempb.CreateWatcherResponse{WatcherId: id}), nil
}

// watcher returns a polled watcher of the calling sandbox.
func (f *filesystemService) watcher(ctx context.Context, id string) (*pollWatcher, error) {
	f.h.mu.Lock()
	pw := f.h.watchers[id]
	f.h.mu.Unlock()
	if pw == nil || pw.sandbox != vmOf(ctx).ID() {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	return pw, nil
}

// GetWatcherEvents returns and clears a watcher's events.
func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystempb.GetWatcherEventsRequest]) (*connect.Response[filesystempb.GetWatcherEventsResponse], error) {
	pw, err := f.watcher(ctx, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	pw.mu.Lock()
	evs, werr := pw.events, pw.err
	pw.events = nil
	pw.mu.Unlock()
	if len(evs) == 0 && werr != nil {
		return nil, connectErr(werr)
	}
	return connect.NewResponse(&filesystempb.GetWatcherEventsResponse{Events: evs}), nil
}

// RemoveWatcher stops a watcher.
func (f *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[filesystempb.RemoveWatcherRequest]) (*connect.Response[filesystempb.RemoveWatcherResponse], error) {
	pw, err := f.watcher(ctx, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	f.h.mu.Lock()
	delete(f.h.watchers, req.Msg.GetWatcherId())
	f.h.mu.Unlock()
	pw.close()
	return connect.NewResponse(&filesystempb.RemoveWatcherResponse{}), nil
}
