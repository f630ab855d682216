package shim_test

import (
	"context"
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
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// criNetwork is the CNI network of the test's pods (inside the test's
// network namespace).
const (
	criNetwork = "smolvm-cri-test"
	criSubnet  = "10.88.7.0/24"
	cniBinDir  = "/usr/lib/cni" // Debian's containernetworking-plugins
)

// criConfig returns the CRI plugin's configuration: the runtime handler
// smolvm, the test's own pause image as the sandbox image, and a CNI
// bridge network whose configuration and IP allocations live in dir.
func criConfig(t *testing.T) func(dir string) string {
	return func(dir string) string {
		confDir := filepath.Join(dir, "cni")
		if err := os.MkdirAll(confDir, 0o755); err != nil {
			t.Fatal(err)
		}
		conflist := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": %q,
  "plugins": [{
    "type": "bridge", "bridge": "cnitest0", "isGateway": true, "ipMasq": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}
  }]
}`, criNetwork, criSubnet, filepath.Join(dir, "cni-ipam"))
		if err := os.WriteFile(filepath.Join(confDir, "10-smolvm-test.conflist"), []byte(conflist), 0o644); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/smolvm-test:pause"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.smolvm]
    runtime_type = "io.containerd.smolvm.v2"
    pod_annotations = ["io.smolvm.*"]
    container_annotations = ["io.smolvm.*"]
`, cniBinDir, confDir)
	}
}

// TestCRI drives containerd's CRI plugin as the kubelet (or crictl's
// runp/create/start/exec) would, through the CRI runtime v1 gRPC API: a
// pod on a CNI bridge network with the runtime handler smolvm, its sandbox
// container running without a VM and one app container in a microVM (one
// boot), ExecSync in it, then stop and remove everything and check nothing
// is left.
func TestCRI(t *testing.T) {
	vmtest.Require(t)
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			t.Skipf("CNI plugin %s not installed (make deps installs Debian's containernetworking-plugins)", p)
		}
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the test images are made for amd64")
	}
	// containerd's CNI library keeps results in /var/lib/cni/results (not
	// configurable in containerd 1.6); the test removes the empty
	// directories it made.
	if _, err := os.Stat("/var/lib/cni"); errors.Is(err, os.ErrNotExist) {
		t.Cleanup(func() {
			os.Remove("/var/lib/cni/results")
			os.Remove("/var/lib/cni")
		})
	}
	d := startContainerdWith(t, criConfig(t))
	rootfs := busyboxRootfs(t)
	guest := guestKernel(t)
	if guest == hostKernel(t) {
		t.Logf("the guest kernel %s is also the host's: uname -r proves nothing here", guest)
	}
	tarball := ociImage(t, rootfs, map[string][]string{
		"pause": {"sleep", "2147483647"},
		"box":   {"sh"},
	})
	d.mustCtr("-n", "k8s.io", "image", "import", "--base-name", "localhost/smolvm-test", tarball)

	conn, err := grpc.Dial("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	images := runtimeapi.NewImageServiceClient(conn)
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 5*time.Minute)
	}
	// Whatever the test leaves is stopped and removed through the CRI
	// plugin before containerd stops (cleanups run last-in first-out).
	t.Cleanup(func() {
		ctx, cancel := call()
		defer cancel()
		pods, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			return
		}
		for _, p := range pods.Items {
			rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id})
			rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id})
		}
	})

	// The plugin is ready (runtime and CNI network) and sees both images.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := call()
		st, err := rt.Status(ctx, &runtimeapi.StatusRequest{})
		ready := err == nil
		if ready {
			for _, c := range st.Status.Conditions {
				ready = ready && c.Status
			}
		}
		for _, ref := range []string{"localhost/smolvm-test:pause", "localhost/smolvm-test:box"} {
			is, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			ready = ready && err == nil && is.Image != nil
		}
		cancel()
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CRI plugin is not ready: status %v, %v", st, err)
		}
		time.Sleep(250 * time.Millisecond)
	}

	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "smolpod", Namespace: "default", Uid: "smolpod-uid"},
		Hostname:     "smolpod",
		LogDirectory: logDir,
		Annotations:  map[string]string{"io.smolvm.vcpus": "1"},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "box"},
		Image:    &runtimeapi.ImageSpec{Image: "localhost/smolvm-test:box"},
		Command:  []string{"sh", "-c", "echo ready; echo cri-pod-ok | nc -l -p 8080; sleep 600"},
		LogPath:  "box.log",
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 256 << 20},
		},
	}

	// runp
	began := time.Now()
	ctx, cancel := call()
	defer cancel()
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: "smolvm"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := pod.PodSandboxId
	t.Logf("RunPodSandbox took %v", time.Since(began).Round(time.Millisecond))
	// The sandbox container runs without a VM.
	if vms := d.vmDirs(); len(vms) != 0 {
		t.Errorf("after RunPodSandbox: VMs %v, want none (the sandbox container runs without one)", vms)
	}
	ps, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	if ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("pod state %v, want ready", ps.Status.State)
	}
	podIP := ""
	if ps.Status.Network != nil {
		podIP = ps.Status.Network.Ip
	}
	t.Logf("pod IP (PodSandboxStatus): %q", podIP)
	if podIP == "" {
		t.Errorf("the pod has no IP from CNI")
	}
	// The sandbox task runs, held by its shim (its pid is the shim's).
	podNetns := d.podNetns(podID)
	t.Logf("pod network namespace: %s", podNetns)
	if out := d.mustCtr("-n", "k8s.io", "task", "ls"); !regexp.MustCompile(podID + `\s+\d+\s+RUNNING`).MatchString(out) {
		t.Errorf("the sandbox task is not running:\n%s", out)
	}

	// create, start
	cc, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: ctrCfg, SandboxConfig: podCfg})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	cid := cc.ContainerId
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cid}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	logPath := filepath.Join(logDir, "box.log")
	deadline = time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), " stdout F ready") {
			t.Logf("RunPodSandbox to the container's first output: %v", time.Since(began).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no \"ready\" in the container's log %s: %q", logPath, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cs, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cid})
	if err != nil || cs.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("ContainerStatus: %v, %v; want running", cs, err)
	}

	// One VM, one QEMU, two shims for the pod and its container.
	vms := d.vmDirs()
	if len(vms) != 1 {
		t.Errorf("VMs for a pod with one container: %v, want exactly one", vms)
	}
	vmms := d.vmms()
	if len(vmms) != 1 {
		t.Errorf("VMM processes for a pod with one container: %v, want exactly one", vmms)
	}
	// The VMM's cgroups, to check they go with the VM.
	var cgroups []string
	for _, pid := range vmms {
		cgroups = append(cgroups, vmmCgroups(pid)...)
	}
	t.Logf("VMM cgroups: %v", cgroups)
	if len(cgroups) == 0 {
		t.Errorf("no cgroup of the VMM (%v) found", vmms)
	}
	if s := d.shims(); len(s) != 2 {
		t.Errorf("shims: %v, want two (the sandbox's and the container's)", s)
	}

	// exec: the container runs in the VM: the guest's kernel.
	ex, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"uname", "-r"}, Timeout: 120})
	if err != nil {
		t.Fatalf("ExecSync uname -r: %v", err)
	}
	if got := strings.TrimSpace(string(ex.Stdout)); ex.ExitCode != 0 || got != guest {
		t.Errorf("ExecSync uname -r: %q (exit %d, stderr %q), want the guest kernel %s", got, ex.ExitCode, ex.Stderr, guest)
	}
	ex, err = rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "echo cri-exec; echo cri-err >&2; exit 3"}, Timeout: 120})
	if err != nil || ex.ExitCode != 3 || string(ex.Stdout) != "cri-exec\n" || string(ex.Stderr) != "cri-err\n" {
		t.Errorf("ExecSync exit 3: %+v, %v; want exit 3, cri-exec on stdout and cri-err on stderr", ex, err)
	}
	// The pod's io.smolvm.vcpus annotation and the container's memory
	// limit size the VM.
	ex, err = rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "echo cpus:$(grep -c ^processor /proc/cpuinfo); head -1 /proc/meminfo"}, Timeout: 120})
	if err != nil {
		t.Errorf("ExecSync cpuinfo: %v", err)
	} else {
		out := string(ex.Stdout)
		if !strings.Contains(out, "cpus:1\n") {
			t.Errorf("the pod's io.smolvm.vcpus=1 did not give one vCPU: %q", out)
		}
		var memKB int
		if i := strings.Index(out, "MemTotal:"); i < 0 {
			t.Errorf("no MemTotal: %q", out)
		} else if fmt.Sscan(out[i+len("MemTotal:"):], &memKB); memKB <= 0 || memKB > 256<<10 {
			t.Errorf("MemTotal %d kB: want a VM of at most 256 MiB from the memory limit", memKB)
		}
	}
	// Stats: what the VM costs the host (its VMM process).
	if st, err := rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: cid}); err != nil {
		t.Errorf("ContainerStats: %v", err)
	} else if st.Stats.Memory == nil || st.Stats.Memory.WorkingSetBytes == nil || st.Stats.Memory.WorkingSetBytes.Value == 0 {
		t.Errorf("ContainerStats: no memory in %v", st.Stats)
	} else {
		t.Logf("ContainerStats: working set %d bytes, CPU %v", st.Stats.Memory.WorkingSetBytes.Value, st.Stats.Cpu)
	}
	// The pod's IP is the VM's: the guest's eth0 has it (joined to the
	// pod's interface), and the node (the test's namespace, which holds
	// the CNI bridge) reaches the guest's listener at it.
	if ex, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: []string{"ip", "-4", "-o", "addr", "show", "eth0"}, Timeout: 120}); err != nil {
		t.Errorf("ExecSync ip addr: %v", err)
	} else if podIP == "" || !strings.Contains(string(ex.Stdout), "inet "+podIP+"/") {
		t.Errorf("the guest's eth0 does not have the pod's IP %q:\n%s", podIP, ex.Stdout)
	} else {
		t.Logf("guest eth0 has the pod's IP %s: %s", podIP, ex.Stdout)
	}
	if podIP != "" {
		var got string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && got == ""; time.Sleep(300 * time.Millisecond) {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(podIP, "8080"), 5*time.Second)
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(io.LimitReader(c, 64))
			c.Close()
			got = strings.TrimSpace(string(b))
		}
		if got != "cri-pod-ok" {
			t.Errorf("dial %s:8080 (the pod's IP) from the node: read %q, want cri-pod-ok", podIP, got)
		}
	}

	// stop, rm, stopp, rmp
	if _, err := rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: 10}); err != nil {
		t.Errorf("StopContainer: %v", err)
	}
	if cs, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cid}); err != nil || cs.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("ContainerStatus after StopContainer: %v, %v; want exited", cs, err)
	} else {
		t.Logf("container exit code after StopContainer: %d", cs.Status.ExitCode)
	}
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cid}); err != nil {
		t.Errorf("RemoveContainer: %v", err)
	}
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Errorf("StopPodSandbox: %v", err)
	}
	if ps, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID}); err != nil || ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("PodSandboxStatus after StopPodSandbox: %v, %v; want not ready", ps, err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Errorf("RemovePodSandbox: %v", err)
	}

	// Nothing is left: no shim, QEMU, VM directory, disk image, TAP,
	// cgroup, pod network namespace or IP allocation.
	deadline = time.Now().Add(time.Minute)
	for {
		left := append(d.leftovers(t), d.criLeftovers()...)
		for _, cg := range cgroups {
			if _, err := os.Stat(cg); err == nil {
				left = append(left, "cgroup "+cg)
			}
		}
		if podNetns != "" {
			if _, err := os.Stat(podNetns); err == nil {
				left = append(left, "pod network namespace "+podNetns)
			}
		}
		if s := d.shims(); len(s) > 0 {
			left = append(left, fmt.Sprintf("shims %v", s))
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after RemoveContainer and RemovePodSandbox: left behind %q", left)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if pods, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 0 {
		t.Errorf("ListPodSandbox after RemovePodSandbox: %v, %v; want none", pods, err)
	}
}

// podNetns returns the network namespace the CRI plugin made for the pod,
// from its sandbox container's spec ("" if it names none).
func (d *daemon) podNetns(podID string) string {
	d.t.Helper()
	var info struct {
		Spec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		}
	}
	out := d.mustCtr("-n", "k8s.io", "containers", "info", podID)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		d.t.Fatalf("ctr containers info %s: %v: %s", podID, err, out)
	}
	for _, ns := range info.Spec.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path
		}
	}
	d.t.Errorf("the pod's sandbox container names no network namespace:\n%s", out)
	return ""
}

// vmDirs lists the VMs in the daemon's SmolVM data directory.
func (d *daemon) vmDirs() []string {
	var out []string
	es, _ := os.ReadDir(filepath.Join(d.dataDir, "vms"))
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// vmms lists the VMM processes (QEMU, Firecracker) of the daemon's VMs.
func (d *daemon) vmms() []int {
	var out []int
	for _, pid := range vmtest.ProcessesOf(d.dataDir) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		argv0 := filepath.Base(strings.SplitN(string(b), "\x00", 2)[0])
		if strings.HasPrefix(argv0, "qemu") || strings.HasPrefix(argv0, "firecracker") {
			out = append(out, pid)
		}
	}
	return out
}

// vmmCgroups returns the directories of SmolVM's cgroups (smolvm/<vm>)
// that hold process pid, in every hierarchy.
func vmmCgroups(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 || !strings.Contains(f[2], "/smolvm/") {
			continue
		}
		m, _ := filepath.Glob("/sys/fs/cgroup/*" + f[2])
		if d := "/sys/fs/cgroup" + f[2]; f[1] == "" {
			m = append(m, d)
		}
		for _, p := range m {
			if fi, err := os.Stat(p); err == nil && fi.IsDir() && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// criLeftovers lists what the CRI pod could leave besides the VMs: pinned
// pod network namespaces, CNI results and IP allocations, veths.
func (d *daemon) criLeftovers() []string {
	var out []string
	filepath.WalkDir(filepath.Join(d.dir, "state"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && filepath.Base(filepath.Dir(p)) == "netns" {
			out = append(out, "network namespace "+p)
		}
		return nil
	})
	if m, _ := filepath.Glob("/var/lib/cni/results/" + criNetwork + "-*"); len(m) > 0 {
		out = append(out, fmt.Sprintf("CNI results %v", m))
	}
	ipam, _ := os.ReadDir(filepath.Join(d.dir, "cni-ipam", criNetwork))
	for _, e := range ipam {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			out = append(out, "CNI IP allocation "+n)
		}
	}
	if out2, err := exec.Command("ip", "-o", "link", "show", "master", "cnitest0").Output(); err == nil && len(strings.TrimSpace(string(out2))) > 0 {
		out = append(out, "veth on the CNI bridge: "+strings.TrimSpace(string(out2)))
	}
	return out
}
