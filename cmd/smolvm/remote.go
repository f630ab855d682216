package main

import (
	"context"
	"fmt"
	"os"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/client"
)

// vmHandle is what the VM commands need of a VM: *smolvm.VM (local) and
// *client.VM (a server given by --host) both have it.
type vmHandle interface {
	ID() string
	Info() smolvm.VMInfo
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	Delete(ctx context.Context) error
	ForceDelete(ctx context.Context) error
	Exec(ctx context.Context, eo smolvm.ExecOptions) (smolvm.ExitStatus, error)
	UploadFile(ctx context.Context, localPath, guestPath string) error
	Release() error
}

// vmHost is what the VM commands need of a host: a local smolvm.Host or
// a remote server.
type vmHost interface {
	Create(ctx context.Context, cfg smolvm.VMConfig, progress func(string, int64, int64)) (vmHandle, error)
	Get(ctx context.Context, id string) (vmHandle, error)
	List(ctx context.Context, lo smolvm.ListOptions) ([]smolvm.VMInfo, error)
}

type localHost struct{ h *smolvm.Host }

func (l localHost) Create(ctx context.Context, cfg smolvm.VMConfig, progress func(string, int64, int64)) (vmHandle, error) {
	vm, err := l.h.Create(ctx, cfg, smolvm.WithProgress(progress))
	if err != nil {
		return nil, err
	}
	return vm, nil
}

func (l localHost) Get(ctx context.Context, id string) (vmHandle, error) {
	vm, err := l.h.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return vm, nil
}

func (l localHost) List(ctx context.Context, lo smolvm.ListOptions) ([]smolvm.VMInfo, error) {
	return l.h.List(ctx, lo)
}

type remoteHost struct{ c *client.Client }

func (r remoteHost) Create(ctx context.Context, cfg smolvm.VMConfig, _ func(string, int64, int64)) (vmHandle, error) {
	vm, err := r.c.Create(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return vm, nil
}

func (r remoteHost) Get(ctx context.Context, id string) (vmHandle, error) {
	vm, err := r.c.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return vm, nil
}

func (r remoteHost) List(ctx context.Context, lo smolvm.ListOptions) ([]smolvm.VMInfo, error) {
	return r.c.List(ctx, lo)
}

// remoteURL returns the server the CLI drives: --host, else $SMOLVM_HOST;
// "" means local.
func (g *globals) remoteURL() string {
	if g.remote != "" {
		return g.remote
	}
	return os.Getenv(client.HostEnv)
}

// api returns the host the VM commands drive: the server given by --host
// or $SMOLVM_HOST (with $SMOLVM_API_KEY), else the local data directory.
func (g *globals) api(ctx context.Context) (vmHost, error) {
	if u := g.remoteURL(); u != "" {
		c, err := client.New(u, os.Getenv(client.APIKeyEnv))
		if err != nil {
			return nil, usageError{err}
		}
		return remoteHost{c}, nil
	}
	h, err := g.host(ctx)
	if err != nil {
		return nil, err
	}
	return localHost{h}, nil
}

// vm returns a handle on the VM id, local or remote.
func (g *globals) vm(ctx context.Context, id string) (vmHandle, error) {
	a, err := g.api(ctx)
	if err != nil {
		return nil, err
	}
	return a.Get(ctx, id)
}

// errLocalOnly is the error of a command that has no remote form.
func errLocalOnly() error {
	return usageError{fmt.Errorf("this command works on the local data directory only; unset --host / $%s", client.HostEnv)}
}
