package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/agent/server"
	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/guest/initd"
)

// serveConfig is what the init passes on to the agent server.
type serveConfig struct {
	Version   string
	VsockPort uint32
	// VsockAnyPeer serves vsock peers on any port (Firecracker's hybrid
	// vsock); by default only privileged host ports are served.
	VsockAnyPeer bool
	PowerOff     func()
	Logf         func(format string, args ...any)
	// Ready is called once the server serves.
	Ready func()
}

// serveAgent runs the agent's command server until ctx is done.
func serveAgent(ctx context.Context, c serveConfig) error {
	return server.Run(ctx, server.Options{Version: c.Version, VsockPort: c.VsockPort, VsockAnyPeer: c.VsockAnyPeer, PowerOff: c.PowerOff, Logf: c.Logf, Ready: c.Ready})
}

// readyNotifier returns the function that tells the init the server
// serves: one byte on the descriptor initd.ReadyFDEnv names, which it then
// closes. The variable is removed from the environment and the descriptor
// is not inherited by commands. Without it, it returns a no-op.
func readyNotifier() func() {
	v, ok := os.LookupEnv(initd.ReadyFDEnv)
	os.Unsetenv(initd.ReadyFDEnv)
	fd, err := strconv.Atoi(v)
	if !ok || err != nil || fd < 3 {
		return func() {}
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "ready")
	var once sync.Once
	return func() {
		once.Do(func() {
			f.Write([]byte{1})
			f.Close()
		})
	}
}

// serve runs the agent server as the init's child and returns its exit status.
func serve() int {
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "smolvm-agent: "+format+"\n", args...)
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	params, err := bootparams.Parse(string(cmdline))
	if err != nil {
		logf("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	err = serveAgent(ctx, serveConfig{
		Version:   version,
		VsockPort: params.AgentPort,
		// Only root on the host reaches the agent over vsock, unless the
		// host says its vsock is reachable by root only anyway.
		VsockAnyPeer: params.AgentAnyPeer,
		// The init (PID 1) powers off on SIGUSR2, like busybox's poweroff.
		PowerOff: func() { _ = unix.Kill(1, unix.SIGUSR2) },
		Logf:     logf,
		Ready:    readyNotifier(),
	})
	switch {
	case err != nil && ctx.Err() == nil:
		logf("server: %v", err)
		return 1
	}
	return 0
}
