package smolvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmm/firecracker"
	"github.com/smolvm-go/smolvm/internal/vmm/qemu"
)

// CheckStatus is the outcome of one doctor check.
type CheckStatus string

// Check outcomes.
const (
	CheckOK   CheckStatus = "ok"
	CheckWarn CheckStatus = "warn"
	CheckFail CheckStatus = "fail"
)

// Check is one finding of Doctor.
type Check struct {
	// Name identifies the check, e.g. "kvm", "qemu".
	Name string `json:"name"`
	// Status is ok, warn or fail.
	Status CheckStatus `json:"status"`
	// Detail says what was found.
	Detail string `json:"detail"`
	// Fix says what to do about a warning or failure.
	Fix string `json:"fix,omitempty"`
}

// DoctorOptions tunes Doctor.
type DoctorOptions struct {
	// Backend is the backend to judge: auto (default), qemu or firecracker.
	Backend BackendKind
}

// Doctor checks whether this host can run VMs: acceleration, VMM binaries,
// networking prerequisites, the data directory and the images.
func Doctor(ctx context.Context, do DoctorOptions, opts ...Option) []Check {
	o := buildOptions(opts)
	h := &host{dir: o.dataDir}
	var out []Check
	add := func(c Check) { out = append(out, c) }

	ar := vmm.DetectAccel()
	if ar.Accel == vmm.AccelKVM {
		add(Check{"kvm", CheckOK, ar.Reason, ""})
	} else {
		add(Check{"kvm", CheckWarn, ar.Reason, "VMs run under TCG (software emulation): correct but several times slower. Use a host with hardware virtualisation (kvm_intel/kvm_amd) for speed."})
	}
	add(Check{"acceleration", CheckOK, "auto uses " + string(ar.Accel), ""})

	qb := &qemu.Backend{}
	if v, err := qb.Version(ctx); err != nil {
		st := CheckFail
		if do.Backend == BackendFirecracker {
			st = CheckWarn
		}
		add(Check{"qemu", st, err.Error(), "apt-get install qemu-system-x86"})
	} else {
		add(Check{"qemu", CheckOK, v, ""})
	}
	fc := firecrackerCheck(ctx, ar)
	if do.Backend != BackendFirecracker && fc.Status == CheckFail {
		fc.Status = CheckWarn
	}
	add(fc)

	if err := network.Check(); err != nil {
		add(Check{"network", CheckFail, err.Error(), "run as root (CAP_NET_ADMIN) with /dev/net/tun available, or create VMs with --network off"})
	} else {
		add(Check{"network", CheckOK, "/dev/net/tun usable, CAP_NET_ADMIN held", ""})
	}
	if c, err := nftables.New(); err != nil {
		add(Check{"nftables", CheckFail, err.Error(), "needs CAP_NET_ADMIN and the nf_tables kernel module"})
	} else if _, err := c.ListTables(); err != nil {
		add(Check{"nftables", CheckFail, "cannot list tables: " + err.Error(), "needs CAP_NET_ADMIN and the nf_tables kernel module"})
	} else {
		add(Check{"nftables", CheckOK, "netlink access to nf_tables works", ""})
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err == nil && strings.TrimSpace(string(b)) == "1" {
		add(Check{"ip_forward", CheckOK, "net.ipv4.ip_forward = 1", ""})
	} else {
		add(Check{"ip_forward", CheckWarn, "net.ipv4.ip_forward is off", "smolvm turns it on when it starts a VM with networking; nothing to do unless something turns it off again"})
	}

	add(dataDirCheck(h.dir))
	for _, name := range []string{ImageMinimal, ImageDefault} {
		if img, err := image.Get(h.imagesDir(), name); err == nil {
			add(Check{"image " + name, CheckOK, fmt.Sprintf("built %s, kernel %s", img.Manifest.BuiltAt.Local().Format("2006-01-02 15:04"), img.Manifest.KernelVersion), ""})
		} else {
			add(Check{"image " + name, CheckWarn, "not built", "smolvm image build " + name})
		}
	}
	if _, err := findAgent(); err != nil {
		add(Check{"agent", CheckFail, err.Error(), "make build"})
	} else {
		add(Check{"agent", CheckOK, "smolvm-agent found", ""})
	}
	for _, tool := range image.HostTools() {
		if p, err := image.LookTool(tool); err != nil {
			add(Check{"tool " + tool, CheckWarn, "not found", strings.TrimPrefix(err.Error(), image.ErrToolMissing.Error()+": ")})
		} else {
			add(Check{"tool " + tool, CheckOK, p, ""})
		}
	}
	if p, err := exec.LookPath("ssh"); err != nil {
		add(Check{"tool ssh", CheckWarn, "not found (smolvm ssh needs it)", "apt-get install openssh-client"})
	} else {
		add(Check{"tool ssh", CheckOK, p, ""})
	}
	return out
}

func firecrackerCheck(ctx context.Context, ar vmm.AccelReport) Check {
	fc := &firecracker.Backend{}
	v, verr := fc.Version(ctx)
	ok, reason := fc.Usable()
	switch {
	case ok:
		return Check{"firecracker", CheckOK, fmt.Sprintf("%s; %s", v, reason), ""}
	case verr != nil:
		return Check{"firecracker", CheckFail, "not found: " + reason, "optional: install Firecracker >= 1.8 (in PATH or $SMOLVM_FIRECRACKER) for faster boots on hosts with hardware KVM"}
	}
	return Check{"firecracker", CheckWarn, fmt.Sprintf("%s is installed but cannot run here: %s", v, reason), "use --backend qemu (auto does)"}
}

func dataDirCheck(dir string) Check {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Check{"data dir", CheckFail, err.Error(), "choose a writable --data-dir"}
	}
	probe := filepath.Join(dir, ".doctor-probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return Check{"data dir", CheckFail, fmt.Sprintf("%s is not writable: %v", dir, err), "choose a writable --data-dir"}
	}
	os.Remove(probe)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Check{"data dir", CheckWarn, err.Error(), ""}
	}
	free := int64(st.Bavail) * st.Bsize
	detail := fmt.Sprintf("%s writable, %.1f GiB free", dir, float64(free)/(1<<30))
	if free < 2<<30 {
		return Check{"data dir", CheckWarn, detail, "images and disk copies need a few GiB: free some space"}
	}
	return Check{"data dir", CheckOK, detail, ""}
}
