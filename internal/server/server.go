// Package server is SmolVM's HTTP API (`smolvm serve`): sandboxes (VMs
// owned by API keys) over REST, exec streamed as NDJSON, files streamed
// raw, timeouts enforced across restarts, an OpenAPI document and
// Prometheus metrics. It is a thin translation onto one smolvm.Host.
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
	"github.com/smolvm-go/smolvm/internal/store"
)

// Defaults of Options.
const (
	// DefaultMaxRunningPerKey bounds the sandboxes one key has created,
	// running or paused, at once.
	DefaultMaxRunningPerKey = 16
	// DefaultMaxBodyBytes bounds a JSON request body.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxOutputBytes bounds each of stdout and stderr in a
	// non-streamed exec result; the rest is dropped and truncated is set.
	DefaultMaxOutputBytes = 4 << 20
	// DefaultReapInterval is how often expired sandboxes are looked for.
	DefaultReapInterval = time.Second
	// AnonymousKey owns the sandboxes of a server run with NoAuth.
	AnonymousKey = "anonymous"
)

// Options configure New.
type Options struct {
	// Host runs the VMs; required. The server does not close it.
	Host *smolvm.Host
	// StaticKeys are keys accepted besides those in the store (from
	// SMOLVM_API_KEY or --api-key-file).
	StaticKeys []string
	// NoAuth accepts every request as the key "anonymous".
	NoAuth bool
	// MaxRunningPerKey bounds one key's sandboxes that are created, running
	// or paused; 0 means DefaultMaxRunningPerKey.
	MaxRunningPerKey int
	// MaxBodyBytes bounds JSON bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxOutputBytes bounds a collected exec output stream; 0 means DefaultMaxOutputBytes.
	MaxOutputBytes int
	// ReapInterval is how often timeouts are checked; 0 means DefaultReapInterval.
	ReapInterval time.Duration
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// Server serves the HTTP API. Create it with New, serve Handler, and Close
// it when done; VMs keep running.
type Server struct {
	h       *smolvm.Host
	st      *store.Store
	o       Options
	log     *slog.Logger
	static  map[string][32]byte // key id -> SHA-256 of a static key
	mux     *http.ServeMux
	routes  []string
	metrics *metrics

	mu  sync.Mutex
	vms map[string]*smolvm.VM // handles, shared by requests so they share one agent connection
	// createMu guards pending and makes a limit check and its reservation one step.
	createMu sync.Mutex
	pending  map[string]int // creates under way, by key

	stop chan struct{}
	done chan struct{}
}

// New returns a server on o.Host and starts its timeout reaper.
func New(ctx context.Context, o Options) (*Server, error) {
	if o.Host == nil {
		return nil, errors.New("server: no Host")
	}
	if o.MaxRunningPerKey <= 0 {
		o.MaxRunningPerKey = DefaultMaxRunningPerKey
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxOutputBytes <= 0 {
		o.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if o.ReapInterval <= 0 {
		o.ReapInterval = DefaultReapInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	st, err := store.Open(ctx, o.Host.DataDir())
	if err != nil {
		return nil, fmt.Errorf("server: open state: %w", err)
	}
	s := &Server{h: o.Host, st: st, o: o, log: o.Logger, static: map[string][32]byte{}, vms: map[string]*smolvm.VM{},
		pending: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, k := range o.StaticKeys {
		if k = strings.TrimSpace(k); k != "" {
			sum := sha256.Sum256([]byte(k))
			s.static[StaticKeyID(k)] = sum
		}
	}
	s.metrics = newMetrics(s)
	s.mux = http.NewServeMux()
	s.register()
	if err := s.registerE2B(); err != nil {
		st.Close()
		return nil, err
	}
	go s.reaper()
	return s, nil
}

// StaticKeyID is the id that owns the sandboxes of a static key: derived
// from its hash, so sandboxes stay with the same key across restarts.
func StaticKeyID(key string) string {
	sum := sha256.Sum256([]byte(strings.TrimSpace(key)))
	return "static-" + hex.EncodeToString(sum[:6])
}

// HasKeys reports whether any key can authenticate: a static key or a
// valid key in the store.
func (s *Server) HasKeys(ctx context.Context) (bool, error) {
	if len(s.static) > 0 {
		return true, nil
	}
	ks, err := s.st.APIKeys(ctx)
	if err != nil {
		return false, err
	}
	for _, k := range ks {
		if k.Revoked.IsZero() {
			return true, nil
		}
	}
	return false, nil
}

// Close stops the reaper, lets go of VM handles and closes the state
// database. VMs keep running.
func (s *Server) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	for id, vm := range s.vms {
		vm.Release()
		delete(s.vms, id)
	}
	s.mu.Unlock()
	return s.st.Close()
}

// VM returns the server's own handle on the VM id, opened on first use and
// shared by every request (and by a program embedding the server, or a
// benchmark: one agent connection). It checks no ownership.
func (s *Server) VM(ctx context.Context, id string) (*smolvm.VM, error) {
	s.mu.Lock()
	vm := s.vms[id]
	s.mu.Unlock()
	if vm != nil {
		return vm, nil
	}
	vm, err := s.h.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.vms[id]; old != nil {
		return old, nil
	}
	s.vms[id] = vm
	return vm, nil
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Routes lists the served routes as "METHOD /path/{param}".
func (s *Server) Routes() []string { return append([]string(nil), s.routes...) }

// handlerFunc is a handler that returns its error for the one wrapper to
// map to a status and a JSON error body.
type handlerFunc func(w http.ResponseWriter, r *http.Request, key string) error

type ctxKey int

const requestIDKey ctxKey = 1

// statusWriter records the status of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer (Flush).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func newRequestID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// handle registers pattern with the wrapper: request id, authentication
// (unless public), logs, metrics, and errors mapped to status and body.
func (s *Server) handle(pattern string, public bool, fn handlerFunc) {
	s.routes = append(s.routes, pattern)
	route := pattern
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if id == "" || len(id) > 64 {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
		key := ""
		var err error
		if !public {
			key, err = s.authenticate(r)
		}
		if err == nil {
			err = fn(sw, r, key)
		}
		if err != nil {
			s.writeError(sw, r, err)
		}
		status := sw.status
		if !sw.wrote {
			status = http.StatusOK
		}
		s.metrics.request(route, status, time.Since(start))
		lvl := slog.LevelInfo
		if status >= 500 {
			lvl = slog.LevelError
		}
		attrs := []any{"request_id", id, "method", r.Method, "path", r.URL.Path, "route", route, "status", status,
			"duration_ms", float64(time.Since(start).Microseconds()) / 1000, "key", key}
		if err != nil {
			attrs = append(attrs, "error", err.Error())
		}
		s.log.Log(r.Context(), lvl, "request", attrs...)
	})
}

// errorBody is the JSON of every error response.
type errorBody struct {
	Error struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError maps err to its status and writes the error body, unless a
// response has already begun (then the error is only logged).
func (s *Server) writeError(w *statusWriter, r *http.Request, err error) {
	if w.wrote {
		return
	}
	kind, status := apierr.Classify(err)
	var b errorBody
	b.Error.Kind, b.Error.Message = kind, err.Error()
	if kind == apierr.Unauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="smolvm"`)
	}
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

// authenticate returns the id of the request's key.
func (s *Server) authenticate(r *http.Request) (string, error) {
	if s.o.NoAuth {
		return AnonymousKey, nil
	}
	key := r.Header.Get("X-API-Key")
	if a := r.Header.Get("Authorization"); key == "" && a != "" {
		scheme, v, ok := strings.Cut(a, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", apierr.New(apierr.Unauthorized, "the Authorization header must be 'Bearer KEY'")
		}
		key = strings.TrimSpace(v)
	}
	if key == "" {
		return "", apierr.New(apierr.Unauthorized, "no API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
	}
	return s.keyID(r.Context(), key)
}

// keyID returns the id of an API key: a static key's or a valid stored
// key's.
func (s *Server) keyID(ctx context.Context, key string) (string, error) {
	sum := sha256.Sum256([]byte(key))
	for id, h := range s.static {
		if subtle.ConstantTimeCompare(sum[:], h[:]) == 1 {
			return id, nil
		}
	}
	k, err := s.st.APIKeyByHash(ctx, sum[:])
	if errors.Is(err, store.ErrNotFound) {
		return "", apierr.New(apierr.Unauthorized, "invalid or revoked API key")
	}
	if err != nil {
		return "", err
	}
	if time.Since(k.LastUsed) > time.Minute {
		s.st.TouchAPIKey(context.WithoutCancel(ctx), k.ID)
	}
	return k.ID, nil
}

// decode reads a JSON body of at most MaxBodyBytes into v, rejecting
// unknown fields, wrong types and trailing data.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		var ute *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &mbe):
			return apierr.New(apierr.TooLarge, "request body larger than %d bytes", mbe.Limit)
		case errors.As(err, &ute):
			return apierr.New(apierr.BadRequest, "field %q: got JSON %s, want %s", strings.TrimPrefix(ute.Field, "VMConfig."), ute.Value, ute.Type)
		case errors.As(err, &se):
			return apierr.New(apierr.BadRequest, "malformed JSON at byte %d: %v", se.Offset, err)
		case errors.Is(err, io.EOF):
			return apierr.New(apierr.BadRequest, "empty request body: want a JSON object")
		}
		return apierr.New(apierr.BadRequest, "bad JSON body: %v", err)
	}
	if dec.More() {
		return apierr.New(apierr.BadRequest, "trailing data after the JSON object")
	}
	return nil
}
