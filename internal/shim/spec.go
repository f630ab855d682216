package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/smolvm-go/smolvm"
)

// Annotations read from the OCI spec. They override what the spec's
// resources say.
const (
	// AnnotationImage names the SmolVM image whose kernel and initramfs boot
	// the container (default "minimal"; the root disk is the container's).
	AnnotationImage = "io.smolvm.image"
	// AnnotationVCPUs sets the VM's vCPU count.
	AnnotationVCPUs = "io.smolvm.vcpus"
	// AnnotationMemoryMiB sets the VM's memory in MiB.
	AnnotationMemoryMiB = "io.smolvm.memory_mib"
	// AnnotationNetwork is "pod" (the VM's NIC takes over the pod's
	// interface: the pod's IP is the VM's), "nat" (SmolVM's own NAT
	// networking inside the pod's namespace, or the shim's) or "none" (no
	// NIC). The default is "pod" when the spec names a network namespace,
	// "none" otherwise.
	AnnotationNetwork = "io.smolvm.network"
)

// maxSpecBytes bounds config.json.
const maxSpecBytes = 4 << 20

// readSpec reads the bundle's config.json.
func readSpec(bundle string) (*specs.Spec, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var s specs.Spec
	dec := json.NewDecoder(&limitReader{r: f, n: maxSpecBytes})
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	if s.Process == nil || len(s.Process.Args) == 0 {
		return nil, fmt.Errorf("config.json: process.args: must name a program")
	}
	return &s, nil
}

type limitReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("longer than %d bytes", maxSpecBytes)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// vmID is the VM id of a container: a hash of its namespace and id, so
// the shim's delete command finds the VM without any state of its own.
func vmID(namespace, id string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + id))
	return "ctr-" + hex.EncodeToString(sum[:8])
}

// vmConfig sizes the VM from the spec's resources and annotations. rootfs
// is the ext4 image that becomes the VM's root.
func vmConfig(s *specs.Spec, id, rootfs string) (smolvm.VMConfig, error) {
	cfg := smolvm.VMConfig{
		VMID:       id,
		Image:      smolvm.ImageMinimal,
		RootfsPath: rootfs,
		DiskMode:   smolvm.DiskShared, // the image was built for this VM alone
		NoNetwork:  true,
	}
	if s.Linux != nil && s.Linux.Resources != nil {
		r := s.Linux.Resources
		if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
			mib := int((*r.Memory.Limit + 1<<20 - 1) >> 20)
			cfg.MemSizeMiB = min(max(mib, smolvm.MinMemoryMiB), smolvm.MaxMemoryMiB)
		}
		if r.CPU != nil && r.CPU.Quota != nil && *r.CPU.Quota > 0 && r.CPU.Period != nil && *r.CPU.Period > 0 {
			n := int((uint64(*r.CPU.Quota) + *r.CPU.Period - 1) / *r.CPU.Period)
			cfg.VCPUCount = min(max(n, smolvm.MinVCPUs), smolvm.MaxVCPUs)
		}
	}
	a := s.Annotations
	if v, ok := a[AnnotationImage]; ok {
		cfg.Image = v
	}
	for _, f := range []struct {
		key string
		dst *int
	}{{AnnotationVCPUs, &cfg.VCPUCount}, {AnnotationMemoryMiB, &cfg.MemSizeMiB}} {
		v, ok := a[f.key]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("annotation %s=%q: must be a positive integer", f.key, v)
		}
		*f.dst = n
	}
	// A spec with a network namespace (a pod's) gets a NIC by default:
	// the pod's interface (podNetwork, podnet.go). One without gets no NIC
	// unless the annotation asks for NAT.
	ns := netnsPath(s)
	switch v := a[AnnotationNetwork]; v {
	case "":
		cfg.NoNetwork = ns == ""
	case networkNone:
	case networkNAT:
		cfg.NoNetwork = false
	case networkPod:
		if ns == "" {
			return cfg, fmt.Errorf("annotation %s=%q: the spec names no network namespace (a pod's) to take the interface of", AnnotationNetwork, v)
		}
		cfg.NoNetwork = false
	default:
		return cfg, fmt.Errorf("annotation %s=%q: must be \"pod\", \"nat\" or \"none\"", AnnotationNetwork, v)
	}
	if !cfg.NoNetwork && ns != "" {
		cfg.DNSServers = specResolvers(s)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// netnsPath returns the path of the network namespace the spec joins, or "".
func netnsPath(s *specs.Spec) string {
	if s.Linux == nil {
		return ""
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}

// rootPath returns the spec's root directory, absolute.
func rootPath(s *specs.Spec, bundle string) string {
	p := "rootfs"
	if s.Root != nil && s.Root.Path != "" {
		p = s.Root.Path
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(bundle, p)
	}
	return p
}

// execRequest translates an OCI process into an agent request: args, env,
// cwd and user (the uid; the agent takes the gid from the guest's passwd
// file, or uses the uid's number).
func execRequest(p *specs.Process) (smolvm.ProcessOptions, error) {
	if p == nil || len(p.Args) == 0 {
		return smolvm.ProcessOptions{}, fmt.Errorf("process.args: must name a program")
	}
	req := smolvm.ProcessOptions{Argv: p.Args, Dir: p.Cwd, Env: map[string]string{}}
	for _, kv := range p.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || smolvm.ValidateEnvKey(k) != nil {
			return req, fmt.Errorf("process.env: %q is not NAME=value", kv)
		}
		req.Env[k] = v
	}
	if p.User.UID != 0 {
		req.User = strconv.FormatUint(uint64(p.User.UID), 10)
	}
	if p.Terminal { // TERM comes with the process's env
		req.Pty = true
		if p.ConsoleSize != nil {
			req.Rows, req.Cols = uint16(min(p.ConsoleSize.Height, 0xffff)), uint16(min(p.ConsoleSize.Width, 0xffff))
		}
	}
	return req, nil
}
