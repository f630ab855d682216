package initd

import (
	"os"
	"path/filepath"
	"time"
)

// linkVirtioPorts creates /dev/virtio-ports/<name> symlinks for named
// virtio-serial ports, as udev would, for ports that appear within d.
func (in *Init) linkVirtioPorts(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		in.LinkVirtioPortsOnce()
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LinkVirtioPortsOnce creates the /dev/virtio-ports/<name> symlink of every
// named port now listed in /sys/class/virtio-ports.
func (in *Init) LinkVirtioPortsOnce() {
	ports, _ := filepath.Glob(in.path("/sys/class/virtio-ports/vport*"))
	for _, p := range ports {
		b, err := os.ReadFile(filepath.Join(p, "name"))
		name := string(bytesTrimSpace(b))
		if err != nil || name == "" || name != filepath.Base(name) {
			continue
		}
		link := in.path("/dev/virtio-ports/" + name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		_ = os.MkdirAll(filepath.Dir(link), 0o755)
		_ = os.Symlink("../"+filepath.Base(p), link)
	}
}

func bytesTrimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
