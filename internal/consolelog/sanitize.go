package consolelog

import (
	"unicode/utf8"
)

// Sanitize returns b without terminal control sequences: escape sequences
// (CSI, OSC, DCS and the other string commands, two-byte escapes), C0
// controls other than newline and tab, DEL and C1 controls are removed,
// and invalid UTF-8 becomes U+FFFD. Text from a guest goes through it
// before it reaches a terminal, so a guest cannot move the cursor, retitle
// the window, or send the terminal commands.
func Sanitize(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r == 0x1b:
			i = skipEscape(b, i+1)
			continue
		case r == 0x9b: // C1 CSI
			i = skipCSI(b, i+size)
			continue
		case r == 0x9d || r == 0x90 || r == 0x98 || r == 0x9e || r == 0x9f: // C1 OSC, DCS, SOS, PM, APC
			i = skipString(b, i+size)
			continue
		case r == '\n' || r == '\t':
			out = append(out, byte(r))
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
		case r == utf8.RuneError && size == 1:
			out = utf8.AppendRune(out, utf8.RuneError)
		default:
			out = append(out, b[i:i+size]...)
		}
		i += size
	}
	return out
}

// skipEscape skips what follows an ESC at b[i-1] and returns the index
// after the sequence.
func skipEscape(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '[':
		return skipCSI(b, i+1)
	case ']', 'P', 'X', '^', '_':
		return skipString(b, i+1)
	}
	// Intermediate bytes, then one final byte.
	for i < len(b) && b[i] >= 0x20 && b[i] <= 0x2f {
		i++
	}
	if i < len(b) {
		i++
	}
	return i
}

// skipCSI skips parameter and intermediate bytes and the final byte.
func skipCSI(b []byte, i int) int {
	for i < len(b) {
		c := b[i]
		i++
		if c >= 0x40 && c <= 0x7e {
			return i
		}
		if c < 0x20 || c > 0x7e {
			return i // not a CSI byte: the sequence is broken off
		}
	}
	return i
}

// skipString skips a control string up to BEL, ST (ESC \) or C1 ST.
func skipString(b []byte, i int) int {
	for i < len(b) {
		switch {
		case b[i] == 0x07:
			return i + 1
		case b[i] == 0x1b && i+1 < len(b) && b[i+1] == '\\':
			return i + 2
		case b[i] == 0xc2 && i+1 < len(b) && b[i+1] == 0x9c:
			return i + 2
		}
		i++
	}
	return i
}
