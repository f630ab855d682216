package server

import (
	"encoding/json"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// health reports the agent's version (proto.MethodHealth).
func (s *Server) health(_ *stream, _ json.RawMessage) (any, error) {
	return proto.HealthResult{
		Version:      s.opts.Version,
		Protocol:     proto.Version,
		Capabilities: proto.Capabilities(),
		UptimeMillis: time.Since(s.started).Milliseconds(),
	}, nil
}

// sync flushes file systems (proto.MethodSync).
func (s *Server) sync(_ *stream, _ json.RawMessage) (any, error) {
	unix.Sync()
	return nil, nil
}

// powerOff schedules the PowerOff hook after the answer (proto.MethodPowerOff).
func (s *Server) powerOff(st *stream, _ json.RawMessage) (any, error) {
	if s.opts.PowerOff == nil {
		return nil, fmt.Errorf("%w: power-off is not available", proto.ErrUnsupported)
	}
	unix.Sync()
	st.after = s.opts.PowerOff
	return nil, nil
}
