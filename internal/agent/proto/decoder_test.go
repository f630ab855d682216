package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"
	"testing/iotest"
)

// mustFrame encodes f or fails the test.
func mustFrame(t testing.TB, f Frame) []byte {
	t.Helper()
	b, err := AppendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeAll returns every frame in data.
func decodeAll(r io.Reader) ([]Frame, int64, error) {
	d := NewDecoder(r)
	var frames []Frame
	for {
		f, err := d.Next()
		if err != nil {
			return frames, d.Skipped(), err
		}
		frames = append(frames, f)
	}
}

func TestDecoder(t *testing.T) {
	data := Frame{Type: TypeData, Channel: ChanOut, Stream: 7, Payload: []byte("hello")}
	empty := Frame{Type: TypeEOF, Channel: ChanIn, Stream: 3}
	big := Frame{Type: TypeData, Channel: ChanErr, Stream: 1, Payload: bytes.Repeat([]byte{0xa5, 'S', 'V', 'M'}, MaxPayload/4)}
	hello := Frame{Type: TypeHello, Payload: Hello{Nonce: Nonce{1, 2, 3}, Version: Version}.Marshal()}
	valid := mustFrame(t, data)
	badPayload := bytes.Clone(valid)
	badPayload[len(badPayload)-1] ^= 1
	badHeader := bytes.Clone(valid)
	badHeader[9] ^= 1
	oversized := mustFrame(t, empty)
	oversized[12] = 0xff // length > MaxPayload; header CRC also wrong
	cut := mustFrame(t, big)[:1000]
	// A frame whose payload is a valid frame, with its payload checksum broken.
	nested := mustFrame(t, Frame{Type: TypeData, Channel: ChanOut, Stream: 9, Payload: valid})
	nested[19] ^= 1
	binary.BigEndian.PutUint32(nested[20:24], crc32.Checksum(nested[:20], castagnoli))

	tests := []struct {
		name  string
		input [][]byte
		want  []Frame
	}{
		{"one frame", [][]byte{valid}, []Frame{data}},
		{"empty payload", [][]byte{mustFrame(t, empty)}, []Frame{empty}},
		{"max payload with magic inside", [][]byte{mustFrame(t, big)}, []Frame{big}},
		{"garbage before", [][]byte{[]byte("garbage\xa5SV\xa5SVM junk"), valid}, []Frame{data}},
		{"garbage between", [][]byte{valid, []byte("\x00\x01\x02\xa5"), mustFrame(t, empty)}, []Frame{data, empty}},
		{"payload checksum mismatch", [][]byte{badPayload, mustFrame(t, empty)}, []Frame{empty}},
		{"header checksum mismatch", [][]byte{badHeader, mustFrame(t, empty)}, []Frame{empty}},
		{"oversized length", [][]byte{oversized, valid}, []Frame{data}},
		{"cut frame then resync and hello", [][]byte{cut, AppendResync(nil), mustFrame(t, hello)}, []Frame{hello}},
		{"frame nested in a cut frame's payload is skipped", [][]byte{mustFrame(t, big)[:HeaderSize+10], valid, AppendResync(nil), mustFrame(t, empty)}, []Frame{empty}},
		{"frame nested in a bad payload is skipped", [][]byte{nested, mustFrame(t, empty)}, []Frame{empty}},
		{"truncated at end", [][]byte{valid, valid[:20]}, []Frame{data}},
		{"nothing", nil, nil},
	}
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			name := tt.name
			if oneByte {
				name += "/one byte reads"
			}
			t.Run(name, func(t *testing.T) {
				var r io.Reader = bytes.NewReader(bytes.Join(tt.input, nil))
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				got, _, err := decodeAll(r)
				if !errors.Is(err, io.EOF) {
					t.Fatalf("final error = %v, want EOF", err)
				}
				if len(got) != len(tt.want) {
					t.Fatalf("got %d frames, want %d", len(got), len(tt.want))
				}
				for i := range got {
					if !frameEqual(got[i], tt.want[i]) {
						t.Errorf("frame %d = %v %d %d %q, want %v", i, got[i].Type, got[i].Channel, got[i].Stream, got[i].Payload, tt.want[i].Type)
					}
				}
			})
		}
	}
}

func frameEqual(a, b Frame) bool {
	return a.Type == b.Type && a.Channel == b.Channel && a.Stream == b.Stream && bytes.Equal(a.Payload, b.Payload)
}

func TestAppendFrameRejectsLargePayload(t *testing.T) {
	_, err := AppendFrame(nil, Frame{Type: TypeData, Payload: make([]byte, MaxPayload+1)})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("err = %v, want ErrInvalidArgument", err)
	}
}

func TestDecoderReadError(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(mustFrame(t, Frame{Type: TypeBye})), iotest.ErrReader(boom))
	got, _, err := decodeAll(r)
	if len(got) != 1 || !errors.Is(err, boom) {
		t.Fatalf("got %d frames, err %v", len(got), err)
	}
}

func TestDecoderNoProgress(t *testing.T) {
	_, err := NewDecoder(zeroReader{}).Next()
	if !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("err = %v, want ErrNoProgress", err)
	}
}

// zeroReader returns (0, nil) forever.
type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestHello(t *testing.T) {
	n, err := NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	if n2, _ := NewNonce(); n2 == n {
		t.Fatal("two nonces are equal")
	}
	h := Hello{Nonce: n, Version: Version}
	got, err := ParseHello(h.Marshal())
	if err != nil || got != h {
		t.Fatalf("ParseHello = %+v, %v", got, err)
	}
	if _, err := ParseHello([]byte("short")); !errors.Is(err, ErrProtocol) {
		t.Fatalf("short hello: err = %v", err)
	}
	var buf bytes.Buffer
	if err := WriteHello(&buf, TypeHelloAck, h); err != nil {
		t.Fatal(err)
	}
	frames, skipped, _ := decodeAll(&buf)
	if len(frames) != 1 || frames[0].Type != TypeHelloAck || skipped != ResyncSize {
		t.Fatalf("decoded %d frames, skipped %d", len(frames), skipped)
	}
}

func TestWindowPayload(t *testing.T) {
	n, err := ParseWindow(WindowPayload(12345))
	if err != nil || n != 12345 {
		t.Fatalf("ParseWindow = %d, %v", n, err)
	}
	if _, err := ParseWindow(nil); !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v", err)
	}
}

func TestTypeString(t *testing.T) {
	if TypeHelloAck.String() != "HELLO_ACK" || Type(200).String() != "Type(200)" {
		t.Fatal(TypeHelloAck.String(), Type(200).String())
	}
}
