package image

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// aptStateFiles change whenever apt's view of the archive does: the
// package lists directory and the binary cache apt-cache reads.
var aptStateFiles = []string{"/var/lib/apt/lists", "/var/cache/apt/pkgcache.bin"}

// memoKey names a remembered apt-cache answer: its arguments and the state
// of apt's package lists. "" means do not remember (no lists state).
func (a *apt) memoKey(args []string) string {
	if a.memoDir == "" {
		return ""
	}
	var sb strings.Builder
	sb.WriteString(strings.Join(args, "\x00"))
	for _, f := range aptStateFiles {
		st, err := os.Stat(f)
		if err != nil {
			return ""
		}
		fmt.Fprintf(&sb, "\x00%s %d %d", f, st.Size(), st.ModTime().UnixNano())
	}
	return sha256Hex([]byte(sb.String()))
}

// memoGet returns a remembered apt-cache answer: apt-cache takes seconds
// on a loaded machine, and a cache hit should not wait for it.
func (a *apt) memoGet(args []string) ([]byte, bool) {
	k := a.memoKey(args)
	if k == "" {
		return nil, false
	}
	b, err := os.ReadFile(filepath.Join(a.memoDir, k))
	return b, err == nil && len(b) > 0
}

// memoPut remembers a successful apt-cache answer (best effort).
func (a *apt) memoPut(args []string, out []byte) {
	k := a.memoKey(args)
	if k == "" || len(out) == 0 || os.MkdirAll(a.memoDir, 0o755) != nil {
		return
	}
	tmp := filepath.Join(a.memoDir, "."+k+".tmp")
	if os.WriteFile(tmp, out, 0o644) == nil {
		os.Rename(tmp, filepath.Join(a.memoDir, k))
	}
}
