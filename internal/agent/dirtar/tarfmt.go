package dirtar

// A small tar codec (ustar with PAX extended headers, reading GNU long
// names too). archive/tar cannot be used: it imports os/user, which would
// make the statically linked guest agent depend on libc when built with cgo.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Entry types.
const (
	typeReg      = '0'
	typeRegA     = '\x00'
	typeLink     = '1'
	typeSymlink  = '2'
	typeDir      = '5'
	typePAX      = 'x'
	typePAXGlob  = 'g'
	typeGNUName  = 'L'
	typeGNULink  = 'K'
	blockSize    = 512
	maxExtHeader = 1 << 20 // bound on a PAX or GNU long-name record
)

// header is one archive entry.
type header struct {
	Name     string
	Linkname string
	Typeflag byte
	Mode     int64 // Unix mode bits (permissions and setuid/setgid/sticky)
	Size     int64
	ModTime  time.Time
}

// tarReader reads entries from an archive.
type tarReader struct {
	r         io.Reader
	remaining int64 // content bytes left in the current entry
	pad       int64 // padding after them
	block     [blockSize]byte
}

func newTarReader(r io.Reader) *tarReader { return &tarReader{r: r} }

// errBadArchive marks malformed input.
var errBadArchive = fmt.Errorf("%w: bad tar archive", proto.ErrInvalidArgument)

// Next skips the rest of the current entry and returns the next header, or
// io.EOF at the end of the archive.
func (t *tarReader) Next() (*header, error) {
	if _, err := io.CopyN(io.Discard, t.r, t.remaining+t.pad); err != nil {
		return nil, unexpected(err)
	}
	t.remaining, t.pad = 0, 0
	var pax map[string]string
	var longName, longLink string
	for {
		if _, err := io.ReadFull(t.r, t.block[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.EOF // a stream without end blocks
			}
			return nil, unexpected(err)
		}
		if t.block == [blockSize]byte{} {
			return nil, io.EOF // the first end block
		}
		h, err := parseBlock(&t.block)
		if err != nil {
			return nil, err
		}
		switch h.Typeflag {
		case typePAX, typePAXGlob, typeGNUName, typeGNULink:
			data, err := t.readExt(h.Size)
			if err != nil {
				return nil, err
			}
			switch h.Typeflag {
			case typePAX:
				if pax, err = parsePAX(data); err != nil {
					return nil, err
				}
			case typeGNUName:
				longName = string(bytes.TrimRight(data, "\x00"))
			case typeGNULink:
				longLink = string(bytes.TrimRight(data, "\x00"))
			}
			continue
		}
		if longName != "" {
			h.Name = longName
		}
		if longLink != "" {
			h.Linkname = longLink
		}
		if err := applyPAX(h, pax); err != nil {
			return nil, err
		}
		if h.Typeflag == typeReg || h.Typeflag == typeRegA {
			t.remaining = h.Size
			t.pad = (blockSize - h.Size%blockSize) % blockSize
		} else if h.Size > 0 && h.Typeflag != typeDir && h.Typeflag != typeSymlink && h.Typeflag != typeLink {
			t.remaining = h.Size // content of a skipped type
			t.pad = (blockSize - h.Size%blockSize) % blockSize
		}
		return h, nil
	}
}

// readExt reads an extended header record of size bytes (bounded).
func (t *tarReader) readExt(size int64) ([]byte, error) {
	if size < 0 || size > maxExtHeader {
		return nil, fmt.Errorf("%w: extended header of %d bytes", errBadArchive, size)
	}
	buf := make([]byte, size+(blockSize-size%blockSize)%blockSize)
	if _, err := io.ReadFull(t.r, buf); err != nil {
		return nil, unexpected(err)
	}
	return buf[:size], nil
}

// Read reads the current entry's content.
func (t *tarReader) Read(p []byte) (int, error) {
	if t.remaining == 0 {
		return 0, io.EOF
	}
	n, err := t.r.Read(p[:min(int64(len(p)), t.remaining)])
	t.remaining -= int64(n)
	if err != nil && (t.remaining > 0 || !errors.Is(err, io.EOF)) {
		return n, unexpected(err)
	}
	return n, nil
}

// unexpected turns a premature end into a bad-archive error.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated", errBadArchive)
	}
	return err
}

// parseBlock decodes a ustar (or old-style) header block.
func parseBlock(b *[blockSize]byte) (*header, error) {
	sum, err := parseNumeric(b[148:156])
	if err != nil {
		return nil, err
	}
	var unsigned, signed int64
	for i, c := range b {
		if i >= 148 && i < 156 {
			c = ' '
		}
		unsigned += int64(c)
		signed += int64(int8(c))
	}
	if sum != unsigned && sum != signed {
		return nil, fmt.Errorf("%w: header checksum mismatch", errBadArchive)
	}
	h := &header{Typeflag: b[156], Name: cstring(b[0:100]), Linkname: cstring(b[157:257])}
	if string(b[257:262]) == "ustar" {
		if prefix := cstring(b[345:500]); prefix != "" {
			h.Name = prefix + "/" + h.Name
		}
	}
	if h.Mode, err = parseNumeric(b[100:108]); err != nil {
		return nil, err
	}
	if h.Size, err = parseNumeric(b[124:136]); err != nil {
		return nil, err
	}
	mtime, err := parseNumeric(b[136:148])
	if err != nil {
		return nil, err
	}
	h.ModTime = time.Unix(mtime, 0)
	if h.Size < 0 {
		return nil, fmt.Errorf("%w: negative size", errBadArchive)
	}
	return h, nil
}

// cstring returns b up to its first NUL.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// parseNumeric decodes an octal field, or a GNU base-256 one.
func parseNumeric(b []byte) (int64, error) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0] != 0x80 || len(b) > 9 && bytes.ContainsFunc(b[1:len(b)-8], func(r rune) bool { return r != 0 }) {
			return 0, fmt.Errorf("%w: numeric field out of range", errBadArchive)
		}
		var v uint64
		for _, c := range b[max(1, len(b)-8):] {
			v = v<<8 | uint64(c)
		}
		if v > 1<<62 {
			return 0, fmt.Errorf("%w: numeric field out of range", errBadArchive)
		}
		return int64(v), nil
	}
	s := strings.Trim(string(b), " \x00")
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 8, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: numeric field %q", errBadArchive, s)
	}
	return v, nil
}

// parsePAX decodes "length key=value\n" records.
func parsePAX(data []byte) (map[string]string, error) {
	m := map[string]string{}
	for len(data) > 0 {
		sp := bytes.IndexByte(data, ' ')
		if sp < 0 {
			return nil, fmt.Errorf("%w: PAX record", errBadArchive)
		}
		n, err := strconv.Atoi(string(data[:sp]))
		if err != nil || n <= sp+1 || n > len(data) || data[n-1] != '\n' {
			return nil, fmt.Errorf("%w: PAX record", errBadArchive)
		}
		kv := data[sp+1 : n-1]
		eq := bytes.IndexByte(kv, '=')
		if eq < 0 {
			return nil, fmt.Errorf("%w: PAX record", errBadArchive)
		}
		m[string(kv[:eq])] = string(kv[eq+1:])
		data = data[n:]
	}
	return m, nil
}

// applyPAX overrides header fields from PAX records.
func applyPAX(h *header, pax map[string]string) error {
	if v, ok := pax["path"]; ok {
		h.Name = v
	}
	if v, ok := pax["linkpath"]; ok {
		h.Linkname = v
	}
	if v, ok := pax["size"]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("%w: PAX size %q", errBadArchive, v)
		}
		h.Size = n
	}
	if v, ok := pax["mtime"]; ok {
		sec, frac, _ := strings.Cut(v, ".")
		s, err := strconv.ParseInt(sec, 10, 64)
		if err != nil {
			return fmt.Errorf("%w: PAX mtime %q", errBadArchive, v)
		}
		ns := int64(0)
		if frac != "" {
			frac = (frac + "000000000")[:9]
			ns, _ = strconv.ParseInt(frac, 10, 64)
		}
		h.ModTime = time.Unix(s, ns)
	}
	return nil
}

// tarWriter writes an archive.
type tarWriter struct {
	w         io.Writer
	remaining int64
	pad       int64
}

func newTarWriter(w io.Writer) *tarWriter { return &tarWriter{w: w} }

// WriteHeader starts an entry; names or link targets that do not fit the
// ustar fields, or are not plain, go in a PAX record, as does the mtime's
// fraction.
func (t *tarWriter) WriteHeader(h *header) error {
	if t.remaining != 0 {
		return fmt.Errorf("tar: %d content bytes missing", t.remaining)
	}
	pax := map[string]string{}
	if len(h.Name) > 100 || !plain(h.Name) {
		pax["path"] = h.Name
	}
	if len(h.Linkname) > 100 || !plain(h.Linkname) {
		pax["linkpath"] = h.Linkname
	}
	if ns := h.ModTime.Nanosecond(); ns != 0 {
		pax["mtime"] = fmt.Sprintf("%d.%09d", h.ModTime.Unix(), ns)
	}
	if len(pax) > 0 {
		var rec []byte
		for _, k := range []string{"path", "linkpath", "mtime"} {
			if v, ok := pax[k]; ok {
				rec = append(rec, paxRecord(k, v)...)
			}
		}
		if err := t.block(&header{Name: "PaxHeader", Typeflag: typePAX, Size: int64(len(rec)), Mode: 0o644, ModTime: h.ModTime}, rec); err != nil {
			return err
		}
	}
	if err := t.block(h, nil); err != nil {
		return err
	}
	if h.Typeflag == typeReg {
		t.remaining = h.Size
		t.pad = (blockSize - h.Size%blockSize) % blockSize
	}
	return nil
}

// plain reports whether s is printable ASCII, safe in a ustar field.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// paxRecord encodes "length key=value\n", where length counts itself.
func paxRecord(k, v string) []byte {
	size := len(k) + len(v) + 3 // ' ', '=', '\n'
	size += len(strconv.Itoa(size))
	rec := fmt.Appendf(nil, "%d %s=%s\n", size, k, v)
	if len(rec) != size { // the length grew a digit
		rec = fmt.Appendf(nil, "%d %s=%s\n", len(rec), k, v)
	}
	return rec
}

// block writes a header block for h, then data padded to blocks.
func (t *tarWriter) block(h *header, data []byte) error {
	var b [blockSize]byte
	copy(b[0:100], truncate(h.Name, 100))
	putOctal(b[100:108], h.Mode&0o7777)
	putOctal(b[108:116], 0)
	putOctal(b[116:124], 0)
	if err := putSize(b[124:136], h.Size); err != nil {
		return err
	}
	putOctal(b[136:148], max(0, h.ModTime.Unix()))
	b[156] = h.Typeflag
	copy(b[157:257], truncate(h.Linkname, 100))
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	putOctal(b[148:155], sum)
	b[155] = ' '
	if _, err := t.w.Write(b[:]); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := t.w.Write(data); err != nil {
		return err
	}
	_, err := t.w.Write(make([]byte, (blockSize-len(data)%blockSize)%blockSize))
	return err
}

// truncate cuts s to n bytes for a fixed field (the full value is in PAX).
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// putOctal writes v as NUL-terminated octal filling b.
func putOctal(b []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	s = strings.Repeat("0", max(0, len(b)-1-len(s))) + s
	copy(b, s)
	b[len(b)-1] = 0
}

// putSize writes a size, in base 256 when octal cannot hold it.
func putSize(b []byte, v int64) error {
	if v < 0 {
		return fmt.Errorf("tar: negative size")
	}
	if v < 1<<33 {
		putOctal(b, v)
		return nil
	}
	clear(b)
	b[0] = 0x80
	for i := len(b) - 1; i > 0 && v > 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return nil
}

// Write writes content of the current entry.
func (t *tarWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > t.remaining {
		return 0, fmt.Errorf("tar: write beyond the entry's size")
	}
	n, err := t.w.Write(p)
	t.remaining -= int64(n)
	if err == nil && t.remaining == 0 && t.pad > 0 {
		_, err = t.w.Write(make([]byte, t.pad))
		t.pad = 0
	}
	return n, err
}

// Close writes the two end blocks.
func (t *tarWriter) Close() error {
	if t.remaining != 0 {
		return fmt.Errorf("tar: %d content bytes missing", t.remaining)
	}
	_, err := t.w.Write(make([]byte, 2*blockSize))
	return err
}
