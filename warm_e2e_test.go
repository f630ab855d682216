package smolvm

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestWarmDefaultImageHostKeys starts two VMs of the default image from
// its warm template: the template's guest made SSH host keys at its boot,
// and each VM must get its own (on disk and served by sshd), not the
// template's.
func TestWarmDefaultImageHostKeys(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	ctx := context.Background()
	dir := t.TempDir()
	h := testHost(t, dir, func(o *HostOptions) { o.Warm = WarmOn })
	t.Cleanup(func() { h.Cleanup(context.Background(), CleanupOptions{All: true}) })
	seen := map[string]string{}
	for _, id := range []string{"hk1", "hk2"} {
		t0 := time.Now()
		vm, err := h.New(ctx, VMConfig{VMID: id, Image: ImageDefault})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: create + start %v", id, time.Since(t0).Round(time.Millisecond))
		defer vm.ForceDelete(context.Background())
		if vm.Info().Template == "" {
			t.Fatalf("%s booted cold", id)
		}
		r, err := vm.Run(ctx, `cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub
for i in 1 2 3 4 5 6 7 8 9 10; do k=$(ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null | cut -d' ' -f3); [ -n "$k" ] && break; sleep 1; done; echo "$k"`)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Fields(r.Stdout)
		if len(lines) != 2 || lines[0] != lines[1] {
			t.Fatalf("%s: host key on disk and served by sshd: %q (stderr %q)", id, r.Stdout, r.Stderr)
		}
		if other, dup := seen[lines[0]]; dup {
			t.Fatalf("%s has the SSH host key of %s", id, other)
		}
		seen[lines[0]] = id
	}
	t0 := time.Now()
	vm, err := h.New(ctx, VMConfig{VMID: "hk-cold", Image: ImageDefault, Cold: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.ForceDelete(context.Background())
	t.Logf("hk-cold: create + start %v (cold, for comparison)", time.Since(t0).Round(time.Millisecond))
	if vm.Info().Template != "" {
		t.Fatalf("a cold VM says template %q", vm.Info().Template)
	}
}

// TestWarmFallsBackCold fails the restore from a warm template (an
// injected failure in its last step): the VM boots cold instead, says
// so, and the template that failed is removed.
func TestWarmFallsBackCold(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	ctx := context.Background()
	dir := t.TempDir()
	h := testHost(t, dir, func(o *HostOptions) { o.Warm = WarmOn; o.failAt = hostKeysStep.name })
	t.Cleanup(func() { h.Cleanup(context.Background(), CleanupOptions{All: true}) })
	var stages []string
	vm, err := h.New(ctx, minimalVM("fb"), WithProgress(func(stage string, _, _ int64) { stages = append(stages, stage) }))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.ForceDelete(context.Background())
	all := strings.Join(stages, "\n")
	if !strings.Contains(all, "building warm template") || !strings.Contains(all, "booting cold") {
		t.Fatalf("progress: %s", all)
	}
	if inf := vm.Info(); inf.Template != "" || inf.Status != StateRunning {
		t.Fatalf("after the fallback: template %q, status %s", inf.Template, inf.Status)
	}
	if r, err := vm.Run(ctx, "echo ok"); err != nil || r.Output() != "ok" {
		t.Fatalf("the cold VM: %v %+v", err, r)
	}
	if tpls, err := h.Templates(ctx); err != nil || len(tpls) != 0 {
		t.Fatalf("the failed template is kept: %v %v", tpls, err)
	}
}
