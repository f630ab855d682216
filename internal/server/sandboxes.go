package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
	"github.com/smolvm-go/smolvm/internal/store"
)

// Limits of a sandbox's metadata and timeout.
const (
	maxMetadata      = 32
	maxMetadataKey   = 64
	maxMetadataValue = 512
	// MaxTimeoutSeconds bounds timeout_seconds (30 days).
	MaxTimeoutSeconds = 30 * 24 * 3600
)

// register installs every route. The OpenAPI document lists the same
// routes; a test checks both ways.
func (s *Server) register() {
	s.handle("GET /healthz", true, s.healthz)
	s.handle("GET /openapi.json", true, s.openapi)
	s.handle("GET /metrics", false, s.serveMetrics)
	s.handle("POST /v1/sandboxes", false, s.create)
	s.handle("GET /v1/sandboxes", false, s.list)
	s.handle("GET /v1/sandboxes/{id}", false, s.get)
	s.handle("DELETE /v1/sandboxes/{id}", false, s.delete)
	s.handle("POST /v1/sandboxes/{id}/start", false, s.start)
	s.handle("POST /v1/sandboxes/{id}/stop", false, s.lifecycle("stop", (*smolvm.VM).Stop))
	s.handle("POST /v1/sandboxes/{id}/pause", false, s.lifecycle("pause", (*smolvm.VM).Pause))
	s.handle("POST /v1/sandboxes/{id}/resume", false, s.lifecycle("resume", (*smolvm.VM).Resume))
	s.handle("POST /v1/sandboxes/{id}/timeout", false, s.setTimeout)
	s.handle("POST /v1/sandboxes/{id}/exec", false, s.exec)
	s.handle("GET /v1/sandboxes/{id}/files", false, s.download)
	s.handle("PUT /v1/sandboxes/{id}/files", false, s.upload)
	s.handle("GET /v1/sandboxes/{id}/ports", false, s.ports)
	s.handle("POST /v1/sandboxes/{id}/ports", false, s.expose)
	s.handle("DELETE /v1/sandboxes/{id}/ports/{host_port}", false, s.unexpose)
	s.registerExtra()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		s.writeError(sw, r, apierr.New("not_found", "no route %s %s", r.Method, r.URL.Path))
	})
}

// extraRoutes are registered by files added later (processes, terminals,
// filesystem); each appends a function.
var extraRoutes []func(s *Server)

func (s *Server) registerExtra() {
	for _, f := range extraRoutes {
		f(s)
	}
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request, _ string) error {
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": smolvm.GetVersion()})
}

// Sandbox is a sandbox as the API shows it: the VM's info (the object
// `smolvm info --json` prints) plus what the server keeps about it.
type Sandbox struct {
	smolvm.VMInfo
	// Metadata are the caller's labels.
	Metadata map[string]string `json:"metadata"`
	// ExpiresAt is when the sandbox times out; absent without a timeout.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// OnTimeout is what happens then: delete or save.
	OnTimeout string `json:"on_timeout"`
}

func view(inf smolvm.VMInfo, sb store.Sandbox) Sandbox {
	// Env var values are often API keys: names only, as `info --json` shows.
	v := Sandbox{VMInfo: inf.Redacted(), Metadata: sb.Metadata, OnTimeout: sb.OnTimeout}
	if v.Metadata == nil {
		v.Metadata = map[string]string{}
	}
	if !sb.Expires.IsZero() {
		t := sb.Expires
		v.ExpiresAt = &t
	}
	return v
}

// CreateRequest is the body of POST /v1/sandboxes: a VM configuration plus
// the server's own fields.
type CreateRequest struct {
	smolvm.VMConfig
	// TimeoutSeconds deletes (or saves) the sandbox this long after
	// creation unless extended; 0 means never.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	// OnTimeout is "delete" (default) or "save".
	OnTimeout string `json:"on_timeout,omitempty"`
	// Metadata are labels to filter lists by.
	Metadata map[string]string `json:"metadata,omitempty"`
	// Start boots the sandbox (default true).
	Start *bool `json:"start,omitempty"`
}

func checkMetadata(md map[string]string) error {
	if len(md) > maxMetadata {
		return &smolvm.ConfigError{Field: "metadata", Rule: fmt.Sprintf("at most %d entries", maxMetadata)}
	}
	for k, v := range md {
		if k == "" || len(k) > maxMetadataKey || strings.ContainsAny(k, "=&") {
			return &smolvm.ConfigError{Field: "metadata", Value: k, Rule: fmt.Sprintf("keys must be 1-%d characters without '=' or '&'", maxMetadataKey)}
		}
		if len(v) > maxMetadataValue {
			return &smolvm.ConfigError{Field: "metadata", Value: k, Rule: fmt.Sprintf("values must be at most %d bytes", maxMetadataValue)}
		}
	}
	return nil
}

func checkTimeout(field string, n int) error {
	if n < 0 || n > MaxTimeoutSeconds {
		return &smolvm.ConfigError{Field: field, Value: strconv.Itoa(n), Rule: fmt.Sprintf("must be between 0 (none) and %d", MaxTimeoutSeconds)}
	}
	return nil
}

// validateCreate checks a create request before anything is made. Host
// paths are the server's business, never a remote caller's.
func validateCreate(req *CreateRequest) error {
	for _, f := range []struct{ name, v string }{{"kernel_path", req.KernelPath}, {"initrd_path", req.InitrdPath}, {"rootfs_path", req.RootfsPath}} {
		if f.v != "" {
			return &smolvm.ConfigError{Field: f.name, Value: f.v, Rule: "host paths cannot be set over the API; use image"}
		}
	}
	if req.AttachInterface != "" {
		return &smolvm.ConfigError{Field: "attach_interface", Value: req.AttachInterface, Rule: "host interfaces cannot be taken over through the API"}
	}
	if len(req.Mounts) > 0 {
		return &smolvm.ConfigError{Field: "mounts", Value: req.Mounts[0].HostPath, Rule: "host folders cannot be shared over the API"}
	}
	if req.DiskMode == smolvm.DiskShared {
		return &smolvm.ConfigError{Field: "disk_mode", Value: "shared", Rule: "a sandbox cannot write to a shared image over the API"}
	}
	if err := checkTimeout("timeout_seconds", req.TimeoutSeconds); err != nil {
		return err
	}
	switch req.OnTimeout {
	case "", "delete", "save":
	default:
		return &smolvm.ConfigError{Field: "on_timeout", Value: req.OnTimeout, Rule: "must be delete or save"}
	}
	if err := checkMetadata(req.Metadata); err != nil {
		return err
	}
	if req.Image == "" {
		req.Image = smolvm.ImageDefault
	}
	if req.VMID == "" {
		req.VMID = smolvm.NewVMID()
	}
	return req.VMConfig.Validate()
}

// active reports whether a sandbox in state st counts against its key's limit.
func active(st smolvm.VMState) bool {
	return st == smolvm.StateRunning || st == smolvm.StatePaused || st == smolvm.StateCreated
}

// checkLimit fails when key already has MaxRunningPerKey active sandboxes
// (other than except), counting creates under way.
func (s *Server) checkLimit(ctx context.Context, key, except string) error {
	sbs, err := s.st.Sandboxes(ctx, key)
	if err != nil {
		return err
	}
	pending := s.pending[key] // creates under way; createMu is held by create's caller
	if len(sbs)+pending < s.o.MaxRunningPerKey {
		return nil
	}
	infos, err := s.h.List(ctx, smolvm.ListOptions{})
	if err != nil {
		return err
	}
	owned := map[string]bool{}
	for _, sb := range sbs {
		owned[sb.VMID] = true
	}
	n := pending
	for _, inf := range infos {
		if owned[inf.VMID] && inf.VMID != except && active(inf.Status) {
			n++
		}
	}
	if n >= s.o.MaxRunningPerKey {
		return apierr.New(apierr.LimitExceeded, "this key already has %d sandboxes created, running or paused (the limit); delete or stop one", n)
	}
	return nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request, key string) error {
	var req CreateRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if err := validateCreate(&req); err != nil {
		return err
	}
	vm, sb, err := s.createSandbox(r.Context(), key, req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/sandboxes/"+vm.ID())
	return writeJSON(w, http.StatusCreated, view(vm.Info(), sb))
}

// createSandbox creates a validated sandbox owned by key and, unless
// req.Start says not to, starts it. A failure leaves nothing behind. The
// E2B layer creates its sandboxes through it too.
func (s *Server) createSandbox(ctx context.Context, key string, req CreateRequest) (*smolvm.VM, store.Sandbox, error) {
	// A clone is made only of the key's own snapshots (snapshots.go).
	if req.FromSnapshot != "" {
		if _, err := s.ownedSnapshot(ctx, key, req.FromSnapshot); err != nil {
			return nil, store.Sandbox{}, err
		}
	}
	// The limit check reserves a slot, so creates of one key (which may
	// build an image first) run in parallel without passing the limit.
	s.createMu.Lock()
	err := s.checkLimit(ctx, key, "")
	if err == nil {
		s.pending[key]++
	}
	s.createMu.Unlock()
	if err != nil {
		return nil, store.Sandbox{}, err
	}
	defer func() {
		s.createMu.Lock()
		s.pending[key]--
		if s.pending[key] == 0 {
			delete(s.pending, key)
		}
		s.createMu.Unlock()
	}()
	start := time.Now()
	vm, err := s.h.Create(ctx, req.VMConfig, smolvm.WithProgress(func(string, int64, int64) {}))
	s.metrics.createDur.Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, store.Sandbox{}, err
	}
	sb := store.Sandbox{VMID: req.VMID, KeyID: key, Metadata: req.Metadata, OnTimeout: req.OnTimeout}
	if sb.OnTimeout == "" {
		sb.OnTimeout = "delete"
	}
	if req.TimeoutSeconds > 0 {
		sb.Expires = time.Now().Add(time.Duration(req.TimeoutSeconds) * time.Second)
	}
	if err := s.st.AddSandbox(ctx, sb); err != nil {
		return nil, sb, errors.Join(err, vm.ForceDelete(context.WithoutCancel(ctx)))
	}
	s.mu.Lock()
	s.vms[vm.ID()] = vm
	s.mu.Unlock()
	if req.Start == nil || *req.Start {
		start := time.Now()
		err := vm.Start(ctx)
		s.metrics.startDur.Observe(time.Since(start).Seconds())
		if err != nil {
			s.forget(vm.ID())
			return nil, sb, errors.Join(err, vm.ForceDelete(context.WithoutCancel(ctx)))
		}
	}
	sb.Created = time.Now()
	return vm, sb, nil
}

// forget drops the cached handle of id.
func (s *Server) forget(id string) {
	s.mu.Lock()
	vm := s.vms[id]
	delete(s.vms, id)
	s.mu.Unlock()
	if vm != nil {
		vm.Release()
	}
}

// sandbox returns the handle and record of the sandbox named in the path,
// if key owns it; any other key's sandbox does not exist for this one.
func (s *Server) sandbox(r *http.Request, key string) (*smolvm.VM, store.Sandbox, error) {
	return s.lookup(r.Context(), key, r.PathValue("id"))
}

// lookup returns the handle and record of sandbox id if key owns it; any
// other key's sandbox does not exist for this one.
func (s *Server) lookup(ctx context.Context, key, id string) (*smolvm.VM, store.Sandbox, error) {
	if err := smolvm.ValidateVMID(id); err != nil {
		return nil, store.Sandbox{}, fmt.Errorf("sandbox id: %w", err)
	}
	sb, err := s.st.GetSandbox(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && sb.KeyID != key) {
		return nil, store.Sandbox{}, fmt.Errorf("sandbox %s: %w", id, smolvm.ErrNotFound)
	}
	if err != nil {
		return nil, sb, err
	}
	vm, err := s.VM(ctx, id)
	return vm, sb, err
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, key string) error {
	vm, sb, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if err := vm.Refresh(r.Context()); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, view(vm.Info(), sb))
}

// listFilter parses GET /v1/sandboxes's query: state=S and metadata.K=V
// (also metadata=K=V, repeatable); anything else is an error.
func listFilter(q url.Values) (smolvm.VMState, map[string]string, error) {
	var st smolvm.VMState
	md := map[string]string{}
	for k, vs := range q {
		switch {
		case k == "state" || k == "status":
			if len(vs) != 1 {
				return "", nil, apierr.New(apierr.BadRequest, "state: give it once")
			}
			s, err := smolvm.ParseVMState(vs[0])
			if err != nil {
				return "", nil, err
			}
			st = s
		case strings.HasPrefix(k, "metadata."):
			md[strings.TrimPrefix(k, "metadata.")] = vs[len(vs)-1]
		case k == "metadata":
			for _, v := range vs {
				mk, mv, ok := strings.Cut(v, "=")
				if !ok {
					return "", nil, apierr.New(apierr.BadRequest, "metadata=%q: want KEY=VALUE", v)
				}
				md[mk] = mv
			}
		default:
			return "", nil, apierr.New(apierr.BadRequest, "unknown query parameter %q (want state, metadata.KEY or metadata=KEY=VALUE)", k)
		}
	}
	return st, md, nil
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, key string) error {
	st, md, err := listFilter(r.URL.Query())
	if err != nil {
		return err
	}
	owned, err := s.owned(r.Context(), key, st)
	if err != nil {
		return err
	}
	out := []Sandbox{}
next:
	for _, o := range owned {
		for k, v := range md {
			if got, ok := o.sb.Metadata[k]; !ok || got != v {
				continue next
			}
		}
		out = append(out, view(o.inf, o.sb))
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return writeJSON(w, http.StatusOK, out)
}

// ownedSandbox is a VM's live info with the server's record of it.
type ownedSandbox struct {
	inf smolvm.VMInfo
	sb  store.Sandbox
}

// owned returns key's sandboxes (in state st, or all), state checked live.
// The native list and the E2B list both use it.
func (s *Server) owned(ctx context.Context, key string, st smolvm.VMState) ([]ownedSandbox, error) {
	sbs, err := s.st.Sandboxes(ctx, key)
	if err != nil || len(sbs) == 0 {
		return nil, err
	}
	byID := map[string]store.Sandbox{}
	for _, sb := range sbs {
		byID[sb.VMID] = sb
	}
	infos, err := s.h.List(ctx, smolvm.ListOptions{Status: st})
	if err != nil {
		return nil, err
	}
	var out []ownedSandbox
	for _, inf := range infos {
		if sb, ok := byID[inf.VMID]; ok {
			out = append(out, ownedSandbox{inf, sb})
		}
	}
	return out, nil
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request, key string) error {
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	del := vm.Delete
	if force, _ := strconv.ParseBool(r.URL.Query().Get("force")); force {
		del = vm.ForceDelete
	}
	if err := del(r.Context()); err != nil {
		return err
	}
	s.forget(vm.ID())
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) start(w http.ResponseWriter, r *http.Request, key string) error {
	vm, sb, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	s.createMu.Lock()
	err = s.checkLimit(r.Context(), key, vm.ID())
	s.createMu.Unlock()
	if err != nil {
		return err
	}
	t := time.Now()
	err = vm.Start(r.Context())
	s.metrics.startDur.Observe(time.Since(t).Seconds())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, view(vm.Info(), sb))
}

// lifecycle is the handler of stop, pause and resume.
func (s *Server) lifecycle(op string, fn func(*smolvm.VM, context.Context) error) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, key string) error {
		vm, sb, err := s.sandbox(r, key)
		if err != nil {
			return err
		}
		if err := fn(vm, r.Context()); err != nil {
			return err
		}
		if op == "stop" {
			vm.Release()
		}
		return writeJSON(w, http.StatusOK, view(vm.Info(), sb))
	}
}

// TimeoutRequest is the body of POST /v1/sandboxes/{id}/timeout.
type TimeoutRequest struct {
	// TimeoutSeconds is the new time to live from now; 0 removes the timeout.
	TimeoutSeconds int `json:"timeout_seconds"`
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request, key string) error {
	var req TimeoutRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if err := checkTimeout("timeout_seconds", req.TimeoutSeconds); err != nil {
		return err
	}
	vm, sb, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	sb.Expires = time.Time{}
	if req.TimeoutSeconds > 0 {
		sb.Expires = time.Now().Add(time.Duration(req.TimeoutSeconds) * time.Second)
	}
	if err := s.st.SetSandboxExpiry(r.Context(), vm.ID(), sb.Expires); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, view(vm.Info(), sb))
}

// ExposeRequest is the body of POST /v1/sandboxes/{id}/ports.
type ExposeRequest struct {
	// GuestPort is the port in the guest.
	GuestPort int `json:"guest_port"`
	// HostPort is the host port; 0 picks a free one.
	HostPort int `json:"host_port,omitempty"`
}

func (s *Server) ports(w http.ResponseWriter, r *http.Request, key string) error {
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	ps, err := vm.Ports(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ps)
}

func (s *Server) expose(w http.ResponseWriter, r *http.Request, key string) error {
	var req ExposeRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if req.GuestPort < 1 || req.GuestPort > 65535 {
		return &smolvm.ConfigError{Field: "guest_port", Value: strconv.Itoa(req.GuestPort), Rule: "must be between 1 and 65535"}
	}
	if req.HostPort < 0 || req.HostPort > 65535 {
		return &smolvm.ConfigError{Field: "host_port", Value: strconv.Itoa(req.HostPort), Rule: "must be between 0 (pick one) and 65535"}
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	hp, err := vm.ExposeLocal(r.Context(), req.GuestPort, req.HostPort)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, smolvm.PortInfo{HostPort: hp, GuestPort: req.GuestPort, Kind: "expose"})
}

func (s *Server) unexpose(w http.ResponseWriter, r *http.Request, key string) error {
	hp, err := strconv.Atoi(r.PathValue("host_port"))
	if err != nil || hp < 1 || hp > 65535 {
		return &smolvm.ConfigError{Field: "host_port", Value: r.PathValue("host_port"), Rule: "must be a port number 1-65535"}
	}
	vm, _, err := s.sandbox(r, key)
	if err != nil {
		return err
	}
	if err := vm.UnexposeLocal(r.Context(), hp); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
