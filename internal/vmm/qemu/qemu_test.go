package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

func TestArgs(t *testing.T) {
	spec := vmm.Spec{
		ID: "web", Dir: "/d/vms/web", Kernel: "/img/vmlinuz", Initrd: "/img/initrd.img", Cmdline: "smolvm.id=web",
		VCPUs: 2, MemoryMiB: 512, Disks: []vmm.Disk{{Path: "/d/vms/web/disk.ext4"}, {Path: "/ro.img", ReadOnly: true}},
		NIC: &vmm.NIC{TAP: "smol0", MAC: "AA:FC:00:00:00:01"}, ConsoleLog: "/d/logs/web.log",
	}
	tcg := strings.Join(Args(spec, vmm.AccelTCG), " ")
	for _, want := range []string{
		"-M microvm", "-accel tcg,tb-size=64", "-smp 2", "-m 512", "-nodefaults", "-no-user-config", "-no-reboot",
		"-kernel /img/vmlinuz", "-initrd /img/initrd.img", "console=ttyS0", "smolvm.id=web",
		"-chardev file,id=console,path=/d/logs/web.log", "-chardev socket,id=qmp,path=/d/vms/web/qmp.sock,server=on,wait=off", "-mon chardev=qmp,mode=control",
		"-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"file=/d/vms/web/disk.ext4,format=raw", "virtio-blk-device,drive=disk0", "file=/ro.img,format=raw,if=none,cache=unsafe,discard=unmap,readonly=on",
		"-netdev tap,id=net0,ifname=smol0,script=no,downscript=no", "virtio-net-device,netdev=net0,mac=AA:FC:00:00:00:01",
		"socket,id=agent,path=/d/vms/web/agent.sock,server=on,wait=off", "virtserialport,chardev=agent,name=org.smolvm.agent",
	} {
		if !strings.Contains(tcg, want) {
			t.Errorf("TCG args lack %q:\n%s", want, tcg)
		}
	}
	// The kernel boots quiet, and the spec's words (a user's boot_args,
	// e.g. loglevel=7) come after, so they can override it.
	args := Args(spec, vmm.AccelTCG)
	if i := slices.Index(args, "-append"); i < 0 || !strings.HasPrefix(args[i+1], "console=ttyS0 reboot=t panic=-1 quiet smolvm.id=web") {
		t.Errorf("kernel command line does not start quiet, then the spec's words:\n%s", tcg)
	}
	if khz := vmm.TSCkHz(); khz > 0 && !strings.Contains(tcg, "tsc_early_khz=") {
		t.Errorf("TCG on a constant-TSC host without tsc_early_khz:\n%s", tcg)
	}
	if strings.Contains(tcg, "vhost-vsock") {
		t.Errorf("vsock device without a CID:\n%s", tcg)
	}
	spec.VsockCID = 7
	if v := strings.Join(Args(spec, vmm.AccelTCG), " "); !strings.Contains(v, "-device vhost-vsock-device,guest-cid=7") {
		t.Errorf("no vhost-vsock device for CID 7:\n%s", v)
	}
	spec.VsockCID = 0
	kvm := Args(spec, vmm.AccelKVM)
	if !slices.Contains(kvm, "kvm") || !slices.Contains(kvm, "host") || strings.Contains(strings.Join(kvm, " "), "tsc_early_khz") {
		t.Errorf("KVM args: %v", kvm)
	}
	spec.NIC = nil
	spec.Machine = "q35"
	q35 := strings.Join(Args(spec, vmm.AccelTCG), " ")
	if strings.Contains(q35, "-netdev") || !strings.Contains(q35, "virtio-blk-pci") || !strings.Contains(q35, "virtio-serial-pci") || !strings.Contains(q35, "-M q35") {
		t.Errorf("q35 without NIC:\n%s", q35)
	}
}
