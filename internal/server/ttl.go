package server

import (
	"context"
	"errors"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/store"
)

// reaper enforces timeouts: every ReapInterval it deletes (or, for
// on_timeout "save", suspends) the sandboxes whose time is up. Expiry times
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

// expire ends one sandbox whose timeout passed: it is deleted, or, for
// on_timeout "save", suspended (its memory and device state saved, its
// RAM freed; a start resumes it where it was) and its timeout cleared.
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
		defer vm.Release()
		if st := vm.Info().Status; st == smolvm.StateRunning || st == smolvm.StatePaused {
			if err := vm.Suspend(ctx); err != nil {
				// Its resources are freed all the same: a stopped
				// sandbox keeps its disk and can be started again.
				s.log.Error("timeouts: save sandbox; stopping it instead", "sandbox", sb.VMID, "error", err.Error())
				if err := vm.Stop(ctx); err != nil {
					s.log.Error("timeouts: stop sandbox", "sandbox", sb.VMID, "error", err.Error())
					return // tried again at the next tick
				}
			}
		}
		if err := s.st.SetSandboxExpiry(ctx, sb.VMID, time.Time{}); err != nil {
			s.log.Error("timeouts: clear timeout", "sandbox", sb.VMID, "error", err.Error())
			return
		}
		s.log.Info("sandbox timed out: saved (on_timeout save)", "sandbox", sb.VMID, "saved", vm.Info().Saved)
		return
	}
	if err := vm.ForceDelete(ctx); err != nil {
		s.log.Error("timeouts: delete sandbox", "sandbox", sb.VMID, "error", err.Error())
		return
	}
	s.log.Info("sandbox timed out: deleted", "sandbox", sb.VMID)
}
