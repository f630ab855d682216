package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// TestArgsSnapshots checks the parts of the command line snapshots rely on:
// RAM in a named memfd backend (shared, so x-ignore-shared leaves it out of
// the state), a virtio-rng device, and -incoming defer only for restores.
func TestArgsSnapshots(t *testing.T) {
	spec := vmm.Spec{ID: "a", Dir: "/d", Kernel: "/k", VCPUs: 1, MemoryMiB: 256, ConsoleLog: "/c"}
	a := strings.Join(Args(spec, vmm.AccelTCG), " ")
	for _, want := range []string{
		"microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem0",
		"-object memory-backend-memfd,id=mem0,size=256M,share=on",
		"-m 256",
		"-object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("args lack %q:\n%s", want, a)
		}
	}
	if strings.Contains(a, "-incoming") {
		t.Errorf("a boot waits for a migration: %s", a)
	}
	spec.Incoming = true
	if args := Args(spec, vmm.AccelTCG); !slices.Contains(args, "-incoming") || args[slices.Index(args, "-incoming")+1] != "defer" {
		t.Errorf("restore without -incoming defer: %v", args)
	}
	spec.Machine = "q35"
	if a := strings.Join(Args(spec, vmm.AccelTCG), " "); !strings.Contains(a, "-M q35,memory-backend=mem0") || !strings.Contains(a, "virtio-rng-pci,rng=rng0") {
		t.Errorf("q35 args: %s", a)
	}
}
