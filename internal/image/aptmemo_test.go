package image

import (
	"context"
	"os"
	"os/exec"
	"testing"
)

func TestAptMemo(t *testing.T) {
	if _, err := os.Stat("/var/cache/apt/pkgcache.bin"); err != nil {
		t.Skip("no apt binary cache here")
	}
	a := &apt{memoDir: t.TempDir()}
	if _, ok := a.memoGet([]string{"show", "x"}); ok {
		t.Fatal("answer before anything was remembered")
	}
	a.memoPut([]string{"show", "x"}, []byte("Version: 1\n"))
	if b, ok := a.memoGet([]string{"show", "x"}); !ok || string(b) != "Version: 1\n" {
		t.Fatalf("remembered %q %v", b, ok)
	}
	if _, ok := a.memoGet([]string{"show", "y"}); ok {
		t.Error("other arguments got the answer")
	}
	if _, err := exec.LookPath("apt-cache"); err != nil {
		return
	}
	p, err := a.show(context.Background(), "busybox-static")
	if err != nil {
		t.Skipf("apt-cache: %v", err)
	}
	a.memoDir = a.memoDir + "-none"
	b := &apt{memoDir: a.memoDir}
	q, err := b.show(context.Background(), "busybox-static")
	if err != nil || q != p {
		t.Errorf("memo %+v, apt-cache %+v %v", p, q, err)
	}
}
