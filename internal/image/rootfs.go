package image

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Image names Build knows.
const (
	// NameMinimal is a busybox root filesystem, for fast tests.
	NameMinimal = "minimal"
	// NameDefault is Debian bookworm (minbase) with sshd and python3.
	NameDefault = "default"
)

// debianSuite is the Debian release images are built from.
const debianSuite = "bookworm"

// DefaultPackages are the packages mmdebstrap installs into the default
// image on top of minbase.
var DefaultPackages = []string{
	"openssh-server", "python3", "ca-certificates", "iproute2", "procps",
	"curl", "less", "iputils-ping", "netbase",
}

// DefaultUsers are the non-root users of the default image: "user", as in
// E2B's templates (the E2B SDK runs commands as it by default).
var DefaultUsers = []string{"user"}

// gatewayPlaceholder is the resolver written at build time; the init
// rewrites resolv.conf from the kernel command line at boot.
const gatewayPlaceholder = "172.16.0.1"

// etcFiles returns the /etc files both images share.
func etcFiles() map[string]string {
	return map[string]string{
		"etc/hostname":    "smolvm\n",
		"etc/hosts":       "127.0.0.1\tlocalhost\n127.0.1.1\tsmolvm\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/resolv.conf": "nameserver " + gatewayPlaceholder + "\n",
		"etc/fstab":       "# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 defaults 0 1\n",
	}
}

// writeFiles writes name -> content files under root.
func writeFiles(root string, files map[string]string, mode fs.FileMode) error {
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		// Replace symlinks (Debian's resolv.conf may be one).
		_ = os.Remove(p)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			return err
		}
	}
	return nil
}

// minimalRootfs fills dir with a busybox system: busybox and its applet
// links, a few /etc files, and the agent.
func minimalRootfs(ctx context.Context, dir, busybox string, agent []byte) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc/profile.d", "proc", "sys", "dev", "run", "var/log", "home", "mnt", "root", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(dir, "root"), 0o700); err != nil {
		return err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("read busybox: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), bb, 0o755); err != nil {
		return err
	}
	// The host runs the (static, x86-64) busybox to list its applets.
	out, err := runTool(ctx, "", busybox, "--list-full")
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	for _, a := range strings.Fields(string(out)) {
		p := filepath.Join(dir, a)
		if _, err := os.Lstat(p); err == nil || a == "linuxrc" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil {
			return err
		}
	}
	// Debian's busybox 1.35 is built without FEATURE_WGET_TIMEOUT, yet its
	// wget still accepts -T and then writes the value through a NULL
	// pointer: `wget -T 5 URL` dies with SIGSEGV before it does anything.
	// /usr/bin/wget (first in PATH) runs the timeout through busybox's
	// timeout instead. This busybox's sh runs its own applets before
	// looking in PATH, so login shells get a wget function that calls it.
	if err := writeFiles(dir, map[string]string{"usr/bin/wget": wgetWrapper}, 0o755); err != nil {
		return err
	}
	files := etcFiles()
	// Names: /etc/hosts, then DNS (glibc's built-in files and dns modules;
	// the static busybox loads no NSS library).
	files["etc/nsswitch.conf"] = "hosts: files dns\npasswd: files\ngroup: files\n"
	files["etc/profile.d/smolvm_wget.sh"] = "wget() { /usr/bin/wget \"$@\"; }\n"
	files["etc/passwd"] = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	files["etc/group"] = "root:x:0:\nnogroup:x:65534:\n"
	files["etc/profile"] = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" +
		"export HOME=${HOME:-/root}\n" +
		"for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\nunset f\n"
	if err := writeFiles(dir, files, 0o644); err != nil {
		return err
	}
	if err := writeFiles(dir, map[string]string{"etc/shadow": "root:*:19000:0:99999:7:::\n"}, 0o600); err != nil {
		return err
	}
	return installAgent(dir, agent)
}

// wgetWrapper is the minimal image's wget: busybox wget with -T SECONDS
// (-TSECONDS, --timeout=SECONDS) turned into busybox timeout.
const wgetWrapper = `#!/bin/sh
# Written by smolvm: busybox wget crashes on -T (built without its timeout
# feature), so the timeout is applied with busybox timeout.
t=
n=$#
while [ "$n" -gt 0 ]; do
	a=$1; shift; n=$((n - 1))
	case $a in
	-T|--timeout) t=$1; shift; n=$((n - 1)); continue ;;
	-T*) t=${a#-T}; continue ;;
	--timeout=*) t=${a#--timeout=}; continue ;;
	esac
	set -- "$@" "$a"
done
if [ -n "$t" ]; then
	/bin/busybox timeout "$t" /bin/busybox wget "$@"
	rc=$?
	if [ "$rc" = 143 ]; then
		echo "wget: timed out after $t seconds" >&2
		exit 1
	fi
	exit "$rc"
fi
exec /bin/busybox wget "$@"
`

// installAgent copies the agent binary into the root filesystem.
func installAgent(dir string, agent []byte) error {
	p := filepath.Join(dir, AgentInstallPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, agent, 0o755)
}

// sshdConfig allows root login with keys only.
const sshdConfig = "# Written by smolvm: root logs in with keys only.\n" +
	"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"

// debianProfile replaces Debian's /etc/profile with one that behaves the
// same but forks nothing in a non-interactive login shell: Debian's runs
// `id -u` twice, and every command run through the agent is a login shell
// (sh -lc), where each fork costs tens of milliseconds under TCG.
const debianProfile = `# /etc/profile: system-wide .profile for Bourne-compatible shells (written by smolvm).
PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PATH
if [ "${PS1-}" ]; then
  if [ "${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    if [ -f /etc/bash.bashrc ]; then
      . /etc/bash.bashrc
    fi
  elif [ "$(id -u)" -eq 0 ]; then
    PS1='# '
  else
    PS1='$ '
  fi
fi
if [ -d /etc/profile.d ]; then
  for i in /etc/profile.d/*.sh; do
    if [ -r "$i" ]; then
      . "$i"
    fi
  done
  unset i
fi
`

// rootProfile is Debian's /root/.profile without its `mesg n`, which only
// matters on a terminal and costs a fork in every login shell.
const rootProfile = `# ~/.profile: executed by Bourne-compatible login shells (written by smolvm).
if [ "${BASH-}" ] && [ -f ~/.bashrc ]; then
  . ~/.bashrc
fi
if [ -t 0 ]; then
  mesg n 2> /dev/null || true
fi
`

// defaultRootfs fills dir with Debian minbase plus packages (DefaultPackages
// for the default image), built by mmdebstrap from the host's own apt sources.
func defaultRootfs(ctx context.Context, dir string, sources, packages, users []string, agent []byte) error {
	args := []string{
		"--variant=minbase",
		"--include=" + strings.Join(packages, ","),
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-exclude=/usr/share/info/*",
		"--skip=cleanup/apt/lists",
		debianSuite, dir,
	}
	args = append(args, sources...)
	// mmdebstrap refuses a non-empty target: dir must not exist yet.
	if _, err := runTool(ctx, "", "mmdebstrap", args...); err != nil {
		return err
	}
	// The package lists are large and stale the moment the image is built.
	lists, _ := filepath.Glob(filepath.Join(dir, "var/lib/apt/lists/*_*"))
	for _, l := range lists {
		os.Remove(l)
	}
	// Host keys are generated at first boot, so clones do not share them.
	keys, _ := filepath.Glob(filepath.Join(dir, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		os.Remove(k)
	}
	if err := os.MkdirAll(filepath.Join(dir, "root/.ssh"), 0o700); err != nil {
		return err
	}
	files := etcFiles()
	files["etc/ssh/sshd_config.d/smolvm.conf"] = sshdConfig
	files["etc/profile.d/smolvm_path.sh"] = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
	files["etc/profile"] = debianProfile
	files["root/.profile"] = rootProfile
	if err := writeFiles(dir, files, 0o644); err != nil {
		return err
	}
	for i, u := range users {
		if err := addUser(dir, u, 1000+i); err != nil {
			return fmt.Errorf("add user %s: %w", u, err)
		}
	}
	return installAgent(dir, agent)
}

// addUser adds a login user with its own group and a home directory (from
// /etc/skel) to the Debian tree at root, as useradd would, without running
// anything inside it.
func addUser(root, name string, id int) error {
	home := "/home/" + name
	add := map[string]string{
		"etc/passwd":  fmt.Sprintf("%s:x:%d:%d::%s:/bin/bash\n", name, id, id, home),
		"etc/group":   fmt.Sprintf("%s:x:%d:\n", name, id),
		"etc/shadow":  name + ":!:19000:0:99999:7:::\n",
		"etc/gshadow": name + ":!::\n",
	}
	for f, line := range add {
		p := filepath.Join(root, f)
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) && (f == "etc/shadow" || f == "etc/gshadow") {
			continue
		}
		if err != nil {
			return err
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, append(b, line...), fi.Mode().Perm()); err != nil {
			return err
		}
	}
	h := filepath.Join(root, home)
	if err := os.MkdirAll(h, 0o755); err != nil {
		return err
	}
	skel := filepath.Join(root, "etc/skel")
	if ents, err := os.ReadDir(skel); err == nil {
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(skel, e.Name()))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(h, e.Name()), b, 0o644); err != nil {
				return err
			}
		}
	}
	if os.Geteuid() != 0 {
		return nil // not root: cannot give the files away (tests as a user)
	}
	return filepath.WalkDir(h, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, id, id)
	})
}

// dirUsage returns the bytes and inodes a directory tree needs.
func dirUsage(dir string) (bytes, inodes int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		info, err := d.Info()
		if err != nil {
			return err
		}
		bytes += (info.Size() + 4095) &^ 4095
		if d.IsDir() {
			bytes += 4096
		}
		return nil
	})
	return bytes, inodes, err
}

// makeExt4 writes dir into a new sparse ext4 image at img, sized to the
// content plus headroom. The UUID and hash seed derive from seed so that a
// given input yields the same filesystem identity.
func makeExt4(ctx context.Context, dir, img, seed string) error {
	used, inodes, err := dirUsage(dir)
	if err != nil {
		return fmt.Errorf("measure rootfs: %w", err)
	}
	// Headroom: a third of the content, at least 32 MiB, plus room for the
	// journal and metadata; rounded up to a MiB.
	size := used + max(used/3, 32<<20) + 16<<20 + inodes*256
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size rootfs image: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(seed))
	u := fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
	_, err = runTool(ctx, "", "mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-L", "smolvm-root",
		"-U", u, "-E", "hash_seed="+u+",root_owner=0:0", "-N", fmt.Sprint(inodes+inodes/2+1024), "-d", dir, img)
	if err != nil {
		return fmt.Errorf("make rootfs: %w", err)
	}
	if os.Geteuid() != 0 {
		// Files we wrote as a normal user belong to root in the guest.
		if err := chownTree(ctx, dir, img); err != nil {
			return err
		}
	}
	return nil
}

// chownTree makes every file of an ext4 image that came from dir owned by
// root, with debugfs (no mount needed).
func chownTree(ctx context.Context, dir, img string) error {
	var script strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		q := "/" + filepath.ToSlash(rel)
		if rel == "." {
			q = "/"
		}
		fmt.Fprintf(&script, "sif \"%s\" uid 0\nsif \"%s\" gid 0\n", q, q)
		return nil
	})
	if err != nil {
		return err
	}
	sf := img + ".debugfs"
	if err := os.WriteFile(sf, []byte(script.String()), 0o600); err != nil {
		return err
	}
	defer os.Remove(sf)
	if _, err := runTool(ctx, "", "debugfs", "-w", "-f", sf, img); err != nil {
		return fmt.Errorf("set rootfs owners: %w", err)
	}
	return nil
}
