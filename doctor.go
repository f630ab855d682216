package smolvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/vmm"
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

// Doctor checks whether this host can run VMs: acceleration, VMM backends,
// networking prerequisites, the data directory and the images.
func (h *Host) Doctor(ctx context.Context, do DoctorOptions) []Check {
	var out []Check
	add := func(c Check) { out = append(out, c) }

	ar := h.opts.probe.Detect()
	if ar.Accel == vmm.AccelKVM {
		add(Check{"kvm", CheckOK, ar.Reason, ""})
	} else {
		add(Check{"kvm", CheckWarn, ar.Reason, "VMs run under TCG (software emulation): correct but several times slower. Use a host with hardware virtualisation (kvm_intel/kvm_amd) for speed."})
	}
	add(Check{"acceleration", CheckOK, "auto uses " + string(ar.Accel), ""})
	usable := 0
	for _, k := range vmm.Kinds() {
		c := h.backendCheck(ctx, k, do.Backend)
		if c.Status == CheckOK {
			usable++
		}
		add(c)
	}
	if usable == 0 {
		add(Check{"backend", CheckFail, "no VMM backend can run here", "apt-get install qemu-system-x86"})
	}

	if err := network.Check(); err != nil {
		add(Check{"network", CheckFail, err.Error(), "run as root (CAP_NET_ADMIN) with /dev/net/tun available, or create VMs with --network off"})
	} else {
		add(Check{"network", CheckOK, "/dev/net/tun usable, CAP_NET_ADMIN held", ""})
	}
	if err := network.CheckNftables(); err != nil {
		add(Check{"nftables", CheckFail, err.Error(), "needs CAP_NET_ADMIN and the nf_tables kernel module"})
	} else {
		add(Check{"nftables", CheckOK, "netlink access to nf_tables works", ""})
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err == nil && strings.TrimSpace(string(b)) == "1" {
		add(Check{"ip_forward", CheckOK, "net.ipv4.ip_forward = 1", ""})
	} else {
		add(Check{"ip_forward", CheckWarn, "net.ipv4.ip_forward is off", "smolvm turns it on when it starts a VM with networking; nothing to do unless something turns it off again"})
	}

	for _, c := range confinementChecks() {
		add(c)
	}
	add(dataDirCheck(h.dir))
	for _, name := range []string{ImageMinimal, ImageDefault} {
		if img, err := image.Get(h.imageDir, name); err == nil {
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

// backendCheck judges one backend: ok when usable; a failure when it was
// asked for and cannot run, a warning otherwise.
func (h *Host) backendCheck(ctx context.Context, k vmm.Kind, want BackendKind) Check {
	name := string(k)
	be, err := h.backend(k)
	if err != nil {
		return Check{name, CheckFail, err.Error(), ""}
	}
	ok, reason := be.Usable(ctx)
	if ok {
		v, _ := be.Version(ctx)
		return Check{name, CheckOK, strings.TrimSpace(v + "; " + reason), ""}
	}
	st := CheckWarn
	if want == BackendKind(k) {
		st = CheckFail
	}
	fix := "optional with --backend auto, which uses another backend"
	if st == CheckFail {
		fix = "install it (see the detail), or choose another --backend"
	}
	return Check{name, st, reason, fix}
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
