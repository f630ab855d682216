package dnsfwd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/network"
)

// ErrRunning means another supervisor holds the state directory's lock.
var ErrRunning = errors.New("dnsfwd: a supervisor is already running")

// RescanInterval is how often the supervisor rereads its VM files even
// without an inotify event (and retries gateways it could not bind).
const RescanInterval = 2 * time.Second

// Bounds on the state directory.
const (
	maxVMFile  = 64 << 10
	maxVMFiles = 4096
)

// ServeConfig configures Serve.
type ServeConfig struct {
	// Dir is the state directory (see the package comment).
	Dir string
	// Forwarder configures the forwarder.
	Forwarder Config
	// IdleExit is how long Serve keeps running with no VM; default 10s.
	IdleExit time.Duration
	// Wake, if not nil, makes Serve look at once whether it is idle (as
	// if IdleExit had passed): the last VM's owner sends on it after
	// removing the VM's file, so the supervisor exits without lingering.
	Wake <-chan struct{}
}

// VMFile is the JSON form of a VM in DIR/vms/ID.json.
type VMFile struct {
	ID       string   `json:"id"`
	GuestIP  string   `json:"guest_ip"`
	Gateway  string   `json:"gateway"`
	Internet bool     `json:"internet"`
	AllowOut []string `json:"allow_out,omitempty"`
	DenyOut  []string `json:"deny_out,omitempty"`
	// Upstreams are the VM's own resolvers (VM.Upstreams), as ip:port.
	Upstreams []string `json:"upstreams,omitempty"`
}

// vm parses v.
func (v VMFile) vm() (VM, error) {
	g, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return VM{}, fmt.Errorf("guest_ip: %w", err)
	}
	gw, err := netip.ParseAddr(v.Gateway)
	if err != nil {
		return VM{}, fmt.Errorf("gateway: %w", err)
	}
	p, err := network.ParsePolicy(v.Internet, v.AllowOut, v.DenyOut, "")
	if err != nil {
		return VM{}, err
	}
	if err := checkUpstreams(v.Upstreams); err != nil {
		return VM{}, err
	}
	return VM{ID: v.ID, GuestIP: g, Gateway: gw, Policy: p, Upstreams: v.Upstreams}, nil
}

// FileOf returns the VMFile of vm.
func FileOf(vm VM) VMFile {
	f := VMFile{ID: vm.ID, GuestIP: vm.GuestIP.String(), Gateway: vm.Gateway.String(), Internet: vm.Policy.Internet, Upstreams: vm.Upstreams}
	for _, r := range vm.Policy.AllowOut {
		f.AllowOut = append(f.AllowOut, r.String())
	}
	for _, r := range vm.Policy.DenyOut {
		f.DenyOut = append(f.DenyOut, r.String())
	}
	return f
}

func vmsDir(dir string) string { return filepath.Join(dir, "vms") }

func validID(id string) bool {
	return id != "" && len(id) <= 64 && !strings.ContainsAny(id, "/\x00") && id[0] != '.'
}

// WriteVM writes (atomically, by rename) the file that makes the
// supervisor of dir serve vm, creating dir (0700) if needed.
func WriteVM(dir string, vm VM) error {
	if !validID(vm.ID) {
		return fmt.Errorf("dnsfwd: vm id %q: must be 1-64 characters without '/' and not start with '.'", vm.ID)
	}
	if _, err := FileOf(vm).vm(); err != nil {
		return fmt.Errorf("dnsfwd: vm %s: %w", vm.ID, err)
	}
	if err := os.MkdirAll(vmsDir(dir), 0o700); err != nil {
		return fmt.Errorf("dnsfwd: %w", err)
	}
	b, err := json.Marshal(FileOf(vm))
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(vmsDir(dir), ".tmp-")
	if err != nil {
		return fmt.Errorf("dnsfwd: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("dnsfwd: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("dnsfwd: write %s: %w", tmp.Name(), err)
	}
	return os.Rename(tmp.Name(), filepath.Join(vmsDir(dir), vm.ID+".json"))
}

// RemoveVM removes the VM's file; a missing file is success.
func RemoveVM(dir, id string) error {
	if !validID(id) {
		return fmt.Errorf("dnsfwd: vm id %q is not valid", id)
	}
	err := os.Remove(filepath.Join(vmsDir(dir), id+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// ListVMs returns the ids of the VMs with a file in dir.
func ListVMs(dir string) ([]string, error) {
	ents, err := os.ReadDir(vmsDir(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dnsfwd: %w", err)
	}
	var out []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && validID(id) && e.Type().IsRegular() {
			out = append(out, id)
		}
	}
	return out, nil
}

// readVMs reads the VM files of dir; bad files are reported and skipped.
func readVMs(dir string) (map[string]VMFile, []error) {
	ids, err := ListVMs(dir)
	if err != nil {
		return nil, []error{err}
	}
	out := map[string]VMFile{}
	var errs []error
	for i, id := range ids {
		if i == maxVMFiles {
			errs = append(errs, fmt.Errorf("dnsfwd: more than %d VM files; the rest are ignored", maxVMFiles))
			break
		}
		path := filepath.Join(vmsDir(dir), id+".json")
		b, err := readBounded(path, maxVMFile)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		var v VMFile
		if err == nil {
			err = json.Unmarshal(b, &v)
		}
		if err == nil && v.ID != id {
			err = fmt.Errorf("id %q does not match the file name", v.ID)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("dnsfwd: %s: %w", path, err))
			continue
		}
		out[id] = v
	}
	return out, errs
}

func readBounded(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, n+1))
	if err == nil && int64(len(b)) > n {
		err = fmt.Errorf("larger than %d bytes", n)
	}
	return b, err
}

// lockDir takes dir's lock without waiting; the returned file holds it.
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dnsfwd: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dnsfwd: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrRunning
		}
		return nil, fmt.Errorf("dnsfwd: lock %s: %w", dir, err)
	}
	return f, nil
}

// Running reports whether a supervisor holds dir's lock, and its pid
// (0 if its pid file is unreadable).
func Running(dir string) (pid int, running bool, err error) {
	f, err := lockDir(dir)
	if errors.Is(err, ErrRunning) {
		// The supervisor writes its pid just after taking the lock.
		for i := 0; i < 20 && pid == 0; i++ {
			if i > 0 {
				time.Sleep(10 * time.Millisecond)
			}
			b, _ := readBounded(filepath.Join(dir, "pid"), 32)
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return pid, true, nil
	}
	if err != nil {
		return 0, false, err
	}
	f.Close()
	return 0, false, nil
}

// Start starts cmd (the hidden subcommand running Serve on dir) in its own
// session, unless a supervisor already holds dir's lock, and returns a
// function that waits (at most 10 s, or until ctx ends) until one does.
// Call it after WriteVM. A VM start launches its VMM before it waits, so
// the supervisor comes up while the guest boots.
func Start(dir string, cmd *exec.Cmd) (wait func(context.Context) error, err error) {
	if _, running, err := Running(dir); err != nil || running {
		return func(context.Context) error { return nil }, err
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("dnsfwd: start supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it exits; a running one outlives us
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for {
			if _, running, err := Running(dir); err != nil || running {
				return err
			}
			select {
			case err := <-exited:
				// Lost a race with another supervisor, or failed.
				if _, running, _ := Running(dir); running {
					return nil
				}
				return fmt.Errorf("dnsfwd: supervisor exited before serving: %v", err)
			case <-ctx.Done():
				return fmt.Errorf("dnsfwd: supervisor did not start: %w", ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}, nil
}

// Serve is the supervisor's body: it takes dir's lock (ErrRunning if
// another holds it), writes its pid, serves the VMs of dir's files as they
// come and go, and returns nil once no VM file has existed for IdleExit,
// or ctx's error when ctx ends.
func Serve(ctx context.Context, cfg ServeConfig) error {
	if cfg.IdleExit <= 0 {
		cfg.IdleExit = 10 * time.Second
	}
	lk, err := lockDir(cfg.Dir)
	if err != nil {
		return err
	}
	defer func() { lk.Close() }()
	if err := os.MkdirAll(vmsDir(cfg.Dir), 0o700); err != nil {
		return fmt.Errorf("dnsfwd: %w", err)
	}
	pidPath := filepath.Join(cfg.Dir, "pid")
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return fmt.Errorf("dnsfwd: %w", err)
	}
	f, err := New(cfg.Forwarder)
	if err != nil {
		return err
	}
	defer f.Close()
	events, stop, err := watch(vmsDir(cfg.Dir))
	if err != nil {
		return err
	}
	defer stop()

	s := &supervisor{f: f, dir: cfg.Dir, applied: map[string]VMFile{}}
	idleSince := time.Now()
	tick := time.NewTicker(RescanInterval)
	defer tick.Stop()
	woken := false
	for {
		if s.sync() > 0 {
			idleSince = time.Now()
		} else if woken || time.Since(idleSince) >= cfg.IdleExit {
			// Release the lock, then look once more (see the package comment).
			os.Remove(pidPath)
			lk.Close()
			if ids, _ := ListVMs(cfg.Dir); len(ids) == 0 {
				return nil
			}
			if lk, err = lockDir(cfg.Dir); err != nil {
				if errors.Is(err, ErrRunning) {
					return nil // another supervisor serves them
				}
				return err
			}
			_ = os.WriteFile(pidPath, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
			idleSince = time.Now()
			continue
		}
		wait := min(RescanInterval, max(cfg.IdleExit-time.Since(idleSince), 10*time.Millisecond))
		woken = false
		select {
		case <-ctx.Done():
			os.Remove(pidPath)
			return ctx.Err()
		case <-cfg.Wake:
			woken = true
		case <-events:
		case <-tick.C:
		case <-time.After(wait):
		}
	}
}

// supervisor applies dir's VM files to f.
type supervisor struct {
	f       *Forwarder
	dir     string
	applied map[string]VMFile // what f serves, by id
}

// sync makes f serve exactly the VMs of the files, and returns how many
// files there are.
func (s *supervisor) sync() int {
	files, errs := readVMs(s.dir)
	for _, err := range errs {
		s.f.cfg.Log.Warn("dnsfwd: skipping a VM file", "err", err)
	}
	for id := range s.applied {
		if _, ok := files[id]; !ok {
			s.f.RemoveVM(id)
			delete(s.applied, id)
		}
	}
	for id, v := range files {
		if old, ok := s.applied[id]; ok && sameFile(old, v) {
			continue
		}
		vm, err := v.vm()
		if err == nil {
			err = s.f.SetVM(vm)
		}
		if err != nil {
			s.f.cfg.Log.Warn("dnsfwd: cannot serve vm", "vm", id, "err", err)
			continue
		}
		s.applied[id] = v
	}
	return len(files)
}

func sameFile(a, b VMFile) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// watch reports changes in dir through inotify; stop ends it.
func watch(dir string) (events <-chan struct{}, stop func(), err error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("dnsfwd: inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_MOVED_FROM|unix.IN_DELETE); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("dnsfwd: watch %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: reads go through the poller, Close ends them
	ch := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { f.Close() }, nil
}
