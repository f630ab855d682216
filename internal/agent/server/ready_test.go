package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRunReady: Run says it is ready once it serves the virtio-serial
// port, and only then.
func TestRunReady(t *testing.T) {
	dir := t.TempDir()
	port := filepath.Join(dir, "port")
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{VirtioPort: port, VirtioWait: time.Minute, Ready: func() { close(ready) }})
	}()
	select {
	case <-ready:
		t.Fatal("ready before the port exists")
	case <-time.After(100 * time.Millisecond):
	}
	if err := os.WriteFile(port, nil, 0o600); err != nil { // a stand-in for the device
		t.Fatal(err)
	}
	select {
	case <-ready:
	case <-time.After(time.Minute):
		t.Fatal("not ready once the port exists")
	}
	cancel()
	<-done
}

func TestVirtioPortsPresent(t *testing.T) {
	dir := t.TempDir()
	if virtioPortsPresent(dir) || virtioPortsPresent(filepath.Join(dir, "missing")) {
		t.Fatal("ports in an empty directory")
	}
	os.Mkdir(filepath.Join(dir, "vport0p1"), 0o755)
	if !virtioPortsPresent(dir) {
		t.Fatal("vport0p1 not seen")
	}
}
