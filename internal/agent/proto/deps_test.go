package proto_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoNetImport checks that the guest-side packages do not link package
// net (nor os/user or mdlayher/vsock, which pull it in): the agent binary must
// stay static even when built with cgo.
func TestNoNetImport(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	pkgs := []string{
		"github.com/smolvm-go/smolvm/internal/agent/proto",
		"github.com/smolvm-go/smolvm/internal/agent/server",
	}
	forbidden := map[string]bool{"net": true, "os/user": true, "github.com/mdlayher/vsock": true}
	for _, pkg := range pkgs {
		out, err := exec.Command(goTool, "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if forbidden[dep] {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
