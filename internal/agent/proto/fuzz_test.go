package proto

import (
	"bytes"
	"io"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic,
// never return a payload above MaxPayload, and every frame it returns must
// re-encode to bytes that decode to the same frame.
func FuzzDecode(f *testing.F) {
	f.Add(mustFrame(f, Frame{Type: TypeData, Channel: ChanOut, Stream: 1, Payload: []byte("x")}))
	f.Add(append([]byte("junk\xa5SVM"), mustFrame(f, Frame{Type: TypeBye})...))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDecoder(bytes.NewReader(data))
		for range len(data)/HeaderSize + 1 {
			fr, err := d.Next()
			if err != nil {
				if err != io.EOF {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			enc, err := AppendFrame(nil, fr)
			if err != nil {
				t.Fatal(err)
			}
			again, err := NewDecoder(bytes.NewReader(enc)).Next()
			if err != nil || !frameEqual(again, fr) {
				t.Fatalf("re-decode = %+v, %v", again, err)
			}
		}
		if _, err := d.Next(); err != io.EOF {
			t.Fatalf("decoder returned more frames than the input can hold: %v", err)
		}
	})
}
