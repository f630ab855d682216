package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
)

// prepare finds or builds the static guest agent and builds the images the
// benchmark boots into the image cache (cfg.imageDir, set here). It returns
// the environment the re-executed benchmark needs and what to remove at the
// end.
func prepare(ctx context.Context, cfg *config) (env []string, cleanups []func(), err error) {
	agent := os.Getenv(smolvm.AgentEnv)
	if agent == "" {
		dir, err := os.MkdirTemp("", "smolvm-bench-bin-")
		if err != nil {
			return nil, nil, err
		}
		cleanups = append(cleanups, func() { os.RemoveAll(dir) })
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", dir+"/", "github.com/smolvm-go/smolvm/cmd/smolvm-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, cleanups, fmt.Errorf("build the guest agent (run from the module root): %v: %s", err, out)
		}
		agent = filepath.Join(dir, "smolvm-agent")
		logf("agent built in %.1fs", time.Since(start).Seconds())
	}
	if cfg.imageDir == "" {
		cfg.imageDir = os.Getenv(smolvm.ImageDirEnv)
	}
	if cfg.imageDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		cfg.imageDir = filepath.Join(base, "smolvm-bench", "images")
	}
	env = []string{smolvm.AgentEnv + "=" + agent, smolvm.ImageDirEnv + "=" + cfg.imageDir}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: cfg.dataDir, ImageDir: cfg.imageDir})
	if err != nil {
		return nil, cleanups, err
	}
	defer h.Close()
	for _, name := range cfg.images() {
		start := time.Now()
		last := ""
		info, err := h.BuildImage(ctx, name, smolvm.ImageBuildOptions{Progress: func(stage string, _, _ int64) {
			if stage != last {
				last = stage
				logf("image %s: %s", name, stage)
			}
		}})
		if err != nil {
			return nil, cleanups, fmt.Errorf("build image %s: %w", name, err)
		}
		logf("image %s ready in %.1fs (%s)", name, time.Since(start).Seconds(), info.Dir)
	}
	return env, cleanups, nil
}

// logf prints progress to standard error, so standard output keeps only
// the results.
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
}
