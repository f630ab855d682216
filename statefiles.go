package smolvm

import (
	"fmt"
	"os"
	"syscall"
)

// secureDataDir makes sure the data directory is private (issue 13): it
// creates it with mode 0700; an existing one must be a directory (not a
// symlink) owned by this user, and is tightened to 0700 if others could
// read or write it. A sticky directory (such as /tmp) is refused: it is
// shared by nature and not ours to chmod.
func secureDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return configErr("data_dir", dir, "cannot be created: "+err.Error())
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return configErr("data_dir", dir, err.Error())
	}
	if !fi.IsDir() {
		return configErr("data_dir", dir, "must be a directory (not a symlink to one)")
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return configErr("data_dir", dir, fmt.Sprintf("is owned by uid %d; it must belong to the user running smolvm (uid %d)", st.Uid, os.Geteuid()))
	}
	if fi.Mode()&os.ModeSticky != 0 {
		return configErr("data_dir", dir, "is a shared sticky directory (like /tmp); use a directory of its own")
	}
	if fi.Mode()&(0o077|os.ModeSetgid|os.ModeSetuid) == 0 {
		return nil
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return configErr("data_dir", dir, "cannot be made private (mode 0700): "+err.Error())
	}
	return nil
}
