package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// envNetns marks the re-executed benchmark and names its namespace.
const envNetns = "SMOLVM_BENCH_NETNS"

// runOutside prepares everything that needs the host's network (the agent
// binary, the images), then runs the benchmark in a fresh network namespace
// and removes the namespace, every process left in it and the temporary
// directories, whatever happened.
func runOutside(ctx context.Context, cfg config) (retErr error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: VMs get TAP devices and nftables rules in a private network namespace")
	}
	for _, tool := range []string{"ip", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: %w", tool, err)
		}
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	env, rm, err := prepare(ctx, &cfg)
	cleanups = append(cleanups, rm...)
	if err != nil {
		return err
	}
	if cfg.dataDir == "" {
		d, err := os.MkdirTemp("", "smolvm-bench-")
		if err != nil {
			return err
		}
		cfg.dataDir = d
		cleanups = append(cleanups, func() { os.RemoveAll(d) })
	}

	name := fmt.Sprintf("smolvm-bench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	cleanups = append(cleanups, func() {
		if err := removeNetns(name); err != nil && retErr == nil {
			retErr = err
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s link set lo up: %v: %s", name, err, out)
	}
	return runChild(ctx, cfg, name, env)
}

// runChild re-executes this binary inside the namespace and waits for it. On
// a signal it passes SIGINT on and, if the child does not finish its own
// cleanup in time, kills it.
func runChild(ctx context.Context, cfg config, ns string, env []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := append([]string{"netns", "exec", ns, exe}, os.Args[1:]...)
	args = append(args, "--data-dir", cfg.dataDir, "--image-dir", cfg.imageDir)
	if cfg.jsonPath != "" {
		args = append(args, "--json", cfg.jsonPath)
	}
	if cfg.plotPath != "" {
		args = append(args, "--plot", cfg.plotPath)
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(append(os.Environ(), env...), envNetns+"="+ns)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return childErr(err)
	case <-ctx.Done():
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if err := childErr(err); err != nil {
			return err
		}
		return ctx.Err()
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-done
		return errors.New("interrupted; the benchmark did not clean up within 90s and was killed")
	}
}

func childErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("benchmark failed (exit status %d)", ee.ExitCode())
	}
	return err
}

// removeNetns kills what still runs in the namespace (only processes this
// benchmark started: the namespace is its own), then deletes it.
func removeNetns(name string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := netnsPids(name)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in namespace %s did not exit", pids, name)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %v: %s", name, err, out)
	}
	return nil
}

// netnsPids lists the processes inside the namespace.
func netnsPids(name string) []int {
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// inNetns reports whether this process runs in the named namespace (the
// one `ip netns add` pinned at /run/netns/NAME).
func inNetns(name string) bool {
	var self, ns syscall.Stat_t
	if syscall.Stat("/proc/self/ns/net", &self) != nil || syscall.Stat("/run/netns/"+name, &ns) != nil {
		return false
	}
	return self.Dev == ns.Dev && self.Ino == ns.Ino
}
