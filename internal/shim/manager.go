// Package shim is SmolVM's containerd runtime v2 shim: a task service
// (task API v2 over ttrpc, as containerd 1.6 and 1.7 speak it) in which one
// task is one microVM. The container's root filesystem becomes the VM's
// root disk and its processes run through the guest agent. containerd's
// own shim package does the protocol (start and delete commands, socket,
// address file, events); this package translates the task calls onto the
// SmolVM SDK.
package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/ttrpc"

	"github.com/smolvm-go/smolvm"
)

// RuntimeName is the runtime's name in containerd
// (`ctr run --runtime io.containerd.smolvm.v2`); containerd derives the
// binary name containerd-shim-smolvm-v2 from it.
const RuntimeName = "io.containerd.smolvm.v2"

type ttrpcServer = *ttrpc.Server

// Run runs the shim binary: the start and delete commands containerd
// invokes, or the long-running task server.
func Run() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return newService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
		},
	})
	// No reaper: the shim's children (QEMU, mkfs.ext4, mount) are waited
	// for by the code that starts them.
	shim.RunManager(context.Background(), manager{}, func(c *shim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}

// manager implements the shim's start and delete commands.
type manager struct{}

func (manager) Name() string { return RuntimeName }

// Start starts the task server in the background on a new socket, writes
// the socket's address to the bundle's address file and returns it.
func (manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	address, err := shim.SocketAddress(ctx, opts.Address, id)
	if err != nil {
		return "", err
	}
	sock, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
		if shim.CanConnect(address) {
			// A server for this task already runs.
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		shim.RemoveSocket(address)
		if sock, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			sock.Close()
			shim.RemoveSocket(address)
		}
	}()
	f, err := sock.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir, _ = os.Getwd()
	cmd.Env = os.Environ()
	cmd.ExtraFiles = []*os.File{f} // fd 3: the server's listener
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	// The task server lives in the pod's network namespace, if any.
	var nsPath string
	if spec, err := readSpec(cmd.Dir); err == nil {
		nsPath = netnsPath(spec)
	}
	if nsPath != "" {
		err = startInNetns(cmd, nsPath)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return "", err
	}
	go cmd.Wait()
	return address, nil
}

// Stop is the delete command: containerd runs it in the bundle after the
// server ended or was killed. It removes the task's VM (found by its
// derived id) and rootfs image, whatever state they were left in.
func (manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return shim.StopStatus{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, teardownTimeout)
	defer cancel()
	h, err := smolvm.Open(ctx, smolvm.HostOptions{})
	if err != nil {
		return shim.StopStatus{}, err
	}
	defer h.Close()
	vm, err := h.Get(ctx, vmID(ns, id))
	switch {
	case err == nil:
		del := func() error { return vm.ForceDelete(ctx) }
		if nsPath := bundleNetns(); nsPath != "" {
			// Its TAP is in the pod's namespace, if that still exists.
			del = func() error { return doInNetns(nsPath, func() error { return vm.ForceDelete(ctx) }) }
		}
		if err := del(); err != nil && !errors.Is(err, smolvm.ErrNotFound) {
			return shim.StopStatus{}, fmt.Errorf("delete VM %s: %w", vm.ID(), err)
		}
	case !errors.Is(err, smolvm.ErrNotFound):
		return shim.StopStatus{}, err
	}
	if bundle, err := os.Getwd(); err == nil {
		os.Remove(filepath.Join(bundle, rootfsImage))
		// A server that was killed left its socket behind.
		if address, err := shim.ReadAddress(filepath.Join(bundle, "address")); err == nil {
			shim.RemoveSocket(address)
		}
	}
	return shim.StopStatus{ExitStatus: 128 + int(syscall.SIGKILL), ExitedAt: time.Now()}, nil
}
