package initd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWaitServer runs a stand-in agent server that says it serves on the
// descriptor ReadyFDEnv names: the init's wait ends then, while the server
// still runs. A server that gives up (ExitUnavailable) ends the wait at
// once.
func TestWaitServer(t *testing.T) {
	stop := filepath.Join(t.TempDir(), "stop")
	for _, tt := range []struct {
		name, script string
		ready        bool
	}{
		{"ready", `sleep 0.2; eval "printf x >&$` + ReadyFDEnv + `"; while [ ! -e ` + stop + ` ]; do sleep 0.05; done; exit 3`, true},
		{"unavailable", `exit 3`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var console syncBuffer
			in := New(Options{Console: &console, ServeArgs: []string{"/bin/sh", "-c", tt.script}})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go in.reaper.Run(ctx)
			go in.superviseServer()
			in.waitServer(time.Minute)
			if strings.Contains(console.String(), "not serving") {
				t.Fatalf("console:\n%s", console.String())
			}
			select {
			case <-in.serverGone:
				if tt.ready {
					t.Fatal("the wait ended with the server, not when it was ready")
				}
			default:
				if !tt.ready {
					t.Fatal("the wait ended before the server gave up")
				}
			}
			os.WriteFile(stop, nil, 0o644)
			<-in.serverGone
		})
	}
}
