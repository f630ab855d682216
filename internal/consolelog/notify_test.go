package consolelog

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWatch: a write to the log (or its creation) ends a Wait long before
// its bound; without one, the bound or the context ends it.
func TestWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	w := NewWatch(path)
	defer w.Close()
	if w.f == nil {
		t.Skip("no inotify here")
	}
	ctx := context.Background()
	go func() {
		time.Sleep(50 * time.Millisecond)
		os.WriteFile(path, []byte("SMOLVM_READY\n"), 0o600)
	}()
	w.Wait(ctx, time.Hour)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("Wait returned before the log was written: %v", err)
	}
	// Drain what the write queued, then nothing happens: the bound ends it.
	w.Wait(ctx, 10*time.Millisecond)
	w.Wait(ctx, 10*time.Millisecond)
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)
	done := make(chan struct{})
	go func() { w.Wait(cctx, time.Hour); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a canceled Wait did not return")
	}
}

// TestReadyLineUrgent: the ready marker's line is found across reads, up
// to its newline, once.
func TestReadyLineUrgent(t *testing.T) {
	m := readyLine{marker: []byte("SMOLVM_READY")}
	for i, tt := range []struct {
		in   string
		want bool
	}{
		{"[ 1.0] kernel\n", false},
		{"smolvm-init: booted\nSMOLVM_", false},
		{"READY up", true}, // the marker completes across reads
		{"time=1.62s", true},
		{"\nsmolvm-agent: serving\n", true}, // the line's end
		{"more\n", false},
		{"SMOLVM_READY again\n", false}, // only the first
	} {
		if got := m.urgent([]byte(tt.in)); got != tt.want {
			t.Errorf("read %d %q: urgent %v, want %v", i, tt.in, got, tt.want)
		}
	}
}
