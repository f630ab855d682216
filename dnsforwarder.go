package smolvm

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm-go/smolvm/internal/netplan"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/network/dnsfwd"
)

// The DNS forwarder runs in a small supervisor process, one per data
// directory and network namespace, started by the first VM start that
// needs it and exiting (DNSForwarderIdleExit) once no VM needs it. It is
// a helper process (helpers.go), this program re-executed with the command
// line `smolvm _dns-forwarder --dir DIR`, in its own session, so it
// outlives the command that started it. Its state
// directory is <data dir>/dnsfwd/net-<netns inode>:
//
//	lock          held by the running supervisor
//	pid           its process id
//	log           its warnings (cut to 1 MiB when it starts)
//	vms/<id>.json one file per running VM that uses it: addresses, policy, upstreams
//
// Start writes the VM's file, then makes sure a supervisor runs; stop and
// delete remove the file; Cleanup removes the files of VMs that do not
// run and kills forwarder processes of this data directory that hold no
// lock.

// DNSForwarderCommand is the hidden smolvm subcommand that runs the DNS
// forwarder supervisor (see ServeDNSForwarder).
const DNSForwarderCommand = "_dns-forwarder"

// DNSForwarderIdleExit is how long the forwarder keeps running once no VM
// needs it.
const DNSForwarderIdleExit = 10 * time.Second

// maxForwarderLog bounds the forwarder's log file when it starts.
const maxForwarderLog = 1 << 20

// ServeDNSForwarder is the body of `smolvm _dns-forwarder --dir DIR`: it
// serves the VMs registered in dir until none has been for idleExit (0:
// DNSForwarderIdleExit), or until SIGTERM or SIGINT. If another supervisor
// already serves dir it returns nil at once.
func ServeDNSForwarder(ctx context.Context, dir string, idleExit time.Duration) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return configErr("dir", dir, "must be an absolute path")
	}
	if idleExit <= 0 {
		idleExit = DNSForwarderIdleExit
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGUSR1: the last VM is gone, look now (see forgetDNS).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	wake := make(chan struct{}, 1)
	go func() {
		for range usr1 {
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := os.MkdirAll(dir, 0o700); err == nil {
		if f, err := openForwarderLog(dir); err == nil {
			defer f.Close()
			log = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
	}
	err := dnsfwd.Serve(ctx, dnsfwd.ServeConfig{Dir: dir, IdleExit: idleExit, Wake: wake,
		Forwarder: dnsfwd.Config{UpstreamsOptional: true, Log: log}})
	if errors.Is(err, dnsfwd.ErrRunning) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func openForwarderLog(dir string) (*os.File, error) {
	path := filepath.Join(dir, "log")
	if st, err := os.Stat(path); err == nil && st.Size() > maxForwarderLog {
		os.Remove(path)
	}
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
}

// forwarderRoot is where the forwarders of this data directory keep state.
func (h *Host) forwarderRoot() string { return filepath.Join(h.dir, "dnsfwd") }

// forwarderDir is the state directory of this network namespace's forwarder.
func (h *Host) forwarderDir() string {
	id := "0"
	if l, err := os.Readlink("/proc/self/ns/net"); err == nil {
		// "net:[4026531993]"
		if s, ok := strings.CutPrefix(l, "net:["); ok {
			id = strings.TrimSuffix(s, "]")
		}
	}
	return filepath.Join(h.forwarderRoot(), "net-"+id)
}

// forwarderCmd returns the command that runs the supervisor on dir: by
// default a helper process (helpers.go) whose command line reads like the
// hidden subcommand, `smolvm _dns-forwarder --dir DIR`, which is how
// cleanup recognises it.
func (h *Host) forwarderCmd(dir string) *exec.Cmd {
	if argv := h.opts.ForwarderCommand; len(argv) > 0 {
		cmd := exec.Command(argv[0], append(argv[1:], "--dir", dir)...)
		cmd.Dir = "/"
		return cmd
	}
	// No standard streams (nil: /dev/null, opened by exec itself). A pipe
	// would tie the supervisor to this process (SIGPIPE once it exits).
	return helperCommand(helperDNSForwarder, []string{"smolvm", DNSForwarderCommand, "--dir", dir}, nil)
}

// dnsForwarderMain is the body of the DNS forwarder helper; args are its
// command line after the program name.
func dnsForwarderMain(args []string) int {
	fs := flag.NewFlagSet(DNSForwarderCommand, flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory")
	idle := fs.Duration("idle-exit", DNSForwarderIdleExit, "exit after this long without a VM")
	if len(args) > 0 && args[0] == DNSForwarderCommand {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := ServeDNSForwarder(context.Background(), *dir, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "smolvm dns forwarder:", err)
		return 1
	}
	return 0
}

// registerDNS makes the forwarder serve the VM (writing its file and
// starting a supervisor if none runs), or forgets it when the guest uses
// resolvers of its own. A forwarder that cannot start is an error only
// when the VM's policy or upstreams depend on it; otherwise the guest's
// lookups fail as they would with an unreachable resolver.
func (h *Host) registerDNS(ctx context.Context, id string, p netplan.Plan, cfg VMConfig, pol network.Policy) error {
	wait, err := h.startDNS(id, p, cfg, pol)
	if err != nil {
		return err
	}
	return wait(ctx)
}

// startDNS is registerDNS without waiting for a supervisor it starts: the
// returned function waits (a VM start calls it once its guest booted).
func (h *Host) startDNS(id string, p netplan.Plan, cfg VMConfig, pol network.Policy) (wait func(context.Context) error, err error) {
	dir := h.forwarderDir()
	if !cfg.usesForwarder() {
		return func(context.Context) error { return nil }, dnsfwd.RemoveVM(dir, id)
	}
	var ups []string
	for _, u := range cfg.DNSUpstream {
		ap, err := parseUpstream(u)
		if err != nil {
			return nil, err
		}
		ups = append(ups, ap.String())
	}
	// A forwarder that cannot start fails the VM only when it needs one.
	check := func(err error) error {
		if err != nil && cfg.needsForwarder() {
			return fmt.Errorf("dns forwarder: %w", err)
		}
		return nil
	}
	if err := dnsfwd.WriteVM(dir, dnsfwd.VM{ID: id, GuestIP: p.GuestIP, Gateway: p.Gateway, Policy: pol, Upstreams: ups}); err != nil {
		return nil, check(err)
	}
	started, err := dnsfwd.Start(dir, h.forwarderCmd(dir))
	if err != nil {
		return func(context.Context) error { return nil }, check(err)
	}
	return func(ctx context.Context) error { return check(started(ctx)) }, nil
}

// forgetDNS stops the forwarder serving the VM. When no VM is left, the
// supervisor is told to look at once (SIGUSR1) and is waited for (at most
// 2 s), so a delete leaves no process behind. That keeps the supervisor's
// protocol safe: it releases its lock and looks at its directory once
// more before it exits, so a VM registered meanwhile is still served.
func (h *Host) forgetDNS(id string) error {
	dir := h.forwarderDir()
	if err := dnsfwd.RemoveVM(dir, id); err != nil {
		return err
	}
	if ids, err := dnsfwd.ListVMs(dir); err != nil || len(ids) > 0 {
		return nil
	}
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	pid, alive, err := dnsfwd.Running(dir)
	if err != nil || !alive || pid <= 0 || !isForwarder(pid, dir) {
		return nil
	}
	if syscall.Kill(pid, syscall.SIGUSR1) != nil {
		return nil
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil || !isForwarder(pid, dir) {
			return nil
		}
	}
	return nil
}

// dnsForwarder removes forwarder state of VMs that do not run (in every
// network namespace's directory of this data directory) and kills
// forwarder processes of this data directory that do not hold their
// directory's lock, and stops a forwarder left with no VM.
func (c *cleaner) dnsForwarder(ctx context.Context) error {
	h := c.h
	root := h.forwarderRoot()
	dirs, _ := filepath.Glob(filepath.Join(root, "net-*"))
	rows, err := h.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	running := map[string]bool{}
	for _, r := range rows {
		if (r.Status == string(StateRunning) || r.Status == string(StatePaused)) && r.PID != 0 {
			running[r.ID] = true
		}
	}
	for _, dir := range dirs {
		ids, _ := dnsfwd.ListVMs(dir)
		for _, id := range ids {
			if running[id] || (ValidateVMID(id) == nil && h.lockBusy(id)) {
				continue
			}
			c.note("dns forwarder entry " + id + " (" + dir + ")")
			if !c.co.DryRun {
				if err := dnsfwd.RemoveVM(dir, id); err != nil {
					c.errs = append(c.errs, err)
				}
			}
		}
		ids, _ = dnsfwd.ListVMs(dir)
		pid, alive, err := dnsfwd.Running(dir)
		switch {
		case err != nil:
			c.errs = append(c.errs, err)
		case !alive && len(ids) == 0:
			c.note("dns forwarder state " + dir)
			if !c.co.DryRun {
				os.RemoveAll(dir)
			}
		case alive && len(ids) == 0 && pid > 0 && isForwarder(pid, dir):
			c.note(fmt.Sprintf("dns forwarder process %d (no VM needs it)", pid))
			if !c.co.DryRun {
				// Its safe idle path: a VM registered meanwhile keeps it.
				syscall.Kill(pid, syscall.SIGUSR1)
			}
		}
	}
	// Forwarders of this data directory whose state directory was removed
	// under them: nothing can register a VM with them any more.
	for pid, dir := range forwarderProcesses(root) {
		if _, err := os.Stat(dir); err == nil {
			continue // serving, starting up, or idle and about to exit by itself
		}
		c.note(fmt.Sprintf("dns forwarder process %d (orphaned)", pid))
		if !c.co.DryRun {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	return nil
}

// isForwarder reports whether pid runs the forwarder of dir.
func isForwarder(pid int, dir string) bool {
	d, ok := forwarderProcesses(filepath.Dir(dir))[pid]
	return ok && d == dir
}

// forwarderProcesses maps the PIDs of forwarder processes whose --dir is
// below root to that directory.
func forwarderProcesses(root string) map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !slices.Contains(argv, DNSForwarderCommand) {
			continue
		}
		for i, a := range argv {
			if a == "--dir" && i+1 < len(argv) && filepath.Dir(argv[i+1]) == root {
				out[pid] = argv[i+1]
			}
		}
	}
	return out
}
