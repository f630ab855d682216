package main

import (
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// --attach-interface with what it excludes, or with an interface that is
// not there, is a usage error naming the field, and nothing is created.
func TestCLIAttachInterfaceRefused(t *testing.T) {
	vmtest.Require(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args  []string
		field string
	}{
		{[]string{"--attach-interface", "eth0", "--ssh-port", "2222"}, "ssh_host_port"},
		{[]string{"--attach-interface", "eth0", "--network", "off"}, "no_network"},
		{[]string{"--attach-interface", "eth9", "--image", "minimal"}, "attach_interface"},
	} {
		r := cli(t, dir, append([]string{"create", "--name", "att"}, c.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.field) {
			t.Errorf("create %v: exit %d, stderr %q; want 2 naming %s", c.args, r.code, r.stderr, c.field)
		}
	}
	if r := cli(t, dir, "ls"); strings.Contains(r.stdout, "att") {
		t.Errorf("a refused create left a VM:\n%s", r.stdout)
	}
}
