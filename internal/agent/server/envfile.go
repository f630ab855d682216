package server

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// envFileHeader starts every env file the agent writes.
const envFileHeader = "# Written by the smolvm agent: persistent environment variables.\n# Change them with `smolvm env`; edits here may be overwritten.\n"

// validEnvKey reports whether k matches [A-Za-z_][A-Za-z0-9_]*.
func validEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// checkEnvVar validates a key and value for the env file.
func checkEnvVar(k, v string) error {
	if !validEnvKey(k) {
		return fmt.Errorf("%w: environment variable name %q must match [A-Za-z_][A-Za-z0-9_]*", proto.ErrInvalidArgument, k)
	}
	if strings.ContainsRune(v, 0) {
		return fmt.Errorf("%w: value of %s contains a NUL byte", proto.ErrInvalidArgument, k)
	}
	return nil
}

// shellQuote quotes v for a POSIX shell: v in single quotes, where each quote
// inside v closes the quoting, adds an escaped quote and reopens it.
func shellQuote(v string) string {
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// formatEnvFile renders vars as `export K='v'` lines, sorted by key.
func formatEnvFile(vars map[string]string) []byte {
	var b bytes.Buffer
	b.WriteString(envFileHeader)
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(vars[k]))
	}
	return b.Bytes()
}

// parseEnvFile parses what formatEnvFile writes: comment lines, blank lines
// and `export K=<quoted>` statements where <quoted> is a sequence of '...'
// and \' pieces (single-quoted strings may span lines).
func parseEnvFile(data []byte) (map[string]string, error) {
	vars := make(map[string]string)
	s := string(data)
	line := 1
	for len(s) > 0 {
		switch {
		case s[0] == '\n':
			s, line = s[1:], line+1
			continue
		case s[0] == ' ' || s[0] == '\t':
			s = s[1:]
			continue
		case s[0] == '#':
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[i:]
			} else {
				s = ""
			}
			continue
		}
		rest, ok := strings.CutPrefix(s, "export ")
		if !ok {
			return nil, fmt.Errorf("%w: env file line %d: expected export", proto.ErrInternal, line)
		}
		eq := strings.IndexByte(rest, '=')
		if eq < 0 || !validEnvKey(rest[:eq]) {
			return nil, fmt.Errorf("%w: env file line %d: bad variable name", proto.ErrInternal, line)
		}
		key := rest[:eq]
		value, n, lines, err := unquote(rest[eq+1:])
		if err != nil {
			return nil, fmt.Errorf("%w: env file line %d: %v", proto.ErrInternal, line, err)
		}
		vars[key] = value
		s, line = rest[eq+1+n:], line+lines
		if len(s) > 0 && s[0] != '\n' {
			return nil, fmt.Errorf("%w: env file line %d: trailing text after value", proto.ErrInternal, line)
		}
	}
	return vars, nil
}

// unquote decodes a word made of '...' and \' pieces at the start of s. It
// returns the value, the number of bytes consumed and the newlines inside.
func unquote(s string) (value string, n, lines int, err error) {
	var b strings.Builder
	for n < len(s) {
		switch {
		case s[n] == '\'':
			end := strings.IndexByte(s[n+1:], '\'')
			if end < 0 {
				return "", 0, 0, fmt.Errorf("unterminated quote")
			}
			piece := s[n+1 : n+1+end]
			b.WriteString(piece)
			lines += strings.Count(piece, "\n")
			n += end + 2
		case strings.HasPrefix(s[n:], `\'`):
			b.WriteByte('\'')
			n += 2
		default:
			return b.String(), n, lines, nil
		}
	}
	return b.String(), n, lines, nil
}
