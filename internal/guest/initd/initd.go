// Package initd is the guest's init (PID 1): it mounts the early
// filesystems, loads the kernel modules the initramfs carries, mounts the
// root disk and switches to it, starts the agent server as a child
// process, sets the hostname, configures the network, writes root's SSH
// key from the kernel command line, starts sshd when the image has it,
// waits until the agent server serves, prints the ready marker on the
// console, reaps orphans, and powers the VM off on request. It never panics: a failing step is logged
// to the console and the boot goes on; if it cannot go on, it powers off.
package initd

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/guest/mount"
	"github.com/smolvm-go/smolvm/internal/guest/reaper"
)

// ServeArg is the argument the init passes to its own binary to run the
// agent server as a child process.
const ServeArg = "serve"

// ExitUnavailable is the exit status with which an agent server says it
// cannot run at all; the init then stops restarting it.
const ExitUnavailable = 3

// newRoot is where the root disk is mounted before switching to it.
const newRoot = "/newroot"

// childEnv is the environment of every process the init starts.
var childEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"TERM=linux",
	"LANG=C.UTF-8",
}

// Options configures the init. The zero value boots for real.
type Options struct {
	// Version is the agent's version, logged at boot.
	Version string
	// Console receives log lines and the ready marker; nil means stdout,
	// which the kernel connects to /dev/console.
	Console io.Writer
	// ServeArgs is the argv of the agent server process (argv[0] a path);
	// nil starts no server.
	ServeArgs []string
	// Cmdline replaces /proc/cmdline when set.
	Cmdline string
	// RootWait bounds the wait for the root device; 0 means 5 s.
	RootWait time.Duration
	// DryRun and Root make the mount, module and network steps record
	// instead of acting (see those packages), for tests.
	DryRun bool
	// Root prefixes the paths the init reads and writes; empty means /.
	Root string
	// Reboot is reboot(2); nil means unix.Reboot. Tests pass a fake.
	Reboot func(cmd int) error
	// Kill is kill(2), used to stop every process at power-off; nil means
	// unix.Kill.
	Kill func(pid int, sig unix.Signal) error
}

// Init is a running init.
type Init struct {
	opts    Options
	console io.Writer
	mounts  *mount.Mounter
	reaper  *reaper.Reaper
	params  bootparams.Params
	start   time.Time

	poweroff sync.Once
	done     chan struct{} // closed when power-off has run (tests return then)

	serverReady     chan struct{} // closed when an agent server first serves
	serverReadyOnce sync.Once
	serverGone      chan struct{} // closed when the init stops restarting the server
}

// New returns an Init for opts without running anything.
func New(opts Options) *Init {
	in := &Init{opts: opts, console: opts.Console, start: time.Now(), done: make(chan struct{}),
		serverReady: make(chan struct{}), serverGone: make(chan struct{})}
	if in.console == nil {
		in.console = os.Stdout
	}
	if in.opts.Reboot == nil {
		in.opts.Reboot = unix.Reboot
	}
	if in.opts.Kill == nil {
		in.opts.Kill = unix.Kill
	}
	if in.opts.RootWait == 0 {
		in.opts.RootWait = 5 * time.Second
	}
	in.mounts = &mount.Mounter{Root: opts.Root, DryRun: opts.DryRun}
	in.reaper = reaper.New()
	in.reaper.Logf = in.logf
	return in
}

// Run boots the guest and serves until power-off; see the package comment.
// It returns only when ctx is done or, with a fake Reboot, after power-off.
func Run(ctx context.Context, opts Options) error {
	return New(opts).Run(ctx)
}

// Mounts returns the mounter the init uses (its Ops record a dry run).
func (in *Init) Mounts() *mount.Mounter { return in.mounts }

func (in *Init) logf(format string, args ...any) {
	fmt.Fprintf(in.console, "smolvm-init: "+format+"\n", args...)
}

func (in *Init) path(p string) string {
	if in.opts.Root == "" {
		return p
	}
	return filepath.Join(in.opts.Root, p)
}

// step runs one boot step, logging its error or panic instead of stopping.
func (in *Init) step(name string, fn func() error) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			in.logf("%s: panic: %v", name, r)
			ok = false
		}
	}()
	if err := fn(); err != nil {
		in.logf("%s: %v", name, err)
		return false
	}
	return true
}

// Run boots and then waits for a power-off request or ctx.
func (in *Init) Run(ctx context.Context) error {
	sigs := make(chan os.Signal, 4)
	// SIGTERM and SIGUSR2 are what busybox's reboot and poweroff send to
	// PID 1, SIGUSR1 is halt, SIGINT is Ctrl-Alt-Del, SIGPWR a power event:
	// in a VM they all mean power off.
	signal.Notify(sigs, unix.SIGTERM, unix.SIGUSR1, unix.SIGUSR2, unix.SIGINT, unix.SIGPWR)
	defer signal.Stop(sigs)

	rctx, cancelReaper := context.WithCancel(ctx)
	defer cancelReaper()
	if !in.opts.DryRun {
		go in.reaper.Run(rctx)
	}
	in.Boot()
	select {
	case s := <-sigs:
		in.PowerOff("signal " + s.String())
	case <-in.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Fatal is for the binary's main: it logs a panic value or error that
// escaped the init and powers off instead of letting PID 1 die.
func (in *Init) Fatal(v any) {
	in.logf("fatal: %v", v)
	in.PowerOff("fatal error")
}
