package server

import (
	"context"
	"errors"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/store"
)

// reaper enforces timeouts: every ReapInterval it deletes (or, for
// on_timeout "save", stops) the sandboxes whose time is up. Expiry times
// live in the store, so a restarted server enforces them too, at once for
// those that expired while it was down.
func (s *Server) reaper() {
	defer close(s.done)
	t := time.NewTicker(s.o.ReapInterval)
	defer t.Stop()
	for {
		s.reap()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *Server) reap() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sbs, err := s.st.ExpiredSandboxes(ctx, time.Now())
	if err != nil {
		s.log.Error("timeouts: list expired sandboxes", "error", err.Error())
		return
	}
	for _, sb := range sbs {
		select {
		case <-s.stop:
			return
		default:
		}
		s.expire(ctx, sb)
	}
}

// expire ends one sandbox whose timeout passed. "save" needs snapshots,
// which this server does not offer yet: it stops the VM (its disk kept,
// so it can be started again) and clears the timeout.
func (s *Server) expire(ctx context.Context, sb store.Sandbox) {
	vm, err := s.h.Get(ctx, sb.VMID)
	if errors.Is(err, smolvm.ErrNotFound) {
		return // its row went with the VM
	}
	if err != nil {
		s.log.Error("timeouts: open sandbox", "sandbox", sb.VMID, "error", err.Error())
		return
	}
	s.forget(sb.VMID)
	if sb.OnTimeout == "save" {
		if st := vm.Info().Status; st == smolvm.StateRunning || st == smolvm.StatePaused {
			if err := vm.Stop(ctx); err != nil {
				s.log.Error("timeouts: stop sandbox", "sandbox", sb.VMID, "error", err.Error())
			}
		}
		vm.Release()
		s.st.SetSandboxExpiry(ctx, sb.VMID, time.Time{})
		s.log.Info("sandbox timed out: stopped (on_timeout save)", "sandbox", sb.VMID)
		return
	}
	if err := vm.ForceDelete(ctx); err != nil {
		s.log.Error("timeouts: delete sandbox", "sandbox", sb.VMID, "error", err.Error())
		return
	}
	s.log.Info("sandbox timed out: deleted", "sandbox", sb.VMID)
}
