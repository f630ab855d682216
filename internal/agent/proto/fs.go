package proto

// File-system methods.
const (
	// MethodFsStat describes one path without following a final symlink;
	// args PathArgs, result FileInfo.
	MethodFsStat = "fs.stat"
	// MethodFsList streams one JSON FileInfo per line on ChanOut for the
	// entries under a directory; args FsListArgs, result FsListResult.
	MethodFsList = "fs.list"
	// MethodFsMkdir creates a directory; args FsMkdirArgs.
	MethodFsMkdir = "fs.mkdir"
	// MethodFsMove renames a path; args FsMoveArgs.
	MethodFsMove = "fs.move"
	// MethodFsRemove removes a path; args FsRemoveArgs.
	MethodFsRemove = "fs.remove"
	// MethodFsWatch streams one JSON FsEvent per line on ChanOut until the
	// host cancels; the first line has Op EventWatching. Args FsWatchArgs.
	MethodFsWatch = "fs.watch"
	// MethodDirUpload extracts the tar stream sent on ChanIn into a
	// directory; args DirArgs, result TarResult.
	MethodDirUpload = "dir.upload"
	// MethodDirDownload streams a directory as a tar on ChanOut; args
	// DirArgs, result TarResult.
	MethodDirDownload = "dir.download"
)

// File types of FileInfo.Type.
const (
	FileRegular = "file"
	FileDir     = "dir"
	FileSymlink = "symlink"
	FileFIFO    = "fifo"
	FileSocket  = "socket"
	FileDevice  = "device"
	FileCharDev = "chardev"
	FileOther   = "other"
)

// PathArgs name one guest path.
type PathArgs struct {
	// Path is an absolute guest path.
	Path string `json:"path"`
}

// FileInfo describes one file.
type FileInfo struct {
	// Name is the last path element.
	Name string `json:"name"`
	// Path is the absolute path.
	Path string `json:"path"`
	// Type is one of the File* constants.
	Type string `json:"type"`
	// Size is the length in bytes (for a symlink, of its target text).
	Size int64 `json:"size"`
	// Mode holds Unix permission bits, including setuid, setgid, sticky.
	Mode uint32 `json:"mode"`
	// MtimeUnixNano is the modification time.
	MtimeUnixNano int64 `json:"mtime_ns"`
	// Target is a symlink's target, as stored.
	Target string `json:"target,omitempty"`
}

// FsListArgs are the arguments of MethodFsList.
type FsListArgs struct {
	// Path is the absolute directory to list.
	Path string `json:"path"`
	// Depth is how many levels to descend: 1 (or 0) lists the directory's
	// own entries, 2 also their children, and so on. Symlinks to
	// directories are not followed.
	Depth int `json:"depth,omitempty"`
}

// FsListResult is the result of MethodFsList.
type FsListResult struct {
	// Entries is the number of lines sent.
	Entries int `json:"entries"`
	// Errors counts subdirectories that could not be read.
	Errors int `json:"errors,omitempty"`
}

// FsMkdirArgs are the arguments of MethodFsMkdir.
type FsMkdirArgs struct {
	// Path is the absolute directory to create.
	Path string `json:"path"`
	// Mode holds the permission bits; 0 means 0755.
	Mode uint32 `json:"mode,omitempty"`
	// Parents creates missing parents and accepts an existing directory,
	// like mkdir -p.
	Parents bool `json:"parents,omitempty"`
}

// FsMoveArgs are the arguments of MethodFsMove.
type FsMoveArgs struct {
	// From is the absolute path to move.
	From string `json:"from"`
	// To is the absolute new path.
	To string `json:"to"`
	// NoReplace fails with ErrAlreadyExists if To exists.
	NoReplace bool `json:"no_replace,omitempty"`
}

// FsRemoveArgs are the arguments of MethodFsRemove.
type FsRemoveArgs struct {
	// Path is the absolute path to remove; "/" is refused.
	Path string `json:"path"`
	// Recursive removes a directory and its content; a missing path is
	// then not an error.
	Recursive bool `json:"recursive,omitempty"`
}

// FsWatchArgs are the arguments of MethodFsWatch.
type FsWatchArgs struct {
	// Path is the absolute directory (or file) to watch.
	Path string `json:"path"`
	// Recursive also watches subdirectories, including new ones.
	Recursive bool `json:"recursive,omitempty"`
}

// Event operations of FsEvent.Op.
const (
	EventWatching = "watching" // first line: the watch is in place
	EventCreated  = "created"
	EventModified = "modified"
	EventRemoved  = "removed"
	EventRenamed  = "renamed"  // Path is the new name, OldPath the old one if known
	EventOverflow = "overflow" // events were dropped; Dropped says how many
)

// FsEvent is one file-system change.
type FsEvent struct {
	// Op is one of the Event* constants.
	Op string `json:"op"`
	// Path is the absolute path concerned.
	Path string `json:"path,omitempty"`
	// OldPath is a rename's source, when both ends are watched.
	OldPath string `json:"old_path,omitempty"`
	// Dir reports whether Path is a directory.
	Dir bool `json:"dir,omitempty"`
	// Dropped counts events lost before an EventOverflow.
	Dropped int `json:"dropped,omitempty"`
}

// DirArgs are the arguments of MethodDirUpload and MethodDirDownload.
type DirArgs struct {
	// Path is the absolute guest directory. An upload creates it (and its
	// parents) if missing.
	Path string `json:"path"`
}

// TarResult is the result of MethodDirUpload and MethodDirDownload.
type TarResult struct {
	// Entries is the number of tar entries written or extracted.
	Entries int `json:"entries"`
	// Bytes is the total size of regular file content.
	Bytes int64 `json:"bytes"`
	// Skipped counts files left out (devices, sockets, fifos, unreadable).
	Skipped int `json:"skipped,omitempty"`
}
