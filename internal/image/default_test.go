package image

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestBuildDefaultImage builds the Debian "default" image with mmdebstrap
// and boots it. It downloads a few hundred MB and takes minutes, so it only
// runs with SMOLVM_TEST_DEFAULT_IMAGE=1.
func TestBuildDefaultImage(t *testing.T) {
	if os.Getenv("SMOLVM_TEST_DEFAULT_IMAGE") != "1" {
		t.Skip("set SMOLVM_TEST_DEFAULT_IMAGE=1 to build the default image")
	}
	agent := buildAgent(t)
	start := time.Now()
	img, err := Build(context.Background(), BuildOptions{
		Name: NameDefault, CacheDir: testCacheDir(t), AgentPath: agent,
		Progress: func(stage string, done, total int64) {
			if done == 0 {
				t.Logf("%6.1fs %s", time.Since(start).Seconds(), stage)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("default image: built in %.1fs (this call %v)", img.Manifest.BuildSeconds, time.Since(start).Round(time.Second))
	for _, f := range img.Manifest.Files {
		t.Logf("  %-12s %10d bytes", f.Name, f.Size)
	}
	r := bootQEMU(t, img.Kernel, img.Initrd, img.Rootfs)
	t.Logf("default image ready after %v wall, guest uptime %ss", r.Wall.Round(time.Millisecond), r.Uptime)
	t.Logf("console:\n%s", tailLines(r.Console, 30))
}
