package proto

import (
	"bytes"
	"hash/crc32"
	"io"
)

// Decoder reads frames from a byte stream, skipping any bytes that do not
// form a valid frame (wrong magic, bad header checksum, oversized length). A
// header whose checksum holds but whose payload checksum fails makes the
// decoder skip the whole claimed frame (at most MaxFrameSize bytes). Lengths
// above MaxPayload are refused from the header, before anything is waited
// for or allocated. Its memory is bounded: one buffer of twice MaxFrameSize
// plus the payload it returns.
type Decoder struct {
	r          io.Reader
	buf        []byte
	start, end int   // unconsumed bytes are buf[start:end]
	err        error // sticky read error, returned once the buffer is exhausted
	skipped    int64
}

// NewDecoder returns a Decoder reading from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: r, buf: make([]byte, 2*MaxFrameSize)}
}

// Skipped reports how many bytes the decoder has discarded as garbage.
func (d *Decoder) Skipped() int64 { return d.skipped }

// Next returns the next valid frame. It returns the reader's error (io.EOF
// at the end of the stream) once no complete frame remains; a partial frame
// at the end of the stream is dropped.
func (d *Decoder) Next() (Frame, error) {
	for {
		if f, ok := d.parse(); ok {
			return f, nil
		}
		if err := d.fill(); err != nil {
			return Frame{}, err
		}
	}
}

// parse extracts one frame from the buffered bytes, discarding garbage in
// front of it. It reports false when more input is needed; then fewer than
// MaxFrameSize bytes remain buffered.
func (d *Decoder) parse() (Frame, bool) {
	for {
		b := d.buf[d.start:d.end]
		i := bytes.Index(b, []byte(magic))
		if i < 0 {
			// Keep a tail that may be the start of a magic.
			keep := min(len(b), len(magic)-1)
			d.discard(len(b) - keep)
			return Frame{}, false
		}
		d.discard(i)
		b = b[i:]
		if len(b) < HeaderSize {
			return Frame{}, false
		}
		h, ok := parseHeader(b[:HeaderSize])
		if !ok {
			d.discard(1)
			continue
		}
		total := HeaderSize + h.length
		if len(b) < total {
			return Frame{}, false
		}
		payload := b[HeaderSize:total]
		if crc32.Checksum(payload, castagnoli) != h.crc {
			// A valid header with a bad payload: skip the whole claimed
			// frame, so frames nested in its payload are not parsed and
			// each checksum costs at least the bytes it skips.
			d.discard(total)
			continue
		}
		f := Frame{Type: h.typ, Channel: h.channel, Stream: h.stream}
		if h.length > 0 {
			f.Payload = bytes.Clone(payload)
		}
		d.start += total
		return f, true
	}
}

// discard drops n buffered bytes as garbage.
func (d *Decoder) discard(n int) {
	d.start += n
	d.skipped += int64(n)
}

// maxEmptyReads bounds how often a reader may return (0, nil) in a row.
const maxEmptyReads = 100

// fill reads more input into the buffer.
func (d *Decoder) fill() error {
	if d.err != nil {
		return d.err
	}
	if len(d.buf)-d.end < MaxFrameSize {
		n := copy(d.buf, d.buf[d.start:d.end])
		d.start, d.end = 0, n
	}
	for range maxEmptyReads {
		n, err := d.r.Read(d.buf[d.end:])
		d.end += n
		if err != nil {
			d.err = err
			if n > 0 {
				return nil
			}
			return err
		}
		if n > 0 {
			return nil
		}
	}
	d.err = io.ErrNoProgress
	return d.err
}
