package shim

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netns"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/network"
)

// Network modes of AnnotationNetwork.
const (
	// networkPod attaches the VM's NIC to the pod's interface (the default
	// when the spec names a network namespace).
	networkPod = "pod"
	// networkNAT gives the VM SmolVM's own NAT networking in the shim's
	// network namespace.
	networkNAT = "nat"
	// networkNone gives the VM no NIC (the default without a namespace).
	networkNone = "none"
)

// podNetwork attaches the VM to the pod's interface when the spec names a
// network namespace (the shim's task server runs inside it, see netns.go)
// and the annotation does not ask for NAT or no network: the interface
// the namespace's default route goes through, else its only one other
// than loopback (the CRI plugin's CNI calls it eth0). The SDK gives the
// guest that interface's MAC, IPv4 address and gateway (smolvm.VMConfig's
// AttachInterface), so the pod's IP is the VM's. Only one VM can hold an
// interface: a second container in the same pod namespace fails to start
// with an error saying the interface is attached to another VM (a NAT VM
// beside it would not work either: the interface's traffic goes to the
// first VM).
func podNetwork(s *specs.Spec, cfg *smolvm.VMConfig) error {
	if cfg.NoNetwork || netnsPath(s) == "" || s.Annotations[AnnotationNetwork] == networkNAT {
		return nil
	}
	name, err := network.DefaultInterface()
	if err != nil {
		return fmt.Errorf("pod network namespace %s: %w (annotation %s=%s gives the VM SmolVM's NAT instead)", netnsPath(s), err, AnnotationNetwork, networkNAT)
	}
	cfg.AttachInterface = name
	return nil
}

// doInNetns runs f on a thread inside the network namespace at path, so
// the network teardown f does acts there (the delete command runs in
// containerd's namespace, not the pod's).
func doInNetns(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is locked and never unlocked if moving it back
		// fails: it dies with this goroutine instead of serving others.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("network namespace %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// bundleNetns returns the network namespace path of the spec in the
// current directory (the bundle) when that namespace still exists, else "".
func bundleNetns() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	spec, err := readSpec(dir)
	if err != nil {
		return ""
	}
	p := netnsPath(spec)
	if p == "" || inNetns(p) {
		return ""
	}
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
