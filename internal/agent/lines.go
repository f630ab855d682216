package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// maxLine bounds one JSON line streamed by the guest (a file name is at
// most 4 KiB, a path at most 64 KiB once escaped).
const maxLine = 256 << 10

// lineReader splits a call's ChanOut data into lines, holding at most
// maxLine bytes of a partial line; it grants window as it consumes.
type lineReader struct {
	c     *Client
	cl    *call
	queue []byte // bytes received and not yet returned
}

// next returns the next line without its newline, or io.EOF after the last.
// The line is valid until the next call.
func (r *lineReader) next(ctx context.Context) ([]byte, error) {
	for {
		if i := bytes.IndexByte(r.queue, '\n'); i >= 0 {
			line := r.queue[:i]
			r.queue = r.queue[i+1:]
			return line, nil
		}
		if len(r.queue) > maxLine {
			return nil, fmt.Errorf("%w: line longer than %d bytes", proto.ErrProtocol, maxLine)
		}
		ch, err := r.cl.in.Pop(ctx)
		if err != nil {
			if errors.Is(err, io.EOF) && len(r.queue) > 0 {
				return nil, fmt.Errorf("%w: stream ended inside a line", proto.ErrProtocol)
			}
			return nil, err
		}
		r.cl.in.Grant(len(ch.Data))
		r.c.grant(r.cl, len(ch.Data))
		if ch.Channel == proto.ChanOut {
			r.queue = append(r.queue, ch.Data...)
		}
	}
}

// eachLine decodes every JSON line of cl's output into a fresh T and
// passes it to fn, then waits for the response into result. At most max
// lines are accepted (0: no bound); more fail with
// proto.ErrResourceExhausted and cancel the call.
func eachLine[T any](ctx context.Context, c *Client, cl *call, max int, fn func(T) error, result any) error {
	r := &lineReader{c: c, cl: cl}
	n := 0
	for {
		line, err := r.next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err == nil {
			n++
			if max > 0 && n > max {
				err = fmt.Errorf("%w: more than %d entries", proto.ErrResourceExhausted, max)
			}
		}
		if err == nil {
			var v T
			if jerr := json.Unmarshal(line, &v); jerr != nil {
				err = fmt.Errorf("%w: bad line from the guest: %v", proto.ErrProtocol, jerr)
			} else {
				err = fn(v)
			}
		}
		if err != nil {
			c.cancel(cl)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
	return c.wait(ctx, cl, result)
}

// isEOF reports whether err is io.EOF.
func isEOF(err error) bool { return errors.Is(err, io.EOF) }

// jsonUnmarshal decodes one line.
func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
