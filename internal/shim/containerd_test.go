package shim_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

func TestMain(m *testing.M) { vmtest.Main(m) }

const runtimeName = "io.containerd.smolvm.v2"

// daemon is a containerd of the test's own: private root, state, socket
// and config, with the shim freshly built on its PATH.
type daemon struct {
	t       *testing.T
	dir     string
	sock    string
	env     []string
	dataDir string
	smolvm  string // the smolvm CLI
	cmd     *exec.Cmd
}

// startContainerd starts Debian's containerd for the test, or skips; its
// CRI plugin is disabled.
func startContainerd(t *testing.T) *daemon {
	t.Helper()
	return startContainerdWith(t, nil)
}

// startContainerdWith starts Debian's containerd; cri, when not nil,
// returns the CRI plugin's configuration for the test's directory (the
// plugin is disabled otherwise).
func startContainerdWith(t *testing.T, cri func(dir string) string) *daemon {
	t.Helper()
	vmtest.Require(t)
	for _, b := range []string{"containerd", "ctr", "mkfs.ext4"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (make deps installs Debian's containerd and e2fsprogs)", b)
		}
	}
	binDir := vmtest.Setup(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/containerd-shim-smolvm-v2")
	build.Dir = moduleRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the shim: %v: %s", err, out)
	}
	d := &daemon{t: t, dir: dir, sock: filepath.Join(dir, "containerd.sock"), dataDir: filepath.Join(dir, "data"), smolvm: filepath.Join(binDir, "smolvm")}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.sock, d.sock+".ttrpc")
	if cri == nil {
		config = "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" + config
	} else {
		config += cri(dir)
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	d.env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "SMOLVM_DATA_DIR="+d.dataDir)
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("containerd", "--config", cfgPath, "--log-level", "debug")
	d.cmd.Env = d.env
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.teardown()
		d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- d.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("containerd log (warnings and errors):\n%s", grepLines(string(b), "level=warn", "level=error", "level=info msg=\"rootfs"))
			}
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := d.ctr(context.Background(), "", "version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not answer within 60s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	return d
}

// shims lists the pids of this daemon's shims.
func (d *daemon) shims() []int {
	var out []int
	for _, pid := range vmtest.ProcessesOf(d.sock) {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), "containerd-shim-smolvm-v2") {
			out = append(out, pid)
		}
	}
	return out
}

// teardown removes what a failed test may have left: containers, their
// shims (by pid), sockets and VMs.
func (d *daemon) teardown() {
	ctx := context.Background()
	if out, err := d.ctr(ctx, "", "container", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			d.ctr(ctx, "", "task", "kill", "-s", "SIGKILL", id)
			d.ctr(ctx, "", "task", "delete", "-f", id)
			d.ctr(ctx, "", "container", "rm", id)
		}
	}
	for _, pid := range d.shims() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	filepath.WalkDir(filepath.Join(d.dir, "state"), func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Name() == "address" {
			if b, err := os.ReadFile(p); err == nil {
				os.Remove(strings.TrimPrefix(strings.TrimSpace(string(b)), "unix://"))
			}
		}
		return nil
	})
	cleanup := exec.Command(d.smolvm, "cleanup", "--all")
	cleanup.Env = d.env
	cleanup.Run()
}

func grepLines(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	if len(out) > 60 {
		out = out[len(out)-60:]
	}
	return strings.Join(out, "\n")
}

// ctr runs ctr against the daemon with stdin and returns its combined
// output; a non-zero exit is an *exec.ExitError.
func (d *daemon) ctr(ctx context.Context, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", d.sock}, args...)...)
	cmd.Env = d.env
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (d *daemon) mustCtr(args ...string) string {
	d.t.Helper()
	out, err := d.ctr(context.Background(), "", args...)
	if err != nil {
		d.t.Fatalf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// tapName matches a SmolVM TAP device in `ip -o link` output.
var tapName = regexp.MustCompile(`: smol[0-9]+[:@]`)

// busyboxRootfs makes a root directory holding a static busybox.
func busyboxRootfs(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (busybox-static)")
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"sh", "cat", "echo", "uname", "sleep", "hostname", "ls", "id", "nc", "ip"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", c)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// guestKernel returns the kernel release of the minimal image's kernel.
func guestKernel(t *testing.T) string {
	t.Helper()
	img, err := image.Get(vmtest.CacheDir(), image.NameMinimal)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(img.Kernel), "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Inputs struct {
			Kernel struct{ Name string } `json:"kernel"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	rel := strings.TrimPrefix(m.Inputs.Kernel.Name, "linux-image-")
	if rel == "" {
		t.Fatal("the image manifest names no kernel")
	}
	return rel
}

// hostKernel returns the host's kernel release.
func hostKernel(t *testing.T) string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// leftovers lists what a container's VM could leave behind: VMM
// processes, VM directories and state rows, rootfs images, TAPs.
func (d *daemon) leftovers(t *testing.T) []string {
	// A shim exits just after the delete that ended its task: give what is
	// going away a moment before calling it left behind.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := d.leftoversNow()
		if len(out) == 0 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leftoversNow lists what of smolvm's is left now: processes (by the data
// dir on their command line or in their environment, containerd itself
// excepted), VM directories, rootfs images, TAPs and recorded VMs.
func (d *daemon) leftoversNow() []string {
	var out []string
	for _, pid := range vmtest.ProcessesOf(d.dataDir) {
		if d.cmd != nil && d.cmd.Process != nil && pid == d.cmd.Process.Pid {
			continue // containerd, started with SMOLVM_DATA_DIR in its environment
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, fmt.Sprintf("process %d (%s)", pid, strings.ReplaceAll(string(cmd), "\x00", " ")))
	}
	if es, err := os.ReadDir(filepath.Join(d.dataDir, "vms")); err == nil {
		for _, e := range es {
			out = append(out, "VM directory "+e.Name())
		}
	}
	filepath.WalkDir(filepath.Join(d.dir, "state"), func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Name() == "smolvm-rootfs.ext4" {
			out = append(out, p)
		}
		return nil
	})
	if links, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, l := range strings.Split(string(links), "\n") {
			if tapName.MatchString(l) {
				out = append(out, "link "+l)
			}
		}
	}
	ls := exec.Command(d.smolvm, "ls")
	ls.Env = d.env
	if b, err := ls.CombinedOutput(); err == nil && strings.Contains(string(b), "ctr-") {
		out = append(out, "smolvm ls: "+string(b))
	}
	return out
}

// TestContainerd runs containers under Debian's containerd with the shim:
// three VM boots shared by the subtests.
func TestContainerd(t *testing.T) {
	d := startContainerd(t)
	rootfs := busyboxRootfs(t)
	guest := guestKernel(t)
	if guest == hostKernel(t) {
		t.Logf("the guest kernel %s is also the host's: uname -r proves nothing here", guest)
	}

	t.Run("run", func(t *testing.T) {
		// uname -r is the guest's, stdin reaches the process, the exit code reaches ctr.
		// The memory limit sizes the VM (256 MiB) and the annotation its vCPUs.
		out, err := d.ctr(context.Background(), "hello from stdin\n", "run", "--rm", "--runtime", runtimeName,
			"--memory-limit", "268435456", "--annotation", "io.smolvm.vcpus=1", "--rootfs", rootfs, "t-run",
			"sh", "-c", "uname -r; read line; echo got:$line; echo to-stderr >&2; echo cpus:$(grep -c ^processor /proc/cpuinfo); head -1 /proc/meminfo; exit 7")
		if code := exitCode(err); code != 7 {
			t.Fatalf("ctr run: exit %d (%v), want 7; output:\n%s", code, err, out)
		}
		if !strings.Contains(out, guest) {
			t.Errorf("uname -r: want the guest kernel %s; output:\n%s", guest, out)
		}
		if !strings.Contains(out, "got:hello from stdin") {
			t.Errorf("stdin did not reach the process; output:\n%s", out)
		}
		if !strings.Contains(out, "to-stderr") {
			t.Errorf("stderr missing; output:\n%s", out)
		}
		if !strings.Contains(out, "cpus:1\n") {
			t.Errorf("io.smolvm.vcpus=1 did not give one vCPU; output:\n%s", out)
		}
		var memKB int
		if i := strings.Index(out, "MemTotal:"); i < 0 {
			t.Errorf("no MemTotal; output:\n%s", out)
		} else if fmt.Sscan(out[i+len("MemTotal:"):], &memKB); memKB <= 0 || memKB > 256<<10 {
			t.Errorf("MemTotal %d kB: want a VM of at most 256 MiB from the memory limit", memKB)
		}
		if l := d.leftovers(t); len(l) > 0 {
			t.Errorf("after ctr run --rm: left behind %q", l)
		}
	})

	t.Run("bad-annotation", func(t *testing.T) {
		// A refused create names what it refused and leaves nothing: a bad
		// value fails before anything is made, an unknown image after the
		// rootfs image was built (its undo removes it).
		for annotation, want := range map[string]string{"io.smolvm.vcpus=many": "io.smolvm.vcpus", "io.smolvm.image=no-such-image": "no-such-image"} {
			out, err := d.ctr(context.Background(), "", "run", "--rm", "--runtime", runtimeName,
				"--annotation", annotation, "--rootfs", rootfs, "t-bad", "true")
			if err == nil || !strings.Contains(out, want) {
				t.Errorf("ctr run --annotation %s: %v, output %q; want an error naming %s", annotation, err, out, want)
			}
			d.ctr(context.Background(), "", "container", "rm", "t-bad")
			if l := d.leftovers(t); len(l) > 0 {
				t.Errorf("after a refused create (%s): left behind %q", annotation, l)
			}
		}
	})

	t.Run("exec-kill-delete", func(t *testing.T) {
		d.mustCtr("run", "-d", "--runtime", runtimeName, "--rootfs", rootfs, "t-long", "sleep", "100000")
		out, err := d.ctr(context.Background(), "", "task", "exec", "--exec-id", "e1", "t-long", "sh", "-c", "echo exec-ok; exit 3")
		if code := exitCode(err); code != 3 || !strings.Contains(out, "exec-ok") {
			t.Errorf("ctr task exec: exit %d (%v), output %q; want 3 and exec-ok", code, err, out)
		}
		if out := d.mustCtr("task", "ps", "t-long"); len(strings.Fields(out)) < 3 {
			t.Errorf("ctr task ps: no process listed:\n%s", out)
		}
		// Stats come from the VM's cgroup: its memory limit is the VM's
		// RAM plus the VMM's allowance (not the guest's size alone).
		wantLimit := fmt.Sprintf(`memory.limit_in_bytes\s+%d\b`, int64(smolvm.DefaultMemoryMiB+smolvm.VMMMemoryOverheadMiB)<<20)
		if out := d.mustCtr("task", "metrics", "t-long"); !regexp.MustCompile(`memory.usage_in_bytes\s+[1-9]`).MatchString(out) ||
			!regexp.MustCompile(`cpuacct.usage\s+[1-9]`).MatchString(out) || !regexp.MustCompile(wantLimit).MatchString(out) {
			t.Errorf("ctr task metrics: want the VM cgroup's memory (limit %s) and CPU:\n%s", wantLimit, out)
		}
		d.mustCtr("task", "pause", "t-long")
		if out := d.mustCtr("task", "ls"); !strings.Contains(out, "PAUSED") {
			t.Errorf("after pause, task ls:\n%s", out)
		}
		d.mustCtr("task", "resume", "t-long")
		d.mustCtr("task", "kill", "-s", "SIGTERM", "t-long")
		deadline := time.Now().Add(2 * time.Minute)
		for !strings.Contains(d.mustCtr("task", "ls"), "STOPPED") {
			if time.Now().After(deadline) {
				t.Fatalf("SIGTERM did not stop the task:\n%s", d.mustCtr("task", "ls"))
			}
			time.Sleep(200 * time.Millisecond)
		}
		out = d.mustCtr("task", "delete", "t-long")
		d.mustCtr("container", "rm", "t-long")
		if l := d.leftovers(t); len(l) > 0 {
			t.Errorf("after task delete and container rm: left behind %q (delete said %q)", l, out)
		}
	})

	t.Run("shim-sigkill", func(t *testing.T) {
		// A shim killed with SIGKILL: containerd runs the shim's delete
		// command, which removes the VM; smolvm cleanup finds nothing more.
		d.mustCtr("run", "-d", "--runtime", runtimeName, "--rootfs", rootfs, "t-kill", "sleep", "100000")
		var shimPid int
		for _, pid := range d.shims() {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), "\x00t-kill\x00") {
				shimPid = pid
			}
		}
		if shimPid == 0 {
			t.Fatal("the shim of t-kill is not running")
		}
		if err := syscall.Kill(shimPid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for strings.Contains(d.mustCtr("task", "ls"), "t-kill") || len(d.leftovers(t)) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("after the shim's SIGKILL: task ls %q, left behind %q", d.mustCtr("task", "ls"), d.leftovers(t))
			}
			time.Sleep(200 * time.Millisecond)
		}
		d.mustCtr("container", "rm", "t-kill")
		cleanup := exec.Command(d.smolvm, "cleanup", "--dry-run")
		cleanup.Env = d.env
		out, err := cleanup.CombinedOutput()
		if err != nil {
			t.Fatalf("smolvm cleanup --dry-run: %v: %s", err, out)
		}
		if strings.Contains(string(out), "ctr-") {
			t.Errorf("smolvm cleanup would still remove: %s", out)
		}
	})

	t.Run("pod-netns", func(t *testing.T) {
		// A container that joins a network namespace (a pod's, made here
		// as a CNI plugin would: eth0 of a veth whose peer is in the
		// test's namespace) gets a VM that takes over the pod's eth0: the
		// container's eth0 has the pod's IP and MAC, the peer reaches it
		// there, its connections out come from it, and a second container
		// in the same namespace is refused.
		name := fmt.Sprintf("shimtest-pod-%d", os.Getpid())
		ip := func(args ...string) string {
			t.Helper()
			out, err := exec.Command("ip", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		ip("netns", "add", name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
		ip("link", "add", "podveth0", "type", "veth", "peer", "name", "eth0", "netns", name)
		t.Cleanup(func() { exec.Command("ip", "link", "del", "podveth0").Run() })
		ip("addr", "add", "203.0.113.1/24", "dev", "podveth0")
		ip("link", "set", "podveth0", "up")
		ip("-n", name, "addr", "add", "203.0.113.2/24", "dev", "eth0")
		ip("-n", name, "link", "set", "eth0", "up")
		ip("-n", name, "link", "set", "lo", "up")
		ip("-n", name, "route", "add", "default", "via", "203.0.113.1")
		podMAC := regexp.MustCompile(`link/ether ([0-9a-f:]{17})`).FindStringSubmatch(ip("-n", name, "-o", "link", "show", "eth0"))
		if podMAC == nil {
			t.Fatal("no MAC on the pod's eth0")
		}

		ln, err := net.Listen("tcp", "203.0.113.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		from := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			from <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			fmt.Fprintln(c, "hello from outside the pod")
			c.Close()
		}()
		port := ln.Addr().(*net.TCPAddr).Port
		withNs := "network:/run/netns/" + name
		d.mustCtr("run", "-d", "--runtime", runtimeName, "--with-ns", withNs, "--rootfs", rootfs, "t-pod",
			"sh", "-c", "echo pod-ip-ok | nc -l -p 8080; sleep 100000")
		out, err := d.ctr(context.Background(), "", "task", "exec", "--exec-id", "net", "t-pod",
			"sh", "-c", fmt.Sprintf("ip -4 -o addr show eth0; cat /sys/class/net/eth0/address; nc 203.0.113.1 %d </dev/null", port))
		if err != nil || !strings.Contains(out, "inet 203.0.113.2/24") || !strings.Contains(out, podMAC[1]) || !strings.Contains(out, "hello from outside the pod") {
			t.Errorf("the container's network: %v; want eth0 with the pod's 203.0.113.2/24 and MAC %s, and the outside reached; output:\n%s", err, podMAC[1], out)
		}
		select {
		case src := <-from:
			if src != "203.0.113.2" {
				t.Errorf("the VM's connection came from %s, want the pod's address 203.0.113.2", src)
			}
		case <-time.After(10 * time.Second):
			t.Error("no connection reached the outside")
		}
		// The pod's IP reaches the container.
		var got string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && got == ""; time.Sleep(300 * time.Millisecond) {
			c, err := net.DialTimeout("tcp", "203.0.113.2:8080", 5*time.Second)
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(io.LimitReader(c, 64))
			c.Close()
			got = strings.TrimSpace(string(b))
		}
		if got != "pod-ip-ok" {
			t.Errorf("dial 203.0.113.2:8080 (the pod's IP): read %q, want pod-ip-ok", got)
		}
		// One VM per pod interface: a second container is refused.
		out, err = d.ctr(context.Background(), "", "run", "--rm", "--runtime", runtimeName, "--with-ns", withNs, "--rootfs", rootfs, "t-pod2", "true")
		if err == nil || !strings.Contains(out, "already attached") {
			t.Errorf("a second container in the pod namespace: %v, output %q; want an already-attached error", err, out)
		}
		d.ctr(context.Background(), "", "container", "rm", "t-pod2")

		d.mustCtr("task", "kill", "-s", "SIGKILL", "t-pod")
		for deadline := time.Now().Add(time.Minute); strings.Contains(d.mustCtr("task", "ls"), "RUNNING") && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
		}
		d.mustCtr("task", "delete", "t-pod")
		d.mustCtr("container", "rm", "t-pod")
		podClean := func(when string) {
			t.Helper()
			if l := d.leftovers(t); len(l) > 0 { // waits for what is going away
				t.Errorf("%s: left behind %q", when, l)
			}
			if links := ip("-n", name, "-o", "link"); tapName.MatchString(links) {
				t.Errorf("%s: a TAP is left in the pod namespace:\n%s", when, links)
			}
			if q, _ := exec.Command("tc", "-n", name, "qdisc", "show", "dev", "eth0").CombinedOutput(); strings.Contains(string(q), "ingress") {
				t.Errorf("%s: the pod's eth0 keeps an ingress qdisc:\n%s", when, q)
			}
		}
		podClean("after task delete and container rm")

		// A killed shim: its delete command (run by containerd in its own
		// namespace) detaches the VM inside the pod's namespace.
		d.mustCtr("run", "-d", "--runtime", runtimeName, "--with-ns", withNs, "--rootfs", rootfs, "t-pod3", "sleep", "100000")
		var shimPid int
		for _, pid := range d.shims() {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), "\x00t-pod3\x00") {
				shimPid = pid
			}
		}
		if shimPid == 0 {
			t.Fatal("the shim of t-pod3 is not running")
		}
		if q, _ := exec.Command("tc", "-n", name, "qdisc", "show", "dev", "eth0").CombinedOutput(); !strings.Contains(string(q), "ingress") {
			t.Errorf("t-pod3 is not attached to the pod's eth0:\n%s", q)
		}
		if err := syscall.Kill(shimPid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(2 * time.Minute); strings.Contains(d.mustCtr("task", "ls"), "t-pod3") && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
		}
		d.mustCtr("container", "rm", "t-pod3")
		podClean("after the shim's SIGKILL")
	})

	t.Run("image-tty", func(t *testing.T) {
		if runtime.GOARCH != "amd64" {
			t.Skip("the test image is made for amd64")
		}
		tarball := ociImage(t, rootfs, map[string][]string{"1": {"sh"}})
		d.mustCtr("image", "import", "--base-name", "localhost/smolvm-test", tarball)
		ref := "localhost/smolvm-test:1"
		// A TTY container from the image (through the snapshotter's mounts)
		// answers: script(1) gives ctr a terminal.
		if _, err := exec.LookPath("script"); err != nil {
			t.Skip("script (bsdutils) not installed")
		}
		cmdline := fmt.Sprintf("ctr -a %s run -t --rm --runtime %s %s t-tty sh", d.sock, runtimeName, ref)
		cmd := exec.Command("script", "-qefc", cmdline, "/dev/null")
		cmd.Env = d.env
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// Type once the shell's prompt shows, then leave it.
		deadline := time.Now().Add(3 * time.Minute)
		for !strings.Contains(out.String(), "#") {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				<-done
				t.Fatalf("no prompt from the TTY container; output:\n%s", out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		fmt.Fprint(in, "cat /etc/smolvm-test; echo tty-$((6*7)); exit 5\r")
		var werr error
		select {
		case werr = <-done:
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			werr = <-done
		}
		in.Close()
		got := out.String()
		if !strings.Contains(got, "tty-42") || !strings.Contains(got, "from the image layer") {
			t.Errorf("TTY container did not answer; output:\n%s", got)
		}
		if code := exitCode(werr); code != 5 {
			t.Errorf("ctr run -t: exit %d (%v), want 5; output:\n%s", code, werr, got)
		}
		if l := d.leftovers(t); len(l) > 0 {
			t.Errorf("after ctr run -t --rm: left behind %q", l)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ociImage writes an OCI image layout tarball and returns its path: one
// image per ref (named by the ref, running its command), all of one layer:
// rootfs plus /etc/smolvm-test.
func ociImage(t *testing.T, rootfs string, refs map[string][]string) string {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	err := filepath.WalkDir(rootfs, func(p string, e os.DirEntry, err error) error {
		if err != nil || p == rootfs {
			return err
		}
		rel, _ := filepath.Rel(rootfs, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&os.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name, h.Uid, h.Gid, h.Uname, h.Gname = rel, 0, 0, "", ""
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("from the image layer\n")
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "etc/smolvm-test", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(msg))})
	tw.Write(msg)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}

	blobs := map[string][]byte{}
	add := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d, len(b)
	}
	layerDigest, layerSize := add(layer.Bytes())
	var manifests []any
	for ref, cmd := range refs {
		config, _ := json.Marshal(map[string]any{
			"architecture": "amd64", "os": "linux",
			"config": map[string]any{"Cmd": cmd, "Env": []string{"PATH=/bin"}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		})
		configDigest, configSize := add(config)
		manifest, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
			"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
			"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
		})
		manifestDigest, manifestSize := add(manifest)
		manifests = append(manifests, map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"org.opencontainers.image.ref.name": ref},
		})
	}
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
	})

	path := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	out := tar.NewWriter(f)
	put := func(name string, b []byte) {
		if err := out.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
		out.Write(b)
	}
	put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	put("index.json", index)
	for d, b := range blobs {
		put("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), b)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}
