// Package initd is the guest's init (PID 1): it mounts the early
// filesystems, loads the kernel modules the initramfs carries, mounts the
// root disk and switches to it, sets the hostname, configures the network,
// starts sshd when the image has it, starts the agent server as a child
// process, prints the ready marker on the console, reaps orphans, and
// powers the VM off on request. It never panics: a failing step is logged
// to the console and the boot goes on; if it cannot go on, it powers off.
package initd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/guest/kmod"
	"github.com/smolvm-go/smolvm/internal/guest/mount"
	"github.com/smolvm-go/smolvm/internal/guest/netcfg"
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
}

// New returns an Init for opts without running anything.
func New(opts Options) *Init {
	in := &Init{opts: opts, console: opts.Console, start: time.Now(), done: make(chan struct{})}
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

// Boot runs the boot steps up to the ready marker.
func (in *Init) Boot() {
	in.logf("smolvm-agent %s starting", in.opts.Version)
	if !in.opts.DryRun {
		// Make Ctrl-Alt-Del send SIGINT to us instead of rebooting.
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	}
	in.step("mount early filesystems", in.mounts.MountEarly)
	cmdline := in.opts.Cmdline
	if cmdline == "" {
		b, _ := os.ReadFile(in.path("/proc/cmdline"))
		cmdline = string(b)
	}
	in.step("kernel command line", func() (err error) {
		in.params, err = bootparams.Parse(cmdline)
		return err
	})
	nmods := 0
	in.step("load modules", func() error {
		l := &kmod.Loader{Root: in.opts.Root, Cmdline: cmdline, DryRun: in.opts.DryRun}
		err := l.LoadOrder()
		nmods = len(l.Loaded)
		in.mounts.Ops = append(in.mounts.Ops, l.Loaded...)
		return err
	})
	rooted := in.step("mount root", func() error {
		dev := in.params.RootDevice()
		if err := in.mounts.WaitDevice(dev, in.opts.RootWait); err != nil {
			return err
		}
		return in.mounts.MountRoot(dev, in.params.RootFSType(), newRoot)
	})
	if rooted {
		// If switching fails half-way we may be left without /proc:
		// continue anyway, the agent can still report.
		in.step("switch root", func() error { return in.mounts.SwitchRoot(newRoot) })
	} else {
		in.logf("staying on the initramfs")
	}
	if in.params.ID != "" {
		in.step("hostname", func() error {
			in.mounts.Ops = append(in.mounts.Ops, "hostname "+in.params.ID)
			if in.opts.DryRun {
				return nil
			}
			return unix.Sethostname([]byte(in.params.ID))
		})
	}
	in.step("network", func() error {
		c := &netcfg.Config{Root: in.opts.Root, DryRun: in.opts.DryRun}
		err := c.Apply(in.params)
		in.mounts.Ops = append(in.mounts.Ops, c.Ops...)
		return err
	})
	if !in.opts.DryRun {
		// No udev: name the virtio-serial ports ourselves. The agent server
		// waits for its port, so linking goes on in the background.
		in.LinkVirtioPortsOnce()
		go in.linkVirtioPorts(10 * time.Second)
	}
	if _, err := os.Stat(in.path("/usr/sbin/sshd")); err == nil && !in.opts.DryRun {
		go in.step("sshd", in.startSSHD)
	}
	if len(in.opts.ServeArgs) > 0 && !in.opts.DryRun {
		go in.superviseServer()
	}
	network := "none"
	if in.params.Addr.IsValid() {
		network = in.params.Addr.String()
	}
	rootDesc := "initramfs"
	if rooted {
		rootDesc = in.params.RootDevice() + " (" + in.params.RootFSType() + ")"
	}
	in.logf("booted: modules=%d root=%s hostname=%s network=%s", nmods, rootDesc, in.params.ID, network)
	in.ready()
}

// ready prints the ready marker with the kernel's uptime.
func (in *Init) ready() {
	up := time.Since(in.start).Seconds()
	if b, err := os.ReadFile(in.path("/proc/uptime")); err == nil {
		fmt.Sscanf(string(b), "%f", &up)
	}
	fmt.Fprintf(in.console, "%s uptime=%.2fs\n", bootparams.ReadyMarker, up)
}

// run starts a program through the reaper and waits for it.
func (in *Init) run(argv ...string) (unix.WaitStatus, error) {
	_, ch, err := in.reaper.Start(argv, in.procAttr())
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", argv[0], err)
	}
	return <-ch, nil
}

func (in *Init) procAttr() *syscall.ProcAttr {
	return &syscall.ProcAttr{
		Dir:   "/",
		Env:   childEnv,
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
}

// startSSHD generates missing host keys, then runs sshd in the foreground
// as a child of the init.
func (in *Init) startSSHD() error {
	keys, _ := filepath.Glob("/etc/ssh/ssh_host_*_key")
	if len(keys) == 0 {
		// Only Ed25519 and ECDSA: an RSA key takes many seconds on an
		// emulated (TCG) CPU, and every current client speaks Ed25519.
		for _, typ := range []string{"ed25519", "ecdsa"} {
			key := "/etc/ssh/ssh_host_" + typ + "_key"
			ws, err := in.run("/usr/bin/ssh-keygen", "-q", "-t", typ, "-N", "", "-C", "root@"+in.params.ID, "-f", key)
			if err != nil || ws.ExitStatus() != 0 {
				return fmt.Errorf("ssh-keygen -t %s: %v (%s)", typ, err, waitString(ws))
			}
		}
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	// Name the keys that exist, so sshd does not complain about the rest.
	argv := []string{"/usr/sbin/sshd", "-D"}
	keys, _ = filepath.Glob("/etc/ssh/ssh_host_*_key")
	for _, k := range keys {
		argv = append(argv, "-h", k)
	}
	_, ch, err := in.reaper.Start(argv, in.procAttr())
	if err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	go func() {
		ws := <-ch
		in.logf("sshd exited: %v", waitString(ws))
	}()
	return nil
}

// superviseServer runs the agent server and restarts it when it dies,
// backing off, unless it exits with ExitUnavailable.
func (in *Init) superviseServer() {
	defer func() {
		if r := recover(); r != nil {
			in.logf("agent server supervisor: panic: %v", r)
		}
	}()
	backoff := 500 * time.Millisecond
	for {
		started := time.Now()
		ws, err := in.run(in.opts.ServeArgs...)
		if err != nil {
			in.logf("agent server: %v", err)
		} else {
			if ws.Exited() && ws.ExitStatus() == ExitUnavailable {
				in.logf("agent server unavailable (exit %d); not restarting", ExitUnavailable)
				return
			}
			in.logf("agent server exited (%s); restarting", waitString(ws))
		}
		if time.Since(started) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 30*time.Second)
	}
}

func waitString(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

// PowerOff stops every process (SIGTERM, then SIGKILL after 2 s), syncs,
// unmounts or remounts read-only every disk, and powers the machine off.
// Only the first call acts. With the real reboot(2) it does not return; if
// that fails it logs and waits forever rather than let PID 1 exit (which
// would panic the kernel).
func (in *Init) PowerOff(reason string) {
	in.poweroff.Do(func() {
		defer close(in.done)
		defer func() {
			if r := recover(); r != nil {
				in.logf("power off: panic: %v", r)
			}
		}()
		in.logf("powering off (%s)", reason)
		_ = in.opts.Kill(-1, unix.SIGTERM)
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && !in.opts.DryRun {
			in.reaper.ReapAll()
			if !userProcessesLeft("/proc") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = in.opts.Kill(-1, unix.SIGKILL)
		in.reaper.ReapAll()
		if !in.opts.DryRun {
			unix.Sync()
		}
		if err := in.mounts.UnmountAll(); err != nil {
			in.logf("power off: %v", err)
		}
		if !in.opts.DryRun {
			unix.Sync()
		}
		if err := in.opts.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			in.logf("power off: reboot(POWER_OFF): %v", err)
			if in.opts.DryRun {
				return
			}
			select {} // PID 1 must not exit
		}
	})
}

// Fatal is for the binary's main: it logs a panic value or error that
// escaped the init and powers off instead of letting PID 1 die.
func (in *Init) Fatal(v any) {
	in.logf("fatal: %v", v)
	in.PowerOff("fatal error")
}

// linkVirtioPorts creates /dev/virtio-ports/<name> symlinks for named
// virtio-serial ports, as udev would, for ports that appear within d.
func (in *Init) linkVirtioPorts(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		in.LinkVirtioPortsOnce()
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LinkVirtioPortsOnce creates the /dev/virtio-ports/<name> symlink of every
// named port now listed in /sys/class/virtio-ports.
func (in *Init) LinkVirtioPortsOnce() {
	ports, _ := filepath.Glob(in.path("/sys/class/virtio-ports/vport*"))
	for _, p := range ports {
		b, err := os.ReadFile(filepath.Join(p, "name"))
		name := string(bytesTrimSpace(b))
		if err != nil || name == "" || name != filepath.Base(name) {
			continue
		}
		link := in.path("/dev/virtio-ports/" + name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		_ = os.MkdirAll(filepath.Dir(link), 0o755)
		_ = os.Symlink("../"+filepath.Base(p), link)
	}
}

func bytesTrimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// pfKthread is the kernel-thread bit of a task's flags (/proc/PID/stat field 9).
const pfKthread = 0x00200000

// userProcessesLeft reports whether any live process other than init and
// kernel threads remains. kill(-1, 0) cannot tell: it succeeds as long as
// kernel threads exist, which is always.
func userProcessesLeft(proc string) bool {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		// f[0] is the state (field 3), f[6] the flags (field 9).
		if len(f) < 7 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		flags, err := strconv.ParseUint(f[6], 10, 64)
		if err == nil && flags&pfKthread != 0 {
			continue
		}
		return true
	}
	return false
}
