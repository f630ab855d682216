package vmm

import (
	"bufio"
	"fmt"
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

// sysModule is where loaded kernel modules appear; tests point it elsewhere.
var sysModule = "/sys/module"

// DetectAccel decides what AccelAuto means here. KVM is used only when
// /dev/kvm opens read-write and a hardware KVM module (kvm_intel or kvm_amd)
// is loaded: a paravirtual nested KVM (kvm_pvm) exposes /dev/kvm but cannot
// run a standard guest kernel, so it gets TCG.
func DetectAccel() AccelReport {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return AccelReport{AccelTCG, fmt.Sprintf("/dev/kvm unusable (%v): using TCG software emulation", err)}
	}
	unix.Close(fd)
	has := func(m string) bool { _, err := os.Stat(sysModule + "/" + m); return err == nil }
	switch {
	case has("kvm_pvm") && !has("kvm_intel") && !has("kvm_amd"):
		return AccelReport{AccelTCG, "/dev/kvm is a paravirtual nested KVM (kvm_pvm) that cannot run a standard guest kernel: using TCG software emulation"}
	case has("kvm_intel") || has("kvm_amd"):
		return AccelReport{AccelKVM, "hardware KVM available"}
	}
	return AccelReport{AccelTCG, "/dev/kvm present but no hardware KVM module (kvm_intel/kvm_amd) is loaded: using TCG software emulation"}
}

// Resolve turns AccelAuto into a concrete acceleration.
func (a Accel) Resolve() (Accel, string) {
	if a == AccelKVM || a == AccelTCG {
		return a, "requested"
	}
	r := DetectAccel()
	return r.Accel, r.Reason
}

// TSCkHz returns the host TSC frequency in kHz when the CPU has a constant
// TSC, else 0. Under TCG the guest kernel gets it as tsc_early_khz: without
// it, a Debian kernel sometimes hangs after failing to calibrate the TSC.
func TSCkHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	var mhz float64
	constant := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
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
			constant = constant || strings.Contains(" "+v+" ", " constant_tsc ")
		}
		if mhz != 0 && constant {
			break
		}
	}
	if !constant || mhz <= 0 {
		return 0
	}
	return int(mhz * 1000)
}
