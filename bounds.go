package smolvm

import (
	"io"
	"io/fs"
	"unsafe"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/dirtar"
)

// Bounds on what a guest can make the host hold (issue 13).

// DefaultMaxOutputBytes is how much of each output stream Run keeps by
// default (16 MiB); the rest is read from the guest and discarded.
const DefaultMaxOutputBytes = agent.DefaultMaxOutputBytes

// RunMaxOutputBytes makes Run keep at most n bytes of each of stdout and
// stderr (n <= 0: no cap, which lets a guest fill the host's memory).
func RunMaxOutputBytes(n int64) RunOption {
	return func(e *ExecOptions) { e.MaxOutputBytes = max(n, 0) }
}

// DownloadOption tunes Download and DownloadFile.
type DownloadOption func(*downloadOptions)

type downloadOptions struct {
	maxBytes int64
}

// DownloadMaxBytes fails a download once the guest has sent more than n
// bytes (n <= 0: no limit, the default).
func DownloadMaxBytes(n int64) DownloadOption {
	return func(o *downloadOptions) { o.maxBytes = max(n, 0) }
}

// SafeMode returns the mode the host gives a file downloaded from a guest:
// m without setuid, setgid and sticky bits and without group or other
// write, so at most 0755 (0644 for a file that is not executable).
func SafeMode(m fs.FileMode) fs.FileMode { return dirtar.SafeMode(m) }

// limitWriter fails once more than left bytes are written.
type limitWriter struct {
	w    io.Writer
	left int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, errDownloadTooLarge
	}
	l.left -= int64(len(p))
	return l.w.Write(p)
}

var errDownloadTooLarge = configErr("max_bytes", "", "the file is larger than the download limit")

// capBuffer collects at most limit bytes (0: no limit) and grows its
// backing array no further than the limit, so a flood costs the host at
// most limit bytes, not the doubling a bytes.Buffer would allocate. Bytes
// beyond the limit are dropped; callers wrap it in agent.LimitedWriter
// (through ExecRequest.MaxOutputBytes) to learn that they were.
type capBuffer struct {
	b     []byte
	limit int64
}

func newCapBuffer(limit int64) *capBuffer { return &capBuffer{limit: limit} }

// Write implements io.Writer.
func (c *capBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if c.limit > 0 {
		p = p[:min(int64(len(p)), max(c.limit-int64(len(c.b)), 0))]
	}
	if len(c.b)+len(p) > cap(c.b) {
		want := max(2*cap(c.b), len(c.b)+len(p), 4096)
		if c.limit > 0 {
			want = min(want, int(c.limit))
		}
		nb := make([]byte, len(c.b), want)
		copy(nb, c.b)
		c.b = nb
	}
	c.b = append(c.b, p...)
	return n, nil
}

// String returns the collected bytes without copying them; the buffer must
// not be written afterwards.
func (c *capBuffer) String() string {
	if len(c.b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(c.b), len(c.b))
}

// RedactedValue replaces secret values in output meant for people and logs.
const RedactedValue = "********"

// Redacted returns a copy of inf whose env var values are RedactedValue:
// the names stay visible, the values (often API keys) do not. The CLI's
// info and list print this unless --show-values.
func (inf VMInfo) Redacted() VMInfo {
	if len(inf.Config.EnvVars) == 0 {
		return inf
	}
	env := make(map[string]string, len(inf.Config.EnvVars))
	for k := range inf.Config.EnvVars {
		env[k] = RedactedValue
	}
	inf.Config.EnvVars = env
	return inf
}
