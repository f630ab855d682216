package vmm

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// AccelReport says which acceleration auto picks on this host and why.
type AccelReport struct {
	// Accel is AccelKVM or AccelTCG.
	Accel Accel
	// Reason explains the choice for humans (doctor, info).
	Reason string
}

// Probe names the host files acceleration detection reads. The zero value
// reads the real ones; tests point the fields at files of their own, so no
// test depends on the KVM situation of the machine it runs on.
type Probe struct {
	// DevKVM is the KVM device; empty means /dev/kvm.
	DevKVM string
	// SysModule is where loaded kernel modules appear; empty means /sys/module.
	SysModule string
	// CPUInfo is the CPU description; empty means /proc/cpuinfo.
	CPUInfo string
}

func (p Probe) withDefaults() Probe {
	if p.DevKVM == "" {
		p.DevKVM = "/dev/kvm"
	}
	if p.SysModule == "" {
		p.SysModule = "/sys/module"
	}
	if p.CPUInfo == "" {
		p.CPUInfo = "/proc/cpuinfo"
	}
	return p
}

// pvmReason is why a paravirtual nested KVM is not used.
const pvmReason = "kvm_pvm (a paravirtual nested KVM) cannot run a standard guest kernel"

// Detect decides what AccelAuto means on the host p describes. KVM is used
// only when the KVM device opens read-write and a hardware KVM module
// (kvm_intel or kvm_amd) is loaded: a paravirtual nested KVM (kvm_pvm),
// with or without a device, cannot run a standard guest kernel, so it gets
// TCG.
func (p Probe) Detect() AccelReport {
	p = p.withDefaults()
	has := func(m string) bool { _, err := os.Stat(p.SysModule + "/" + m); return err == nil }
	hw := has("kvm_intel") || has("kvm_amd")
	pvm := has("kvm_pvm") && !hw
	fd, err := unix.Open(p.DevKVM, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case pvm && errors.Is(err, fs.ErrNotExist):
			return AccelReport{AccelTCG, fmt.Sprintf("no %s, and %s: using TCG software emulation", p.DevKVM, pvmReason)}
		case pvm:
			return AccelReport{AccelTCG, fmt.Sprintf("%s unusable (%v), and %s: using TCG software emulation", p.DevKVM, err, pvmReason)}
		}
		return AccelReport{AccelTCG, fmt.Sprintf("%s unusable (%v): using TCG software emulation", p.DevKVM, err)}
	}
	unix.Close(fd)
	switch {
	case pvm:
		return AccelReport{AccelTCG, p.DevKVM + " is a paravirtual nested KVM: " + pvmReason + ": using TCG software emulation"}
	case hw:
		return AccelReport{AccelKVM, "hardware KVM available"}
	}
	if !p.cpuHasVirt() {
		return AccelReport{AccelTCG, p.DevKVM + " present but the CPU shows no hardware virtualisation (vmx/svm) and no kvm_intel/kvm_amd module is loaded: using TCG software emulation"}
	}
	return AccelReport{AccelTCG, p.DevKVM + " present but no hardware KVM module (kvm_intel/kvm_amd) is loaded: using TCG software emulation"}
}

// DetectAccel is Probe{}.Detect(): the real host's answer.
func DetectAccel() AccelReport { return Probe{}.Detect() }

// Resolve turns AccelAuto into a concrete acceleration on the host p
// describes.
func (p Probe) Resolve(a Accel) (Accel, string) {
	if a == AccelKVM || a == AccelTCG {
		return a, "requested"
	}
	r := p.Detect()
	return r.Accel, r.Reason
}

// Resolve turns AccelAuto into a concrete acceleration on this host.
func (a Accel) Resolve() (Accel, string) { return Probe{}.Resolve(a) }

// cpuFlags returns the flags line of the first CPU.
func (p Probe) cpuFlags() (flags string, mhz float64) {
	f, err := os.Open(p.withDefaults().CPUInfo)
	if err != nil {
		return "", 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() && (flags == "" || mhz == 0) {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "cpu MHz":
			if mhz == 0 {
				mhz, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		case "flags":
			if flags == "" {
				flags = " " + strings.TrimSpace(v) + " "
			}
		}
	}
	return flags, mhz
}

func (p Probe) cpuHasVirt() bool {
	flags, _ := p.cpuFlags()
	return strings.Contains(flags, " vmx ") || strings.Contains(flags, " svm ")
}

// TSCkHz returns the host TSC frequency in kHz when the CPU has a constant
// TSC, else 0. Under TCG the guest kernel gets it as tsc_early_khz: without
// it, a Debian kernel sometimes hangs after failing to calibrate the TSC.
func (p Probe) TSCkHz() int {
	flags, mhz := p.cpuFlags()
	if !strings.Contains(flags, " constant_tsc ") || mhz <= 0 {
		return 0
	}
	return int(mhz * 1000)
}

// TSCkHz is Probe{}.TSCkHz().
func TSCkHz() int { return Probe{}.TSCkHz() }
