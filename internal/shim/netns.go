package shim

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netns"
)

// Pod networking. When the spec names a network namespace (every pod the
// CRI plugin makes without host networking), the shim's task server is
// started inside it, so the VM's TAP device, SmolVM's NAT rules and the
// VMM all live in the pod's namespace: the guest reaches the network
// through the pod's interface, its traffic leaving with the pod's IP. The
// guest itself has SmolVM's own address behind that NAT, so connections
// to the pod's IP do not reach it (that needs the TAP joined to the pod's
// interface with tc redirects and the guest given the pod's address).

// startInNetns starts cmd with its network namespace the one at path: the
// fork happens on a thread moved into it for that moment (doInNetns).
func startInNetns(cmd *exec.Cmd, path string) error { return doInNetns(path, cmd.Start) }

// inNetns reports whether this process's network namespace is the one at
// path.
func inNetns(path string) bool {
	cur, err := netns.Get()
	if err != nil {
		return false
	}
	defer cur.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return false
	}
	defer target.Close()
	return cur.Equal(target)
}

// specResolvers returns the IPv4 nameservers of the resolv.conf the spec
// mounts into the container (the CRI plugin's per-pod file), at most 3.
func specResolvers(s *specs.Spec) []string {
	for _, m := range s.Mounts {
		if m.Destination != "/etc/resolv.conf" || m.Source == "" {
			continue
		}
		b, err := os.ReadFile(m.Source)
		if err != nil || len(b) > 64<<10 {
			return nil
		}
		var out []string
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() && len(out) < 3 {
			var kw, addr string
			if n, _ := fmt.Sscan(sc.Text(), &kw, &addr); n == 2 && kw == "nameserver" {
				if a, err := netip.ParseAddr(addr); err == nil && a.Is4() && !a.IsLoopback() {
					out = append(out, a.String())
				}
			}
		}
		return out
	}
	return nil
}
