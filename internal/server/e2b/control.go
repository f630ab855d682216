package e2b

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
)

// maxControlBody bounds a control-plane request body.
const maxControlBody = 1 << 20

// maxTimeoutSeconds bounds a sandbox's timeout (30 days).
const maxTimeoutSeconds = 30 * 24 * 3600

func (h *Handler) registerControl() {
	h.mux.HandleFunc("POST /v2/sandboxes", h.keyed(h.create))
	h.mux.HandleFunc("GET /v2/sandboxes", h.keyed(h.list))
	h.mux.HandleFunc("GET /sandboxes", h.keyed(h.list))
	h.mux.HandleFunc("GET /sandboxes/{id}", h.keyed(h.get))
	h.mux.HandleFunc("DELETE /sandboxes/{id}", h.keyed(h.kill))
	h.mux.HandleFunc("POST /sandboxes/{id}/timeout", h.keyed(h.setTimeout))
	h.mux.HandleFunc("POST /sandboxes/{id}/pause", h.keyed(h.pause))
	h.mux.HandleFunc("POST /sandboxes/{id}/resume", h.keyed(h.connect))
	h.mux.HandleFunc("POST /v2/sandboxes/{id}/connect", h.keyed(h.connect))
	h.mux.HandleFunc("POST /sandboxes/{id}/connect", h.keyed(h.connect))
}

// keyed authenticates a control-plane request by its X-API-KEY (or a
// Bearer token) and passes the key id on.
func (h *Handler) keyed(fn func(w http.ResponseWriter, r *http.Request, key string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		k := r.Header.Get(headerAPIKey)
		if k == "" {
			k, _ = strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		}
		if k == "" {
			h.apiFail(w, r, fmt.Errorf("%w: missing %s header", ErrUnauthorized, headerAPIKey))
			return
		}
		key, err := h.cfg.Backend.Authenticate(r.Context(), k)
		if err != nil {
			h.apiFail(w, r, err)
			return
		}
		if err := fn(w, r, key); err != nil {
			h.apiFail(w, r, err)
		}
	}
}

// createBody is what the SDK sends to POST /v2/sandboxes. Fields the SDK
// may send that SmolVM has no use for are accepted and ignored (see the
// README's compatibility table).
type createBody struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout"`
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	Network             *networkBody      `json:"network"`
	AutoPause           *bool             `json:"autoPause"`
	Secure              *bool             `json:"secure"`
}

// networkBody is the SDK's egress configuration.
type networkBody struct {
	AllowOut []string `json:"allowOut"`
	DenyOut  []string `json:"denyOut"`
}

// sandboxCreated is the body of a create or connect answer.
type sandboxCreated struct {
	SandboxID       string `json:"sandboxID"`
	TemplateID      string `json:"templateID"`
	ClientID        string `json:"clientID"`
	EnvdVersion     string `json:"envdVersion"`
	EnvdAccessToken string `json:"envdAccessToken"`
}

// sandboxInfo is the body of get and of each list entry.
type sandboxInfo struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	ClientID    string            `json:"clientID"`
	Metadata    map[string]string `json:"metadata"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	State       string            `json:"state"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int               `json:"diskSizeMB"`
	EnvdVersion string            `json:"envdVersion"`
}

// clientID is the constant the control plane reports as the sandbox's
// client (E2B's cluster node); SmolVM has one host.
const clientID = "smolvm"

func (h *Handler) decode(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, maxControlBody)
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return &smolvm.ConfigError{Field: "body", Rule: "must be a JSON object of the documented fields: " + err.Error()}
	}
	return nil
}

// egressOf maps the SDK's internet and network settings onto an egress
// policy: allow_internet_access false turns the internet default off;
// allowOut and denyOut are the same lists as ours.
func egressOf(cfg *smolvm.VMConfig, b createBody) {
	if b.AllowInternetAccess != nil {
		internet := *b.AllowInternetAccess
		cfg.Internet = &internet
	}
	if b.Network != nil {
		cfg.AllowOut = append(cfg.AllowOut, b.Network.AllowOut...)
		cfg.DenyOut = append(cfg.DenyOut, b.Network.DenyOut...)
	}
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request, key string) error {
	var b createBody
	if err := h.decode(r, &b); err != nil {
		return err
	}
	if b.TemplateID == "" || b.TemplateID == "base" {
		b.TemplateID = smolvm.ImageDefault // E2B's default template
	}
	timeout := h.cfg.DefaultTimeout
	if b.Timeout != nil {
		if *b.Timeout < 0 || *b.Timeout > maxTimeoutSeconds {
			return &smolvm.ConfigError{Field: "timeout", Value: fmt.Sprint(*b.Timeout), Rule: fmt.Sprintf("must be between 0 and %d seconds", maxTimeoutSeconds)}
		}
		if *b.Timeout > 0 {
			timeout = time.Duration(*b.Timeout) * time.Second
		}
	}
	cfg := smolvm.VMConfig{EnvVars: b.EnvVars}
	if snapshotTemplate(b.TemplateID) {
		cfg.FromSnapshot = strings.TrimPrefix(b.TemplateID, "snapshot:")
	} else {
		cfg.Image = b.TemplateID
	}
	egressOf(&cfg, b)
	sb, err := h.cfg.Backend.Create(r.Context(), key, CreateRequest{Config: cfg, Timeout: timeout, Metadata: b.Metadata})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, h.created(sb))
	return nil
}

func (h *Handler) created(sb Sandbox) sandboxCreated {
	return sandboxCreated{SandboxID: sb.ID, TemplateID: sb.Template, ClientID: clientID, EnvdVersion: EnvdVersion, EnvdAccessToken: h.AccessToken(sb.ID)}
}

// stateOf maps a VM state onto E2B's running/paused.
func stateOf(s smolvm.VMState) string {
	if s == smolvm.StateRunning {
		return "running"
	}
	return "paused"
}

func infoOf(sb Sandbox) sandboxInfo {
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	end := sb.Expires
	if end.IsZero() {
		end = sb.Started.Add(maxTimeoutSeconds * time.Second)
	}
	return sandboxInfo{SandboxID: sb.ID, TemplateID: sb.Template, ClientID: clientID, Metadata: md, StartedAt: sb.Started.UTC(),
		EndAt: end.UTC(), State: stateOf(sb.State), CPUCount: sb.VCPUs, MemoryMB: sb.MemoryMiB, EnvdVersion: EnvdVersion}
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request, key string) error {
	sb, err := h.cfg.Backend.Get(r.Context(), key, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, infoOf(sb))
	return nil
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request, key string) error {
	q := r.URL.Query()
	want, err := metadataQuery(q.Get("metadata"))
	if err != nil {
		return err
	}
	states := map[string]bool{}
	for _, s := range q["state"] {
		for _, p := range strings.Split(s, ",") {
			if p != "running" && p != "paused" {
				return &smolvm.ConfigError{Field: "state", Value: p, Rule: "must be running or paused"}
			}
			states[p] = true
		}
	}
	sbs, err := h.cfg.Backend.List(r.Context(), key)
	if err != nil {
		return err
	}
	out := []sandboxInfo{}
next:
	for _, sb := range sbs {
		for k, v := range want {
			if sb.Metadata[k] != v {
				continue next
			}
		}
		inf := infoOf(sb)
		if len(states) > 0 && !states[inf.State] {
			continue
		}
		out = append(out, inf)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	writeJSON(w, http.StatusOK, out)
	return nil
}

// metadataQuery parses the SDK's metadata filter: a URL-encoded query
// string of key=value pairs, itself passed as one query parameter.
func metadataQuery(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, pair := range strings.Split(s, "&") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, &smolvm.ConfigError{Field: "metadata", Value: pair, Rule: "want key=value pairs joined by &"}
		}
		ku, err1 := queryUnescape(k)
		vu, err2 := queryUnescape(v)
		if err1 != nil || err2 != nil {
			return nil, &smolvm.ConfigError{Field: "metadata", Value: pair, Rule: "bad escaping"}
		}
		out[ku] = vu
	}
	return out, nil
}

func (h *Handler) kill(w http.ResponseWriter, r *http.Request, key string) error {
	if err := h.cfg.Backend.Delete(r.Context(), key, r.PathValue("id")); err != nil {
		return err
	}
	h.forget(r.PathValue("id"))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// timeoutBody is the body of a timeout change or a connect.
type timeoutBody struct {
	Timeout *int `json:"timeout"`
}

func (b timeoutBody) duration(def time.Duration) (time.Duration, error) {
	if b.Timeout == nil {
		return def, nil
	}
	if *b.Timeout < 0 || *b.Timeout > maxTimeoutSeconds {
		return 0, &smolvm.ConfigError{Field: "timeout", Value: fmt.Sprint(*b.Timeout), Rule: fmt.Sprintf("must be between 0 and %d seconds", maxTimeoutSeconds)}
	}
	return time.Duration(*b.Timeout) * time.Second, nil
}

func (h *Handler) setTimeout(w http.ResponseWriter, r *http.Request, key string) error {
	var b timeoutBody
	if err := h.decode(r, &b); err != nil {
		return err
	}
	if b.Timeout == nil {
		return &smolvm.ConfigError{Field: "timeout", Rule: "is required (seconds)"}
	}
	d, err := b.duration(0)
	if err != nil {
		return err
	}
	if err := h.cfg.Backend.SetTimeout(r.Context(), key, r.PathValue("id"), d); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) pause(w http.ResponseWriter, r *http.Request, key string) error {
	if err := h.cfg.Backend.Pause(r.Context(), key, r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// connect resumes a paused sandbox (or finds a running one), optionally
// with a new timeout, and returns its access details.
func (h *Handler) connect(w http.ResponseWriter, r *http.Request, key string) error {
	var b timeoutBody
	if err := h.decode(r, &b); err != nil {
		return err
	}
	id := r.PathValue("id")
	sb, err := h.cfg.Backend.Get(r.Context(), key, id)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if sb.State != smolvm.StateRunning {
		if err := h.cfg.Backend.Resume(r.Context(), key, id); err != nil {
			return err
		}
		status = http.StatusCreated
	}
	if b.Timeout != nil {
		d, err := b.duration(0)
		if err != nil {
			return err
		}
		if err := h.cfg.Backend.SetTimeout(r.Context(), key, id, d); err != nil {
			return err
		}
	}
	writeJSON(w, status, h.created(sb))
	return nil
}

// forget drops what the handler keeps about a deleted sandbox.
func (h *Handler) forget(id string) {
	h.mu.Lock()
	delete(h.users, id)
	var stale []*pollWatcher
	for wid, pw := range h.watchers {
		if pw.sandbox == id {
			stale = append(stale, pw)
			delete(h.watchers, wid)
		}
	}
	h.mu.Unlock()
	for _, pw := range stale {
		pw.close()
	}
}

// snapshotTemplate reports whether a template id names a snapshot rather
// than an image ("snapshot:NAME").
func snapshotTemplate(t string) bool { return strings.HasPrefix(t, "snapshot:") }
