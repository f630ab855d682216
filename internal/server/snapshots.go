package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
	"github.com/smolvm-go/smolvm/internal/store"
)

// Snapshots over the API. A snapshot belongs to the key that took it, as
// a sandbox does: another key gets 404 for it, cannot restore it or clone
// it (from_snapshot), and does not see it in lists. Snapshots taken
// outside the server (the CLI, the SDK) belong to no key. Ownership lives
// in the store's snapshot_owners table, whose rows go with their snapshot.

func init() {
	extraRoutes = append(extraRoutes, func(s *Server) {
		s.handle("POST /v1/sandboxes/{id}/snapshots", false, s.snapshot)
		s.handle("POST /v1/sandboxes/{id}/restore", false, s.restore)
		s.handle("GET /v1/snapshots", false, s.snapshots)
		s.handle("GET /v1/snapshots/{name}", false, s.getSnapshot)
		s.handle("DELETE /v1/snapshots/{name}", false, s.removeSnapshot)
	})
}

// SnapshotRequest is the (optional) body of POST /v1/sandboxes/{id}/snapshots.
type SnapshotRequest struct {
	// Name is the snapshot's name; empty generates one.
	Name string `json:"name,omitempty"`
}

// RestoreRequest is the body of POST /v1/sandboxes/{id}/restore.
type RestoreRequest struct {
	// Snapshot names the snapshot to roll the sandbox back to.
	Snapshot string `json:"snapshot"`
}

// snapshotView is a snapshot as the API shows it: environment variable
// values (often secrets) are redacted, as in a sandbox's config.
func snapshotView(info smolvm.SnapshotInfo) smolvm.SnapshotInfo {
	info.Config = smolvm.VMInfo{Config: info.Config}.Redacted().Config
	if info.Files == nil {
		info.Files = []smolvm.SnapshotFile{}
	}
	return info
}

// errNoSnapshot is the error for a snapshot the key does not own or that
// does not exist: the two are the same to a caller.
func errNoSnapshot(name string) error {
	return fmt.Errorf("snapshot %s: %w", name, smolvm.ErrNotFound)
}

// ownedSnapshot returns the snapshot name if key owns it.
func (s *Server) ownedSnapshot(ctx context.Context, key, name string) (smolvm.SnapshotInfo, error) {
	owner, err := s.st.SnapshotOwner(ctx, name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && owner != key) {
		return smolvm.SnapshotInfo{}, errNoSnapshot(name)
	}
	if err != nil {
		return smolvm.SnapshotInfo{}, err
	}
	return s.h.GetSnapshot(ctx, name)
}

// decodeOptional decodes a JSON body into v unless the body is empty.
func (s *Server) decodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	br := bufio.NewReader(r.Body)
	if _, err := br.Peek(1); err == io.EOF {
		return nil
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{br, r.Body}
	return s.decode(w, r, v)
}

func (s *Server) snapshot(w http.ResponseWriter, r *http.Request, key string) error {
	var req SnapshotRequest
	if err := s.decodeOptional(w, r, &req); err != nil {
		return err
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	info, err := vm.Snapshot(r.Context(), req.Name)
	if err != nil {
		return err
	}
	if err := s.st.AddSnapshotOwner(r.Context(), info.Name, key); err != nil {
		// Unowned, nobody could reach it over the API: undo.
		return errors.Join(err, s.h.RemoveSnapshot(context.WithoutCancel(r.Context()), info.Name))
	}
	w.Header().Set("Location", "/v1/snapshots/"+url.PathEscape(info.Name))
	return writeJSON(w, http.StatusCreated, snapshotView(info))
}

func (s *Server) snapshots(w http.ResponseWriter, r *http.Request, key string) error {
	if len(r.URL.Query()) > 0 {
		return apierr.New(apierr.BadRequest, "unknown query %q: GET /v1/snapshots takes no parameters", r.URL.RawQuery)
	}
	names, err := s.st.OwnedSnapshots(r.Context(), key)
	if err != nil {
		return err
	}
	out := []smolvm.SnapshotInfo{}
	if len(names) > 0 {
		own := map[string]bool{}
		for _, n := range names {
			own[n] = true
		}
		all, err := s.h.Snapshots(r.Context())
		if err != nil {
			return err
		}
		for _, info := range all {
			if own[info.Name] {
				out = append(out, snapshotView(info))
			}
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request, key string) error {
	info, err := s.ownedSnapshot(r.Context(), key, r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, snapshotView(info))
}

func (s *Server) removeSnapshot(w http.ResponseWriter, r *http.Request, key string) error {
	name := r.PathValue("name")
	if _, err := s.ownedSnapshot(r.Context(), key, name); err != nil {
		return err
	}
	if err := s.h.RemoveSnapshot(r.Context(), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) restore(w http.ResponseWriter, r *http.Request, key string) error {
	var req RestoreRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if req.Snapshot == "" {
		return &smolvm.ConfigError{Field: "snapshot", Value: "", Rule: "must name a snapshot"}
	}
	vm, sb, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if _, err := s.ownedSnapshot(r.Context(), key, req.Snapshot); err != nil {
		return err
	}
	// A restore starts the sandbox: it counts as a start.
	s.createMu.Lock()
	err = s.checkLimit(r.Context(), key, vm.ID())
	s.createMu.Unlock()
	if err != nil {
		return err
	}
	t := time.Now()
	err = vm.Restore(r.Context(), req.Snapshot)
	s.metrics.startDur.Observe(time.Since(t).Seconds())
	if err != nil {
		return err
	}
	if err := vm.Refresh(r.Context()); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, view(vm.Info(), sb))
}
