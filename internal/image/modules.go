package image

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// GuestModules are the kernel modules the guest init needs, in the order it
// wants them: virtio transports (mmio for microvm and Firecracker, pci for
// q35), the block, net and console drivers, vsock over virtio, and virtio-fs
// for host folders (Debian's cloud kernel has no 9p). Modules
// the kernel has built in (ext4 in Debian's cloud kernel) are skipped, as are
// their dependencies' duplicates.
var GuestModules = []string{
	"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio_console",
	"vsock", "vmw_vsock_virtio_transport", "ext4", "virtio_balloon",
	"virtiofs", // host folders (VMConfig.Mounts)
}

// errModuleMissing is wrapped when a wanted module is neither a module file
// nor built in.
var errModuleMissing = errors.New("kernel module not found")

// errModuleCycle is wrapped when module dependencies form a cycle.
var errModuleCycle = errors.New("kernel module dependency cycle")

// ModuleSet is a kernel's modules and their direct dependencies.
type ModuleSet struct {
	// Path maps a module name (underscores, no suffix) to its path relative
	// to /lib/modules/<version>.
	Path map[string]string
	// Deps maps a module name to the names of modules it needs loaded first.
	Deps map[string][]string
	// Builtin holds the names of modules compiled into the kernel.
	Builtin map[string]bool
}

// moduleName turns a module path into its canonical name:
// kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko -> vmw_vsock_virtio_transport.
func moduleName(path string) string {
	n := filepath.Base(path)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		n = strings.TrimSuffix(n, ext)
	}
	n = strings.TrimSuffix(n, ".ko")
	return strings.ReplaceAll(n, "-", "_")
}

// ParseModulesDep reads depmod's modules.dep format ("path: dep-path ...",
// dependencies listed transitively) into a ModuleSet.
func ParseModulesDep(r io.Reader) (*ModuleSet, error) {
	ms := &ModuleSet{Path: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: missing ':'", n)
		}
		name := moduleName(mod)
		ms.Path[name] = mod
		ms.Deps[name] = nil
		for _, d := range strings.Fields(deps) {
			ms.Deps[name] = append(ms.Deps[name], moduleName(d))
		}
	}
	return ms, sc.Err()
}

// ReadModules scans an unpacked /lib/modules/<version> directory. It reads
// modules.dep when present and otherwise builds the same information from
// each module's .modinfo "depends=" field (what depmod would compute), so
// no host kmod tools are needed. modules.builtin, if present, lists the
// built-in modules.
func ReadModules(dir string) (*ModuleSet, error) {
	var ms *ModuleSet
	if f, err := os.Open(filepath.Join(dir, "modules.dep")); err == nil {
		ms, err = ParseModulesDep(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	} else {
		ms = &ModuleSet{Path: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{}}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(p, ".ko") {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			deps, err := modinfoDepends(p)
			if err != nil {
				return fmt.Errorf("module %s: %w", rel, err)
			}
			name := moduleName(rel)
			ms.Path[name] = rel
			ms.Deps[name] = deps
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("scan modules: %w", err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			ms.Builtin[moduleName(l)] = true
		}
	}
	return ms, nil
}

// modinfoDepends returns the "depends=" list from a module's .modinfo section.
func modinfoDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, moduleName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// Resolve returns the modules to load for the wanted names, dependencies
// first, each once. Built-in modules are skipped. A wanted or needed module
// that is neither present nor built in, or a dependency cycle, is an error.
func (ms *ModuleSet) Resolve(want []string) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = moduleName(name)
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("%w: %s", errModuleCycle, strings.Join(append(chain, name), " -> "))
		}
		if _, ok := ms.Path[name]; !ok {
			if ms.Builtin[name] {
				state[name] = done
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("%w: %s (needed by %s)", errModuleMissing, name, chain[len(chain)-1])
			}
			return fmt.Errorf("%w: %s", errModuleMissing, name)
		}
		state[name] = visiting
		chain = append(slices.Clip(chain), name)
		for _, d := range ms.Deps[name] {
			if err := visit(d, chain); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range want {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
