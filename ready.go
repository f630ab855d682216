package smolvm

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
)

// readyOutputLimit bounds what is kept of a failing readiness check's
// output (it comes from the guest).
const readyOutputLimit = 4 << 10

// waitReady runs the image's readiness check (its ready: command) until it
// exits 0, within the boot timeout. The error carries the last attempt's
// exit code and output.
func (s *startOp) waitReady(ctx context.Context) error {
	check := s.rec.Boot.Ready
	if check == "" {
		return nil
	}
	var last string
	for delay := 100 * time.Millisecond; ; delay = min(delay*2, 2*time.Second) {
		out := &capped{max: readyOutputLimit}
		res, err := s.client.Exec(s.bootCtx, agent.ExecRequest{Shell: check, Timeout: 30 * time.Second}, nil, out, out)
		if err == nil && res.ExitCode == 0 {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("exit code %d: %s", res.ExitCode, strings.TrimSpace(out.String()))
		}
		select {
		case <-s.bootCtx.Done():
			return fmt.Errorf("ready check %q did not succeed within %v (last: %s): %w", check, s.h().opts.BootTimeout, last, ErrTimeout)
		case <-time.After(delay):
		}
	}
}

// capped is a buffer that keeps the first max bytes written to it.
type capped struct {
	bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
