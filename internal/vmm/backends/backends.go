// Package backends links the VMM backends into vmm's registry. Importing it
// (for its side effect) is how a program gets every backend; adding a
// backend is one package plus one line here. The order of the lines is the
// order of preference when a VM's backend is "auto": the first usable one
// whose requirements the VM meets wins.
package backends

import (
	"github.com/smolvm-go/smolvm/internal/vmm"
	"github.com/smolvm-go/smolvm/internal/vmm/firecracker"
	"github.com/smolvm-go/smolvm/internal/vmm/qemu"
)

func init() {
	vmm.Register(firecracker.Kind, firecracker.New) // fastest where hardware KVM exists
	vmm.Register(qemu.Kind, qemu.New)               // runs everywhere, TCG included
}
