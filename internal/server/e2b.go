package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/apierr"
	"github.com/smolvm-go/smolvm/internal/server/e2b"
	"github.com/smolvm-go/smolvm/internal/store"
)

// e2bSecretFile holds the secret the E2B layer derives sandbox access
// tokens from; kept across restarts so tokens stay valid.
const e2bSecretFile = "e2b-secret"

// registerE2B mounts the E2B control plane and envd APIs on the server's
// listener: their paths do not overlap with /v1.
func (s *Server) registerE2B() error {
	secret, err := loadSecret(filepath.Join(s.h.DataDir(), e2bSecretFile))
	if err != nil {
		return fmt.Errorf("server: E2B secret: %w", err)
	}
	h, err := e2b.New(e2b.Config{Backend: e2bBackend{s}, Secret: secret, Logger: s.log})
	if err != nil {
		return err
	}
	for _, p := range e2b.Routes() {
		s.mux.Handle(p, h)
	}
	return nil
}

// loadSecret reads a 32-byte secret from path, creating it (0600) on
// first use.
func loadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) >= 32 {
		return b, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	b = make([]byte, 32)
	rand.Read(b)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, err
	}
	if err := os.Link(tmp, path); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			return loadSecret(path) // another server made it first
		}
		return nil, err
	}
	os.Remove(tmp)
	return b, nil
}

// e2bBackend gives the E2B layer the server's keys, sandboxes and
// timeouts: an E2B sandbox is a sandbox of the native API too.
type e2bBackend struct{ s *Server }

func (b e2bBackend) Authenticate(ctx context.Context, apiKey string) (string, error) {
	if b.s.o.NoAuth {
		return AnonymousKey, nil
	}
	id, err := b.s.keyID(ctx, strings.TrimSpace(apiKey))
	if k, _ := apierr.Classify(err); err != nil && k == apierr.Unauthorized {
		return "", fmt.Errorf("%w: %v", e2b.ErrUnauthorized, err)
	}
	return id, err
}

// e2bSandbox describes a sandbox to the E2B layer.
func e2bSandbox(inf smolvm.VMInfo, sb store.Sandbox) e2b.Sandbox {
	tmpl := inf.Config.Image
	if fs := inf.Config.FromSnapshot; fs != "" {
		tmpl = "snapshot:" + fs
	}
	return e2b.Sandbox{ID: inf.VMID, Template: tmpl, Metadata: sb.Metadata, Started: inf.CreatedAt, Expires: sb.Expires,
		State: inf.Status, VCPUs: inf.Config.VCPUCount, MemoryMiB: inf.Config.MemSizeMiB}
}

func (b e2bBackend) Create(ctx context.Context, key string, req e2b.CreateRequest) (e2b.Sandbox, error) {
	cr := CreateRequest{VMConfig: req.Config, TimeoutSeconds: int(req.Timeout / time.Second), Metadata: req.Metadata}
	if err := validateCreate(&cr); err != nil {
		return e2b.Sandbox{}, err
	}
	vm, sb, err := b.s.createSandbox(ctx, key, cr)
	if err != nil {
		return e2b.Sandbox{}, err
	}
	return e2bSandbox(vm.Info(), sb), nil
}

func (b e2bBackend) Get(ctx context.Context, key, id string) (e2b.Sandbox, error) {
	vm, sb, err := b.s.lookup(ctx, key, id)
	if err != nil {
		return e2b.Sandbox{}, err
	}
	if err := vm.Refresh(ctx); err != nil {
		return e2b.Sandbox{}, err
	}
	return e2bSandbox(vm.Info(), sb), nil
}

func (b e2bBackend) List(ctx context.Context, key string) ([]e2b.Sandbox, error) {
	owned, err := b.s.owned(ctx, key, "")
	if err != nil {
		return nil, err
	}
	var out []e2b.Sandbox
	for _, o := range owned {
		out = append(out, e2bSandbox(o.inf, o.sb))
	}
	return out, nil
}

func (b e2bBackend) Delete(ctx context.Context, key, id string) error {
	vm, _, err := b.s.lookup(ctx, key, id)
	if err != nil {
		return err
	}
	if err := vm.ForceDelete(ctx); err != nil {
		return err
	}
	b.s.forget(id)
	return nil
}

func (b e2bBackend) SetTimeout(ctx context.Context, key, id string, d time.Duration) error {
	if _, _, err := b.s.lookup(ctx, key, id); err != nil {
		return err
	}
	var exp time.Time
	if d > 0 {
		exp = time.Now().Add(d)
	}
	return b.s.st.SetSandboxExpiry(ctx, id, exp)
}

func (b e2bBackend) Pause(ctx context.Context, key, id string) error {
	vm, _, err := b.s.lookup(ctx, key, id)
	if err != nil {
		return err
	}
	return vm.Pause(ctx)
}

func (b e2bBackend) Resume(ctx context.Context, key, id string) error {
	vm, _, err := b.s.lookup(ctx, key, id)
	if err != nil {
		return err
	}
	if err := vm.Refresh(ctx); err != nil {
		return err
	}
	switch vm.Info().Status {
	case smolvm.StatePaused:
		return vm.Resume(ctx)
	case smolvm.StateRunning:
		return nil
	}
	if err := b.s.checkLimit(ctx, key, id); err != nil {
		return err
	}
	return vm.Start(ctx)
}

func (b e2bBackend) VM(ctx context.Context, id string) (*smolvm.VM, error) {
	// Only the server's sandboxes have envd access; the token proves the
	// caller got it from the control plane.
	if _, err := b.s.st.GetSandbox(ctx, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("sandbox %s: %w", id, smolvm.ErrNotFound)
		}
		return nil, err
	}
	return b.s.VM(ctx, id)
}
