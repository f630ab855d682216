package smolvm

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Limits and defaults of VMConfig.
const (
	DefaultVCPUs     = 2
	MinVCPUs         = 1
	MaxVCPUs         = 32
	DefaultMemoryMiB = 512
	MinMemoryMiB     = 128
	MaxMemoryMiB     = 16384
	// SSHPortAuto as VMConfig.SSHHostPort asks Create to pick a free host port.
	SSHPortAuto = -1
	// MaxDiskSizeMiB bounds disk_size_mib (1 TiB).
	MaxDiskSizeMiB = 1 << 20
)

// DiskMode says whether a VM writes to its own copy of the image or to the image itself.
type DiskMode string

// Disk modes.
const (
	// DiskIsolated gives each VM its own writable copy of the root disk (the default).
	DiskIsolated DiskMode = "isolated"
	// DiskShared boots the image's disk itself; writes are shared by every VM using it.
	DiskShared DiskMode = "shared"
)

// BackendKind names a VMM.
type BackendKind string

// Backends.
const (
	// BackendAuto picks Firecracker where it can run, QEMU otherwise (the default).
	BackendAuto BackendKind = "auto"
	// BackendQEMU is qemu-system-x86_64.
	BackendQEMU BackendKind = "qemu"
	// BackendFirecracker is Firecracker.
	BackendFirecracker BackendKind = "firecracker"
)

// VMConfig describes a VM to create. The zero value plus an image gives a VM
// with the defaults: a generated id, 2 vCPUs, 512 MiB, an isolated disk and
// automatic backend choice.
type VMConfig struct {
	// VMID names the VM; empty means "vm-" plus 8 random hex characters.
	VMID string `json:"vm_id"`
	// VCPUCount is the number of virtual CPUs, 1-32; 0 means 2.
	VCPUCount int `json:"vcpu_count"`
	// MemSizeMiB is the guest memory in MiB, 128-16384; 0 means 512.
	MemSizeMiB int `json:"mem_size_mib"`
	// Image names a cached image ("default", "minimal") that supplies the
	// kernel, initrd and root disk not given explicitly.
	Image string `json:"image,omitempty"`
	// KernelPath is the guest kernel (bzImage for QEMU, ELF vmlinux for Firecracker).
	KernelPath string `json:"kernel_path,omitempty"`
	// InitrdPath is the initramfs holding the agent as /init.
	InitrdPath string `json:"initrd_path,omitempty"`
	// RootfsPath is the ext4 root disk image.
	RootfsPath string `json:"rootfs_path,omitempty"`
	// BootArgs are extra kernel command-line words. They come after the
	// backend's own, so "loglevel=7" undoes the "quiet" every VM boots with.
	BootArgs string `json:"boot_args,omitempty"`
	// DiskMode is isolated (default) or shared.
	DiskMode DiskMode `json:"disk_mode"`
	// DiskSizeMiB grows the VM's disk copy to this size; 0 keeps the image's size.
	DiskSizeMiB int `json:"disk_size_mib,omitempty"`
	// Backend is auto (default), qemu or firecracker.
	Backend BackendKind `json:"backend"`
	// EnvVars are set in the guest for every command and login.
	EnvVars map[string]string `json:"env_vars,omitempty"`
	// DNSServers are the guest's resolvers (IPv4); empty means its gateway.
	DNSServers []string `json:"dns_servers,omitempty"`
	// SSHHostPort forwards this host port to the guest's port 22; 0 means
	// none and SSHPortAuto picks a free port from 2200 upward at creation.
	SSHHostPort int `json:"ssh_host_port,omitempty"`
	// Accel is the acceleration: auto (default: KVM where it can run a
	// standard guest, else TCG), kvm or tcg.
	Accel Accel `json:"accel,omitempty"`
	// NoNetwork gives the VM no NIC, address or port forwards; the agent
	// still works (over virtio-serial or vsock).
	NoNetwork bool `json:"no_network,omitempty"`

	// Host folders (agent area, issue 15).

	// Mounts share host directories with the guest (QEMU only).
	Mounts []Mount `json:"mounts,omitempty"`
	// Snapshots (snapshot.go).

	// FromSnapshot makes Create a VM that resumes where the named snapshot
	// was taken, with the snapshot's configuration (memory and vCPUs must
	// match if given), its own disk copy and its own network identity.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Resource limits (issue 13, security; see confine.go).

	// CPUQuota caps the VM's CPU time in CPUs, e.g. 0.5 for half of one;
	// 0 means as many CPUs as it has vCPUs. At most VCPUCount.
	CPUQuota float64 `json:"cpu_quota,omitempty"`
	// DiskBPS throttles the VM's disks to this many bytes per second,
	// reads and writes together; 0 means no limit.
	DiskBPS int64 `json:"disk_bps,omitempty"`
	// DiskIOPS throttles the VM's disks to this many operations per
	// second; 0 means no limit.
	DiskIOPS int64 `json:"disk_iops,omitempty"`
	// Network policy (egress.go): what the guest may reach, and the DNS
	// forwarder on its gateway. See EgressPolicy for the order of rules.

	// Internet reports whether public addresses are reachable by default;
	// nil means true.
	Internet *bool `json:"internet,omitempty"`
	// AllowOut lists IPv4 addresses, CIDRs or domains (exact, or "*.x.y")
	// the guest may reach even with Internet off or in a private range.
	AllowOut []string `json:"allow_out,omitempty"`
	// DenyOut lists destinations the guest never reaches; it wins.
	DenyOut []string `json:"deny_out,omitempty"`
	// EgressRate caps outbound traffic, e.g. "10mbit" or "2MB/s"; empty: none.
	EgressRate string `json:"egress_rate,omitempty"`
	// DNSUpstream are the resolvers (IPv4[:port]) the DNS forwarder asks
	// for this VM; empty means the host's /etc/resolv.conf.
	DNSUpstream []string `json:"dns_upstream,omitempty"`
	// Bounds (issue 13).

	// ConsoleLogMaxBytes caps the VM's console log on disk (the newest
	// output is kept); 0 means HostOptions.ConsoleLogMaxBytes, else
	// DefaultConsoleLogMaxBytes (8 MiB). At least 64 KiB, at most 1 GiB.
	ConsoleLogMaxBytes int64 `json:"console_log_max_bytes,omitempty"`
	// Attached networking (attach.go; pod networking of the containerd shim).

	// AttachInterface names an interface of the calling process's network
	// namespace (a pod's eth0) that the VM's NIC takes over: the VM's TAP
	// is made in this namespace and joined to the interface with tc
	// redirects, and the guest gets the interface's MAC, IPv4 address and
	// prefix, MTU and the default gateway, so the interface's IP is the
	// guest's. The interface must have exactly one IPv4 address and carry
	// the default route. No NAT, forwards, SSH port, egress policy or DNS
	// forwarder apply (those fields are refused); the resolvers are
	// DNSServers (default: the gateway). One VM per interface. Start, Stop
	// and Delete must run in that namespace.
	AttachInterface string `json:"attach_interface,omitempty"`
	// Warm templates (warm.go).

	// Cold makes the VM boot its image even where a warm template of it
	// could be restored (no effect with FromSnapshot).
	Cold bool `json:"cold,omitempty"`
}

// Accel is how guest code executes.
type Accel string

// Accelerations.
const (
	// AccelAuto uses KVM where it can run a standard guest, TCG otherwise.
	AccelAuto Accel = "auto"
	// AccelKVM runs guest code on the CPU through /dev/kvm.
	AccelKVM Accel = "kvm"
	// AccelTCG emulates the CPU in software (QEMU only).
	AccelTCG Accel = "tcg"
)

var (
	vmIDRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$`)
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// ValidateVMID reports whether id is a valid VM id: 1-64 characters of
// [a-z0-9_-], starting and ending with a letter or digit.
func ValidateVMID(id string) error {
	if !vmIDRE.MatchString(id) {
		return configErr("vm_id", id, "must be 1-64 characters of a-z, 0-9, '_' and '-', starting and ending with a letter or digit")
	}
	return nil
}

// NewVMID returns a fresh id of the form "vm-" + 8 hex characters.
func NewVMID() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return "vm-" + hex.EncodeToString(b[:])
}

// WithDefaults returns a copy of c with every unset field given its default
// (including a generated VMID). The EnvVars map is copied.
func (c VMConfig) WithDefaults() VMConfig {
	if c.VMID == "" {
		c.VMID = NewVMID()
	}
	if c.VCPUCount == 0 {
		c.VCPUCount = DefaultVCPUs
	}
	if c.MemSizeMiB == 0 {
		c.MemSizeMiB = DefaultMemoryMiB
	}
	if c.DiskMode == "" {
		c.DiskMode = DiskIsolated
	}
	if c.Backend == "" {
		c.Backend = BackendAuto
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	c.EnvVars = maps.Clone(c.EnvVars)
	c.DNSServers = slices.Clone(c.DNSServers)
	c.Mounts = slices.Clone(c.Mounts)
	c.AllowOut, c.DenyOut, c.DNSUpstream = slices.Clone(c.AllowOut), slices.Clone(c.DenyOut), slices.Clone(c.DNSUpstream)
	return c
}

// Validate checks every field of c (after defaults) and returns the first
// rule broken as a *ConfigError naming the field.
func (c VMConfig) Validate() error {
	c = c.WithDefaults()
	if err := ValidateVMID(c.VMID); err != nil {
		return err
	}
	if c.VCPUCount < MinVCPUs || c.VCPUCount > MaxVCPUs {
		return configErr("vcpu_count", fmt.Sprint(c.VCPUCount), fmt.Sprintf("must be between %d and %d", MinVCPUs, MaxVCPUs))
	}
	if c.MemSizeMiB < MinMemoryMiB || c.MemSizeMiB > MaxMemoryMiB {
		return configErr("mem_size_mib", fmt.Sprint(c.MemSizeMiB), fmt.Sprintf("must be between %d and %d", MinMemoryMiB, MaxMemoryMiB))
	}
	switch c.DiskMode {
	case DiskIsolated, DiskShared:
	default:
		return configErr("disk_mode", string(c.DiskMode), "must be isolated or shared")
	}
	if c.DiskSizeMiB < 0 || c.DiskSizeMiB > MaxDiskSizeMiB {
		return configErr("disk_size_mib", fmt.Sprint(c.DiskSizeMiB), fmt.Sprintf("must be between 0 (image size) and %d", MaxDiskSizeMiB))
	}
	if c.DiskSizeMiB > 0 && c.DiskMode == DiskShared {
		return configErr("disk_size_mib", fmt.Sprint(c.DiskSizeMiB), "cannot resize a shared disk; use disk_mode isolated")
	}
	if err := validateBackend(c.Backend); err != nil {
		return err
	}
	switch c.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return configErr("accel", string(c.Accel), "must be auto, kvm or tcg")
	}
	if c.NoNetwork && len(c.DNSServers) > 0 {
		return configErr("dns_servers", strings.Join(c.DNSServers, ","), "needs networking; it cannot be set on a VM without network")
	}
	if c.NoNetwork && c.SSHHostPort != 0 {
		return configErr("ssh_host_port", fmt.Sprint(c.SSHHostPort), "needs networking; it cannot be set on a VM without network")
	}
	keys := make([]string, 0, len(c.EnvVars))
	for k := range c.EnvVars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := ValidateEnvKey(k); err != nil {
			return err
		}
	}
	if c.SSHHostPort < SSHPortAuto || c.SSHHostPort > 65535 {
		return configErr("ssh_host_port", fmt.Sprint(c.SSHHostPort), "must be between 1 and 65535 (0: no forwarding, -1: automatic)")
	}
	for _, f := range []struct{ name, v string }{{"kernel_path", c.KernelPath}, {"initrd_path", c.InitrdPath}, {"rootfs_path", c.RootfsPath}} {
		if f.v != "" && !strings.HasPrefix(f.v, "/") {
			return configErr(f.name, f.v, "must be an absolute path")
		}
	}
	if len(c.DNSServers) > 3 {
		return configErr("dns_servers", strings.Join(c.DNSServers, ","), "at most 3 resolvers")
	}
	for _, d := range c.DNSServers {
		if _, err := parseIPv4("dns_servers", d); err != nil {
			return err
		}
	}
	if strings.ContainsAny(c.BootArgs, "\n\x00") {
		return configErr("boot_args", c.BootArgs, "must be one line")
	}
	if err := validateMounts(c.Mounts); err != nil {
		return err
	}
	if err := validateLimits(c); err != nil {
		return err
	}
	if err := c.validateEgress(); err != nil {
		return err
	}
	if err := c.validateAttach(); err != nil {
		return err
	}
	if err := validateBootArgs(c.BootArgs); err != nil {
		return err
	}
	return validateConsoleMax(c.ConsoleLogMaxBytes)
}

// validateBackend accepts auto and every backend built into the program.
func validateBackend(b BackendKind) error {
	names := []string{string(BackendAuto)}
	for _, k := range vmm.Kinds() {
		if BackendKind(k) == b {
			return nil
		}
		names = append(names, string(k))
	}
	if b == BackendAuto {
		return nil
	}
	return configErr("backend", string(b), "must be one of "+strings.Join(names, ", "))
}

// ValidateEnvKey reports whether k is a valid environment variable name.
func ValidateEnvKey(k string) error {
	if !envKeyRE.MatchString(k) {
		return configErr("env_vars", k, "keys must match [A-Za-z_][A-Za-z0-9_]*")
	}
	return nil
}

// VMState is a VM's lifecycle state.
type VMState string

// VM states.
const (
	// StateCreated means the VM is recorded and its resources allocated, but it never ran.
	StateCreated VMState = "created"
	// StateRunning means its VMM process is alive and the guest booted.
	StateRunning VMState = "running"
	// StatePaused means its vCPUs are stopped.
	StatePaused VMState = "paused"
	// StateStopped means it ran and was stopped; its disk is kept.
	StateStopped VMState = "stopped"
	// StateError means something failed or its VMM died unexpectedly.
	StateError VMState = "error"
)

// ParseVMState returns the state named s.
func ParseVMState(s string) (VMState, error) {
	switch st := VMState(s); st {
	case StateCreated, StateRunning, StatePaused, StateStopped, StateError:
		return st, nil
	}
	return "", configErr("status", s, "must be one of created, running, paused, stopped, error")
}

// VMInfo is a snapshot of a VM's recorded state. It is a copy: changing it
// changes nothing.
type VMInfo struct {
	VMID      string         `json:"vm_id"`
	Status    VMState        `json:"status"`
	Config    VMConfig       `json:"config"`
	Network   *NetworkConfig `json:"network"`
	PID       int            `json:"pid,omitempty"`
	Backend   BackendKind    `json:"backend,omitempty"`
	Accel     string         `json:"accel,omitempty"`
	Sockets   SocketPaths    `json:"sockets"`
	Error     string         `json:"error,omitempty"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`

	// Host folders (agent area, issue 15).

	// Mounts are the host folders shared with the guest (as in Config).
	Mounts []Mount `json:"mounts"`
	// Snapshots (snapshot.go).

	// Saved reports a VM stopped with its memory saved (stop --save, Suspend):
	// Start resumes it where it was.
	Saved bool `json:"saved"`
	// Limits are the VM's resource limits (issue 13, security).
	Limits Limits `json:"limits"`
	// Network policy (egress.go).

	// Egress is the VM's egress policy; nil for a VM without network.
	Egress *EgressPolicy `json:"egress"`
	// SSHReady reports whether the VM runs and its SSH forward reached a
	// listening sshd when it started.
	SSHReady bool `json:"ssh_ready"`
	// Warm templates (warm.go).

	// Template names the warm template of its image the VM was restored
	// from at its first start; empty for a VM that booted cold.
	Template string `json:"template,omitempty"`
}

// SocketPaths are a VM's host-side control sockets.
type SocketPaths struct {
	// Control is the VMM's control socket (QMP or Firecracker's API).
	Control string `json:"control,omitempty"`
	// Agent is the guest agent's socket.
	Agent string `json:"agent,omitempty"`
}

// CommandResult is the outcome of a command run in the guest.
type CommandResult struct {
	// ExitCode is the command's exit status; 128+N when killed by signal N.
	ExitCode int `json:"exit_code"`
	// Stdout is everything the command wrote to standard output.
	Stdout string `json:"stdout"`
	// Stderr is everything the command wrote to standard error.
	Stderr string `json:"stderr"`
	// Truncated reports whether Stdout or Stderr was cut at the output cap
	// (Run keeps at most DefaultMaxOutputBytes per stream by default).
	Truncated bool `json:"truncated"`
}

// OK reports whether the command exited with status 0.
func (r CommandResult) OK() bool { return r.ExitCode == 0 }

// Output returns Stdout without its trailing newline.
func (r CommandResult) Output() string {
	s := strings.TrimSuffix(r.Stdout, "\n")
	return strings.TrimSuffix(s, "\r")
}

// validateBootArgs refuses boot_args that would override the host's
// smolvm.* keys or replace the init (issue 13).
func validateBootArgs(s string) error {
	if err := bootparams.CheckUserArgs(s); err != nil {
		return configErr("boot_args", s, "must not set smolvm.* keys, init= or rdinit=: "+err.Error())
	}
	return nil
}
