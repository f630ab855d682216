package proto

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Sizes and limits of the framing layer.
const (
	// HeaderSize is the size in bytes of a frame header.
	HeaderSize = 24
	// MaxPayload is the largest payload a frame may carry. Decoders reject
	// longer frames, which bounds their memory.
	MaxPayload = 64 << 10
	// MaxFrameSize is the size of the largest valid frame.
	MaxFrameSize = HeaderSize + MaxPayload
	// ChunkSize is the payload size senders use for stream data.
	ChunkSize = 32 << 10
	// InitialWindow is the number of data bytes a sender may send on a new
	// stream before the receiver grants more with a WINDOW frame.
	InitialWindow = 256 << 10
)

// magic starts every frame.
const magic = "\xa5SVM"

// castagnoli is the CRC-32C table used for both checksums.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Type is the kind of a frame. The zero value is invalid.
type Type uint8

// Frame types.
const (
	// TypeHello opens a session (host to guest); payload: Hello.
	TypeHello Type = iota + 1
	// TypeHelloAck accepts a session (guest to host); payload: Hello with the
	// host's nonce.
	TypeHelloAck
	// TypeRequest opens a stream (host to guest); payload: JSON Request.
	TypeRequest
	// TypeResponse ends a stream (guest to host); payload: JSON Response. All
	// data frames of the stream precede it.
	TypeResponse
	// TypeData carries stream bytes on a Channel; it consumes window.
	TypeData
	// TypeEOF says the sender will send no more data on the stream.
	TypeEOF
	// TypeWindow grants the peer more send window; payload: uint32 bytes.
	TypeWindow
	// TypeCancel asks the guest to abort a stream (host to guest).
	TypeCancel
	// TypeBye ends the session (host to guest): the guest abandons it.
	TypeBye
	// TypeControl changes a running stream (host to guest); payload: JSON
	// Control (terminal size, signals). Guests that predate it ignore it.
	TypeControl
)

var typeNames = [...]string{
	TypeHello:    "HELLO",
	TypeHelloAck: "HELLO_ACK",
	TypeRequest:  "REQUEST",
	TypeResponse: "RESPONSE",
	TypeData:     "DATA",
	TypeEOF:      "EOF",
	TypeWindow:   "WINDOW",
	TypeCancel:   "CANCEL",
	TypeBye:      "BYE",
	TypeControl:  "CONTROL",
}

// String returns the protocol name of t.
func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Channel names the byte stream a DATA or EOF frame belongs to.
type Channel uint8

// Channels of a stream.
const (
	// ChanIn carries host-to-guest bytes: a command's stdin, an upload's content.
	ChanIn Channel = iota + 1
	// ChanOut carries guest-to-host bytes: a command's stdout, a download's content.
	ChanOut
	// ChanErr carries a command's stderr.
	ChanErr
)

// Frame is one decoded protocol frame.
type Frame struct {
	// Type is the frame's kind.
	Type Type
	// Channel is the data channel, or 0.
	Channel Channel
	// Stream is the stream id, or 0 for session frames.
	Stream uint32
	// Payload is the frame body; at most MaxPayload bytes.
	Payload []byte
}

// AppendFrame appends the encoding of f to dst. It fails if the payload is
// longer than MaxPayload.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	if len(f.Payload) > MaxPayload {
		return dst, fmt.Errorf("%w: %s payload of %d bytes exceeds %d", ErrInvalidArgument, f.Type, len(f.Payload), MaxPayload)
	}
	var h [HeaderSize]byte
	copy(h[0:4], magic)
	h[4] = byte(f.Type)
	h[5] = byte(f.Channel)
	binary.BigEndian.PutUint32(h[8:12], f.Stream)
	binary.BigEndian.PutUint32(h[12:16], uint32(len(f.Payload)))
	binary.BigEndian.PutUint32(h[16:20], crc32.Checksum(f.Payload, castagnoli))
	binary.BigEndian.PutUint32(h[20:24], crc32.Checksum(h[:20], castagnoli))
	dst = append(dst, h[:]...)
	return append(dst, f.Payload...), nil
}

// header is a parsed, checksum-verified frame header.
type header struct {
	typ     Type
	channel Channel
	stream  uint32
	length  int
	crc     uint32
}

// parseHeader decodes b (HeaderSize bytes starting with magic) and reports
// whether it is a valid header.
func parseHeader(b []byte) (header, bool) {
	if crc32.Checksum(b[:20], castagnoli) != binary.BigEndian.Uint32(b[20:24]) {
		return header{}, false
	}
	if b[6] != 0 || b[7] != 0 {
		return header{}, false
	}
	n := binary.BigEndian.Uint32(b[12:16])
	if n > MaxPayload {
		return header{}, false
	}
	return header{
		typ:     Type(b[4]),
		channel: Channel(b[5]),
		stream:  binary.BigEndian.Uint32(b[8:12]),
		length:  int(n),
		crc:     binary.BigEndian.Uint32(b[16:20]),
	}, true
}

// WindowPayload encodes a window increment for a TypeWindow frame.
func WindowPayload(n uint32) []byte {
	return binary.BigEndian.AppendUint32(nil, n)
}

// ParseWindow decodes the payload of a TypeWindow frame.
func ParseWindow(p []byte) (uint32, error) {
	if len(p) != 4 {
		return 0, fmt.Errorf("%w: WINDOW payload of %d bytes", ErrProtocol, len(p))
	}
	return binary.BigEndian.Uint32(p), nil
}
