package proto

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
)

// Constants shared by the host and the guest.
const (
	// Version is the protocol version carried in HELLO and HELLO_ACK.
	Version = 1
	// VirtioPortName is the name of the virtio-serial port the agent serves;
	// the guest sees it as /dev/virtio-ports/<VirtioPortName>.
	VirtioPortName = "org.smolvm.agent"
	// DefaultVsockPort is the vsock port the agent listens on by default.
	DefaultVsockPort = 1024
	// NonceSize is the size of a session nonce.
	NonceSize = 16
	// ResyncSize is the number of zero bytes sent before HELLO and HELLO_ACK.
	// It is enough to complete the longest frame a previous session may have
	// left half-written, after which the decoder finds the HELLO again.
	ResyncSize = MaxFrameSize
)

// Nonce identifies one session on a byte stream.
type Nonce [NonceSize]byte

// NewNonce returns a random nonce.
func NewNonce() (Nonce, error) {
	var n Nonce
	if _, err := rand.Read(n[:]); err != nil {
		return n, fmt.Errorf("session nonce: %w", err)
	}
	return n, nil
}

// Hello is the payload of HELLO and HELLO_ACK frames.
type Hello struct {
	// Nonce is chosen by the host; the guest echoes it.
	Nonce Nonce
	// Version is the sender's protocol version.
	Version uint16
}

// helloSize is the encoded size of a Hello.
const helloSize = NonceSize + 2

// Marshal encodes h.
func (h Hello) Marshal() []byte {
	b := make([]byte, 0, helloSize)
	b = append(b, h.Nonce[:]...)
	return binary.BigEndian.AppendUint16(b, h.Version)
}

// ParseHello decodes a HELLO or HELLO_ACK payload.
func ParseHello(p []byte) (Hello, error) {
	if len(p) != helloSize {
		return Hello{}, fmt.Errorf("%w: hello payload of %d bytes", ErrProtocol, len(p))
	}
	var h Hello
	copy(h.Nonce[:], p)
	h.Version = binary.BigEndian.Uint16(p[NonceSize:])
	return h, nil
}

// zeros is the resync padding.
var zeros = make([]byte, ResyncSize)

// AppendResync appends the resync padding to dst.
func AppendResync(dst []byte) []byte { return append(dst, zeros...) }

// WriteHello writes the resync padding followed by one frame of type t
// (TypeHello or TypeHelloAck) carrying h, in a single Write.
func WriteHello(w io.Writer, t Type, h Hello) error {
	b := AppendResync(make([]byte, 0, ResyncSize+HeaderSize+helloSize))
	b, err := AppendFrame(b, Frame{Type: t, Payload: h.Marshal()})
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
