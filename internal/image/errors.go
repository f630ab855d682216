package image

import (
	"errors"
	"fmt"
	"os/exec"
)

// Error kinds returned by this package, checked with errors.Is.
var (
	// ErrToolMissing means a host program the build needs is not installed;
	// the error text names the Debian package that provides it.
	ErrToolMissing = errors.New("host tool missing")
	// ErrInvalidKernel means a kernel file is neither a bzImage nor an
	// x86-64 ELF vmlinux, or its vmlinux cannot be extracted.
	ErrInvalidKernel = errors.New("invalid kernel")
	// ErrNotFound means no complete image of that name is in the cache.
	ErrNotFound = errors.New("image not found")
	// ErrInvalidAgent means the agent binary cannot run as /init in the guest.
	ErrInvalidAgent = errors.New("invalid agent binary")
)

// toolPackages maps each host program we run to the Debian package that
// provides it, so a missing tool can be reported with its fix.
var toolPackages = map[string]string{
	"apt-get":    "apt",
	"apt-cache":  "apt",
	"dpkg-deb":   "dpkg",
	"mmdebstrap": "mmdebstrap",
	"mkfs.ext4":  "e2fsprogs",
	"resize2fs":  "e2fsprogs",
	"debugfs":    "e2fsprogs",
	"e2fsck":     "e2fsprogs",
	"dumpe2fs":   "e2fsprogs",
}

// HostTools lists the host programs image builds run.
func HostTools() []string {
	return []string{"apt-get", "apt-cache", "dpkg-deb", "mmdebstrap", "mkfs.ext4", "resize2fs", "debugfs", "e2fsck"}
}

// LookTool returns the path of a host program or an ErrToolMissing error
// naming the Debian package to install.
func LookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	pkg := toolPackages[name]
	if pkg == "" {
		pkg = name
	}
	return "", fmt.Errorf("%w: %s not found in PATH (install the Debian package %q: apt-get install %s)",
		ErrToolMissing, name, pkg, pkg)
}
