package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kernelMetaPackage is the Debian metapackage whose dependency is the
// current cloud kernel.
const kernelMetaPackage = "linux-image-cloud-amd64"

// debPackage is one Debian binary package as apt knows it.
type debPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// runTool runs a host program and returns its stdout; the error carries the
// tail of its stderr.
func runTool(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	path, err := LookTool(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", name, ctx.Err())
		}
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(stderr.String(), 800))
	}
	return stdout.Bytes(), nil
}

// tail returns the last n bytes of s, trimmed.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// apt resolves and downloads Debian packages with the host's apt tools and
// configuration, refreshing the package lists once if they are empty.
type apt struct {
	progress func(stage string, done, total int64)
	updated  bool
	// memoDir remembers apt-cache answers while the package lists stay
	// the same (see memoGet); empty remembers nothing.
	memoDir string
}

// show returns the candidate version and .deb checksum of a package.
func (a *apt) show(ctx context.Context, name string) (debPackage, error) {
	out, err := a.query(ctx, "show", "--no-all-versions", name)
	if err != nil {
		return debPackage{}, err
	}
	return parseShow(name, out)
}

// showNoUpdate is show without refreshing the package lists.
func (a *apt) showNoUpdate(ctx context.Context, name string) (debPackage, error) {
	args := []string{"show", "--no-all-versions", name}
	out, ok := a.memoGet(args)
	if !ok {
		var err error
		if out, err = runTool(ctx, "", "apt-cache", args...); err != nil {
			return debPackage{}, err
		}
		a.memoPut(args, out)
	}
	return parseShow(name, out)
}

// parseShow reads apt-cache show's output.
func parseShow(name string, out []byte) (debPackage, error) {
	p := debPackage{Name: name}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		switch k {
		case "Version":
			p.Version = v
		case "SHA256":
			p.SHA256 = v
		}
	}
	if p.Version == "" {
		return debPackage{}, fmt.Errorf("apt-cache show %s: no candidate version", name)
	}
	return p, nil
}

// kernelPackage resolves the metapackage to the real kernel package, e.g.
// linux-image-6.1.0-56-cloud-amd64.
func (a *apt) kernelPackage(ctx context.Context) (debPackage, error) {
	out, err := a.query(ctx, "depends", kernelMetaPackage)
	if err != nil {
		return debPackage{}, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && strings.TrimPrefix(f[0], "|") == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return a.show(ctx, f[1])
		}
	}
	return debPackage{}, fmt.Errorf("apt-cache depends %s: no linux-image-* dependency", kernelMetaPackage)
}

// query runs apt-cache; when the package lists are empty it runs
// apt-get update once (root only) and retries.
func (a *apt) query(ctx context.Context, args ...string) ([]byte, error) {
	if out, ok := a.memoGet(args); ok {
		return out, nil
	}
	out, err := runTool(ctx, "", "apt-cache", args...)
	if err == nil && len(bytes.TrimSpace(out)) > 0 {
		a.memoPut(args, out)
		return out, nil
	}
	if a.updated || ctx.Err() != nil {
		return out, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("apt-cache %s failed and the package lists cannot be refreshed without root (run apt-get update): %w",
			strings.Join(args, " "), err)
	}
	a.report("apt-get update (package lists empty)", 0, 1)
	if _, uerr := runTool(ctx, "", "apt-get", "update"); uerr != nil {
		return nil, fmt.Errorf("refresh package lists: %w", uerr)
	}
	a.report("apt-get update (package lists empty)", 1, 1)
	a.updated = true
	return a.query(ctx, args...)
}

// download fetches name=version into dir and unpacks it into dir/root,
// returning the .deb's path.
func (a *apt) download(ctx context.Context, p debPackage, dir string) (string, error) {
	args := []string{"download"}
	if os.Geteuid() == 0 {
		// apt drops to _apt for downloads, which cannot write our private
		// temp dir; as root, download as root instead of warning.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	args = append(args, p.Name+"="+p.Version)
	if _, err := runTool(ctx, dir, "apt-get", args...); err != nil {
		return "", fmt.Errorf("download %s: %w", p.Name, err)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, p.Name+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("download %s: expected one .deb in %s, found %d", p.Name, dir, len(debs))
	}
	return debs[0], nil
}

// unpack extracts a .deb's files into dst with dpkg-deb -x.
func unpack(ctx context.Context, deb, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if _, err := runTool(ctx, "", "dpkg-deb", "-x", deb, dst); err != nil {
		return fmt.Errorf("unpack %s: %w", filepath.Base(deb), err)
	}
	return nil
}

func (a *apt) report(stage string, done, total int64) {
	if a.progress != nil {
		a.progress(stage, done, total)
	}
}

// debianSources returns the host's apt sources for suite (and its -updates
// and -security suites) as one-line "deb [signed-by=...] URI SUITE COMPONENTS"
// entries, read from /etc/apt/sources.list and /etc/apt/sources.list.d, so
// images come from the same mirror the host uses.
func debianSources(root, suite string) ([]string, error) {
	var files []string
	if _, err := os.Stat(filepath.Join(root, "etc/apt/sources.list")); err == nil {
		files = append(files, filepath.Join(root, "etc/apt/sources.list"))
	}
	for _, ext := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join(root, "etc/apt/sources.list.d", ext))
		files = append(files, m...)
	}
	var out []string
	seen := map[string]bool{}
	add := func(opts, uri, s string, comps []string) {
		if s != suite && !strings.HasPrefix(s, suite+"-") && !strings.HasPrefix(s, suite+"/") {
			return
		}
		line := "deb " + opts + uri + " " + s + " " + strings.Join(comps, " ")
		if !seen[line] {
			seen[line] = true
			out = append(out, line)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read apt sources: %w", err)
		}
		if strings.HasSuffix(f, ".sources") {
			for _, stanza := range strings.Split(string(b), "\n\n") {
				fields := deb822(stanza)
				if !strings.Contains(" "+fields["Types"]+" ", " deb ") || fields["Enabled"] == "no" {
					continue
				}
				opts := ""
				if sb := fields["Signed-By"]; sb != "" && !strings.Contains(sb, "\n") {
					opts = "[signed-by=" + sb + "] "
				}
				for _, uri := range strings.Fields(fields["URIs"]) {
					for _, s := range strings.Fields(fields["Suites"]) {
						add(opts, uri, s, strings.Fields(fields["Components"]))
					}
				}
			}
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			line, _, _ = strings.Cut(line, "#")
			f := strings.Fields(line)
			if len(f) < 3 || f[0] != "deb" {
				continue
			}
			f = f[1:]
			opts := ""
			if strings.HasPrefix(f[0], "[") {
				for i, w := range f {
					if strings.HasSuffix(w, "]") {
						opts = strings.Join(f[:i+1], " ") + " "
						f = f[i+1:]
						break
					}
				}
			}
			if len(f) >= 2 {
				add(opts, f[0], f[1], f[2:])
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no apt source for suite %q in %s/etc/apt/sources.list(.d)", suite, root)
	}
	return out, nil
}

// deb822 parses one stanza of a deb822 .sources file (comments dropped,
// continuation lines joined).
func deb822(stanza string) map[string]string {
	m := map[string]string{}
	var last string
	for _, line := range strings.Split(stanza, "\n") {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && last != "" {
			m[last] += "\n" + strings.TrimSpace(line)
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = strings.TrimSpace(k)
		m[last] = strings.TrimSpace(v)
	}
	return m
}

// cachedDownload returns a .deb from <cacheDir>/.debs, downloading it with
// apt when it is missing or its checksum differs from apt's. Older
// versions of the same package are removed.
func (a *apt) cachedDownload(ctx context.Context, cacheDir string, p debPackage) (string, error) {
	dir := filepath.Join(cacheDir, ".debs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	want := filepath.Join(dir, p.Name+"_"+strings.ReplaceAll(p.Version, ":", "%3a")+"_amd64.deb")
	if fi, err := fileInfo(want); err == nil && (p.SHA256 == "" || fi.SHA256 == p.SHA256) {
		return want, nil
	}
	tmp, err := os.MkdirTemp(dir, ".dl-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	deb, err := a.download(ctx, p, tmp)
	if err != nil {
		return "", err
	}
	if p.SHA256 != "" {
		fi, err := fileInfo(deb)
		if err != nil {
			return "", err
		}
		if fi.SHA256 != p.SHA256 {
			return "", fmt.Errorf("download %s: checksum %s, apt says %s", p.Name, fi.SHA256, p.SHA256)
		}
	}
	old, _ := filepath.Glob(filepath.Join(dir, p.Name+"_*.deb"))
	for _, o := range old {
		if o != want {
			os.Remove(o)
		}
	}
	if err := os.Rename(deb, want); err != nil {
		return "", err
	}
	return want, nil
}
