// Package consolelog keeps a VM's serial console on disk within a size
// cap, whatever the guest prints, and reads it back without loading it.
//
// The VMM writes the console to a pipe; a small logger process (Run, in a
// process of its own so that it outlives the program that started the VM)
// copies the pipe to <id>.log and, when that file reaches half the cap,
// renames it to <id>.log.1 (replacing the previous one) and starts a new
// <id>.log. The two files together never exceed the cap and always hold
// the newest output. The logger exits at end of file, when the VMM and
// every other holder of the pipe's write end are gone.
package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

// DefaultMaxBytes is the default cap of one VM's console on disk (8 MiB).
const DefaultMaxBytes = 8 << 20

// MinMaxBytes is the smallest cap accepted (64 KiB).
const MinMaxBytes = 64 << 10

// A read shorter than smallRead makes Run wait batchDelay before the
// next one.
const (
	smallRead  = 4096
	batchDelay = 5 * time.Millisecond
)

// Rotated returns the name of the older half of the log at path.
func Rotated(path string) string { return path + ".1" }

// Create makes a fresh, empty log file at path (mode 0600, never through a
// symlink) and removes its rotated half. The caller hands it to Run, so the
// file exists as soon as the VM is launched, whenever Run starts.
func Create(path string) (*os.File, error) {
	os.Remove(Rotated(path))
	return create(path)
}

// Run copies r into f, the log at path made by Create, until r ends,
// keeping path and Rotated(path) together under maxBytes
// (DefaultMaxBytes if <= 0). Once the log has been deleted (its VM was),
// Run writes nothing more and recreates nothing. Errors writing end the
// copy but r is still drained, so the writer (the VMM) never blocks on a
// full pipe. Run closes f.
func Run(r io.Reader, f *os.File, path string, maxBytes int64) error {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	half := max(maxBytes/2, 1)
	var size int64
	if fi, err := f.Stat(); err == nil {
		size = fi.Size()
	}
	buf := make([]byte, 64<<10)
	var werr error
	ready := readyLine{marker: []byte(bootparams.ReadyMarker)}
	for {
		n, rerr := r.Read(buf)
		if rerr == nil && n < smallRead && !ready.urgent(buf[:n]) {
			// A serial console trickles in a few bytes per write: let some
			// accumulate instead of paying a read and a write per byte.
			// The pipe holds far more than arrives meanwhile.
			time.Sleep(batchDelay)
		}
		p := buf[:n]
		for len(p) > 0 && werr == nil {
			if size >= half {
				if deleted(f) {
					werr = errDeleted
					break
				}
				f.Close()
				f = nil
				if werr = os.Rename(path, Rotated(path)); werr != nil {
					break
				}
				if f, werr = create(path); werr != nil {
					break
				}
				size = 0
			}
			k := min(int64(len(p)), half-size)
			var w int
			w, werr = f.Write(p[:k])
			size += int64(w)
			p = p[w:]
		}
		if rerr != nil {
			if f != nil {
				f.Close()
			}
			if errors.Is(rerr, io.EOF) || errors.Is(werr, errDeleted) {
				if errors.Is(werr, errDeleted) {
					werr = nil
				}
				return werr
			}
			return errors.Join(werr, rerr)
		}
	}
}

// readyLine finds the guest's ready marker line in the console stream:
// the host waits for it, so its bytes are written at once, not batched.
type readyLine struct {
	marker []byte
	tail   []byte // the end of what was read, for a marker split across reads
	inLine bool   // the marker was seen; its line is not complete yet
	done   bool   // the marker's line is complete
}

// urgent reports whether p (the next bytes of the stream) holds part of
// the first ready marker's line, up to its newline.
func (m *readyLine) urgent(p []byte) bool {
	if m.done {
		return false
	}
	if !m.inLine {
		chunk := append(m.tail, p...)
		i := bytes.Index(chunk, m.marker)
		if i < 0 {
			m.tail = append(m.tail[:0], chunk[max(0, len(chunk)-len(m.marker)+1):]...)
			return false
		}
		m.inLine, m.tail = true, nil
		p = chunk[i:]
	}
	if bytes.IndexByte(p, '\n') >= 0 {
		m.done = true
	}
	return true
}

// errDeleted stops the copy once the log was deleted.
var errDeleted = errors.New("console log deleted")

// deleted reports whether f has no name left.
func deleted(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 0
}

// create makes a fresh log file, never following a symlink planted in
// its place.
func create(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
}

// Tail returns the last n lines of the log at path (including its rotated
// half when the current one holds fewer), reading at most maxBytes from
// the end of each file. Carriage returns are dropped; the text is raw
// (see Sanitize).
func Tail(path string, n int, maxBytes int64) ([]byte, error) {
	cur, err := tailBytes(path, maxBytes)
	if err != nil {
		return nil, err
	}
	if bytes.Count(cur, []byte("\n")) <= n {
		if old, err := tailBytes(Rotated(path), maxBytes); err == nil && len(old) > 0 {
			cur = append(old, cur...)
		}
	}
	cur = bytes.ReplaceAll(cur, []byte("\r"), nil)
	cur = bytes.TrimRight(cur, "\n")
	lines := bytes.Split(cur, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n")), nil
}

// tailBytes reads the last maxBytes of path (an empty result for a missing file).
func tailBytes(path string, maxBytes int64) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-maxBytes, 0)
	b := make([]byte, fi.Size()-off)
	k, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b[:k], nil
}

// Copy writes the whole log at path to w, the rotated half first.
func Copy(w io.Writer, path string) error {
	for _, p := range []string{Rotated(path), path} {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		_, err = io.Copy(w, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Remove removes the log at path and its rotated half.
func Remove(path string) error {
	var errs []error
	for _, p := range []string{path, Rotated(path)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
