// Package e2b lets the unmodified E2B SDK drive SmolVM sandboxes. It
// serves, on the host, E2B's control-plane API (create, list, connect,
// kill, timeouts, pause and resume) and the in-sandbox API the SDK calls
// "envd" (Connect RPC process and filesystem services with the JSON codec,
// plain HTTP /files and /health), and translates every call onto a
// sandbox's VM through SmolVM's own guest agent: no E2B code and no second
// daemon run in the guest.
//
// Point the SDK at a server with E2B_API_URL and E2B_SANDBOX_URL (both the
// server's base URL) and E2B_API_KEY (a SmolVM API key). Control-plane calls
// carry the key in X-API-KEY; envd calls carry the sandbox id in
// E2b-Sandbox-Id and the sandbox's access token (returned at create and
// connect, derived from a server secret) in X-Access-Token, so a key
// reaches only its own sandboxes.
//
// The package knows nothing of keys, ownership or timeouts: a Backend (the
// HTTP server) supplies them.
package e2b

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
	"github.com/smolvm-go/smolvm/internal/server/e2b/filesystempb/filesystempbconnect"
	"github.com/smolvm-go/smolvm/internal/server/e2b/processpb/processpbconnect"
)

// EnvdVersion is the envd version reported to the SDK. The SDK gates
// features on it; everything up to this version is implemented: stdin
// control (0.3.0), a default user chosen by the server (0.4.0), closing
// stdin (0.5.2) and octet-stream uploads (0.5.7).
const EnvdVersion = "0.5.7"

// EnvdPort is the port the SDK names in E2b-Sandbox-Port.
const EnvdPort = 49983

// Header names the SDK uses.
const (
	headerSandboxID   = "E2b-Sandbox-Id"
	headerAccessToken = "X-Access-Token"
	headerAPIKey      = "X-API-KEY"
)

// DefaultUser is the guest user the SDK's calls run as when they name none,
// as in E2B's own templates; a guest without that user runs them as root.
const DefaultUser = "user"

// Sandbox is a sandbox as the control plane reports it.
type Sandbox struct {
	// ID is the sandbox's (VM's) id.
	ID string
	// Template is the image or snapshot it was made from.
	Template string
	// Metadata are the caller's labels.
	Metadata map[string]string
	// Started is when it was created.
	Started time.Time
	// Expires is when it times out; zero means never.
	Expires time.Time
	// State is the VM's state.
	State smolvm.VMState
	// VCPUs and MemoryMiB size the VM.
	VCPUs, MemoryMiB int
}

// CreateRequest is a sandbox to create.
type CreateRequest struct {
	// Config is the VM to create (image, env vars, egress policy).
	Config smolvm.VMConfig
	// Timeout deletes the sandbox this long after creation unless
	// extended; 0 means the Backend's default.
	Timeout time.Duration
	// Metadata are labels to list by.
	Metadata map[string]string
}

// Backend is what the E2B layer needs of the server: authentication,
// sandboxes owned by keys, and their timeouts. Errors carry SmolVM's error
// kinds (smolvm.ErrNotFound for a sandbox the key does not own).
type Backend interface {
	// Authenticate returns the id of the key presented, or an error
	// matching ErrUnauthorized.
	Authenticate(ctx context.Context, apiKey string) (keyID string, err error)
	// Create creates and starts a sandbox owned by keyID.
	Create(ctx context.Context, keyID string, req CreateRequest) (Sandbox, error)
	// Get returns a sandbox keyID owns.
	Get(ctx context.Context, keyID, id string) (Sandbox, error)
	// List returns the sandboxes keyID owns.
	List(ctx context.Context, keyID string) ([]Sandbox, error)
	// Delete deletes a sandbox keyID owns.
	Delete(ctx context.Context, keyID, id string) error
	// SetTimeout makes a sandbox keyID owns expire d from now.
	SetTimeout(ctx context.Context, keyID, id string, d time.Duration) error
	// Pause pauses a sandbox keyID owns.
	Pause(ctx context.Context, keyID, id string) error
	// Resume resumes (or starts) a sandbox keyID owns.
	Resume(ctx context.Context, keyID, id string) error
	// VM returns the handle of a sandbox by id, whoever owns it (the envd
	// calls prove access with the sandbox's token instead of a key).
	VM(ctx context.Context, id string) (*smolvm.VM, error)
}

// ErrUnauthorized is the error kind of a missing or wrong credential.
var ErrUnauthorized = errors.New("unauthorized")

// Config configures New.
type Config struct {
	// Backend serves the sandboxes; required.
	Backend Backend
	// Secret derives each sandbox's envd access token; required, at least
	// 32 bytes, and kept across restarts so tokens stay valid.
	Secret []byte
	// DefaultTimeout is a sandbox's timeout when the SDK gives none (the
	// SDK's own default is 300 s).
	DefaultTimeout time.Duration
	// MaxUploadBytes bounds one /files upload; 0 means no bound (the guest's
	// disk bounds it).
	MaxUploadBytes int64
	// Logger receives errors; nil means slog.Default().
	Logger *slog.Logger
}

// Handler serves the E2B APIs. Routes lists what it answers; mount it on
// each.
type Handler struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux

	mu       sync.Mutex
	watchers map[string]*pollWatcher // CreateWatcher's watchers by id
	users    map[string]bool         // sandbox id -> whether DefaultUser exists there
}

// New returns the handler of the E2B APIs.
func New(cfg Config) (*Handler, error) {
	if cfg.Backend == nil {
		return nil, errors.New("e2b: Backend is required")
	}
	if len(cfg.Secret) < 32 {
		return nil, errors.New("e2b: Secret must be at least 32 bytes")
	}
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = 300 * time.Second
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), watchers: map[string]*pollWatcher{}, users: map[string]bool{}}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.registerControl()
	h.registerFiles()
	ps, phandler := processpbconnect.NewProcessHandler(&processService{h: h})
	h.mux.Handle(ps, h.envd(phandler))
	fs, fhandler := filesystempbconnect.NewFilesystemHandler(&filesystemService{h: h})
	h.mux.Handle(fs, h.envd(fhandler))
	return h, nil
}

// Routes are the path patterns the handler answers (for http.ServeMux).
func Routes() []string {
	return []string{
		"POST /v2/sandboxes", "GET /v2/sandboxes", "GET /sandboxes", "GET /sandboxes/{id}", "DELETE /sandboxes/{id}",
		"POST /sandboxes/{id}/timeout", "POST /sandboxes/{id}/pause", "POST /sandboxes/{id}/resume",
		"POST /v2/sandboxes/{id}/connect", "POST /sandboxes/{id}/connect",
		"/process.Process/", "/filesystem.Filesystem/", "/files", "GET /health",
	}
}

// ServeHTTP serves one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// AccessToken returns the envd access token of sandbox id.
func (h *Handler) AccessToken(id string) string {
	m := hmac.New(sha256.New, h.cfg.Secret)
	m.Write([]byte("e2b-envd-access\x00" + id))
	return hex.EncodeToString(m.Sum(nil))
}

type ctxKey int

const (
	ctxVM ctxKey = iota + 1
	ctxUser
)

// envd wraps an envd handler: it finds the sandbox named by
// E2b-Sandbox-Id, checks its access token, and passes the VM and the guest
// user on in the request's context.
func (h *Handler) envd(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vm, err := h.envdVM(r)
		if err != nil {
			h.apiFail(w, r, err)
			return
		}
		ctx := context.WithValue(r.Context(), ctxVM, vm)
		ctx = context.WithValue(ctx, ctxUser, h.user(ctx, vm, requestUser(r)))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// envdVM authenticates an envd request and returns its sandbox's VM.
func (h *Handler) envdVM(r *http.Request) (*smolvm.VM, error) {
	id := r.Header.Get(headerSandboxID)
	if id == "" {
		return nil, fmt.Errorf("%w: missing %s header", ErrUnauthorized, headerSandboxID)
	}
	if err := smolvm.ValidateVMID(id); err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", id, smolvm.ErrNotFound)
	}
	tok := r.Header.Get(headerAccessToken)
	if tok == "" {
		// The SDK sends no token when the control plane returned none;
		// ours always does.
		return nil, fmt.Errorf("%w: missing %s header", ErrUnauthorized, headerAccessToken)
	}
	if subtle.ConstantTimeCompare([]byte(tok), []byte(h.AccessToken(id))) != 1 {
		return nil, fmt.Errorf("%w: wrong access token for sandbox %s", ErrUnauthorized, id)
	}
	return h.cfg.Backend.VM(r.Context(), id)
}

// requestUser returns the user the SDK asked for in its Basic
// authorization header ("user:" base64-encoded), or "".
func requestUser(r *http.Request) string {
	a := r.Header.Get("Authorization")
	enc, ok := strings.CutPrefix(a, "Basic ")
	if !ok {
		return ""
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return ""
	}
	u, _, _ := strings.Cut(string(b), ":")
	return u
}

// user returns the guest user a call runs as: the one asked for, else
// DefaultUser where the guest has it, else root.
func (h *Handler) user(ctx context.Context, vm *smolvm.VM, asked string) string {
	if asked != "" {
		return asked
	}
	h.mu.Lock()
	has, known := h.users[vm.ID()]
	h.mu.Unlock()
	if !known {
		b, err := vm.ReadFile(ctx, "/etc/passwd", 1<<20)
		if err != nil {
			return "root" // not cached: the next call asks again
		}
		has = hasUser(string(b), DefaultUser)
		h.mu.Lock()
		h.users[vm.ID()] = has
		h.mu.Unlock()
	}
	if has {
		return DefaultUser
	}
	return "root"
}

// hasUser reports whether an /etc/passwd text has user name.
func hasUser(passwd, name string) bool {
	for _, line := range strings.Split(passwd, "\n") {
		if n, _, ok := strings.Cut(line, ":"); ok && n == name {
			return true
		}
	}
	return false
}

// home returns a guest user's home directory as E2B's templates lay them out.
func home(user string) string {
	if user == "root" || user == "0" {
		return "/root"
	}
	return "/home/" + user
}

func vmOf(ctx context.Context) *smolvm.VM { return ctx.Value(ctxVM).(*smolvm.VM) }
func userOf(ctx context.Context) string   { return ctx.Value(ctxUser).(string) }

// resolvePath makes an SDK path absolute: relative paths are relative to
// the user's home, as in E2B.
func resolvePath(ctx context.Context, p string) string {
	if p == "" {
		return home(userOf(ctx))
	}
	if strings.HasPrefix(p, "/") {
		return p
	}
	if p == "~" {
		return home(userOf(ctx))
	}
	p = strings.TrimPrefix(p, "~/")
	return strings.TrimSuffix(home(userOf(ctx)), "/") + "/" + p
}

// apiError is the control plane's error body.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// statusOf maps an error's kind to an HTTP status: the API's own mapping
// (internal/apierr), except that E2B reports every invalid request as 400.
func statusOf(err error) int {
	if errors.Is(err, ErrUnauthorized) {
		return http.StatusUnauthorized
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return http.StatusGatewayTimeout
	}
	_, st := apierr.Classify(err)
	if st == http.StatusUnprocessableEntity {
		st = http.StatusBadRequest
	}
	return st
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// apiFail writes an error of the control plane and of the plain-HTTP envd
// routes as {code, message}.
func (h *Handler) apiFail(w http.ResponseWriter, r *http.Request, err error) {
	st := statusOf(err)
	if st >= 500 {
		h.log.Error("e2b", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, st, apiError{Code: st, Message: err.Error()})
}
