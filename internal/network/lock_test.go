package network

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The host-wide lock lives in a directory only its owner can write and is
// never reached through a symlink; a lock that cannot be taken is an error.
func TestOpenLockRefusesUnsafePlaces(t *testing.T) {
	base := t.TempDir()
	good := filepath.Join(base, "good")
	f, err := openLock(good)
	if err != nil {
		t.Fatalf("fresh dir: %v", err)
	}
	f.Close()
	if fi, _ := os.Stat(good); fi.Mode().Perm() != 0o700 {
		t.Errorf("created dir mode %v", fi.Mode())
	}

	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, os.ModeSticky|0o777)
	if _, err := openLock(open); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("world-writable dir: err = %v", err)
	}

	link := filepath.Join(base, "link")
	os.Symlink(good, link)
	if _, err := openLock(link); err == nil {
		t.Error("symlinked dir accepted")
	}

	planted := filepath.Join(base, "planted")
	os.Mkdir(planted, 0o700)
	os.Symlink(filepath.Join(base, "victim"), filepath.Join(planted, lockName))
	if _, err := openLock(planted); err == nil {
		t.Error("symlinked lock file followed")
	}
	if _, err := os.Stat(filepath.Join(base, "victim")); err == nil {
		t.Error("symlink target created")
	}

	old := lockDir
	defer func() { lockDir = old }()
	lockDir = open
	if _, err := lock(); err == nil {
		t.Error("lock() skipped an unsafe lock instead of failing")
	}
	lockDir = good
	unlock, err := lock()
	if err != nil {
		t.Fatal(err)
	}
	unlock()
}
