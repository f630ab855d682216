// Package kmod loads kernel modules in the guest's init: it reads the load
// order the image builder wrote into the initramfs and loads each module
// with finit_module, passing the module's parameters from the kernel
// command line.
package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
)

// OrderFile is where the initramfs lists the modules to load, one absolute
// path per line, dependencies first. The image builder writes it; the init
// reads it.
const OrderFile = "/modules.order"

// Loader loads modules. The zero value loads for real from /.
type Loader struct {
	// Root is prefixed to every path read; empty means /.
	Root string
	// Cmdline is the kernel command line whose "module.param=value" words
	// are passed to each module; empty means read Root/proc/cmdline.
	Cmdline string
	// DryRun records what would be loaded in Loaded instead of loading.
	DryRun bool
	// Logf, if set, receives one line per module.
	Logf func(format string, args ...any)
	// Loaded lists "path params" for each module loaded (or, with DryRun,
	// that would be); filled in by Load.
	Loaded []string
}

// ReadOrder returns the module paths listed in an order file.
func ReadOrder(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mods []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			mods = append(mods, l)
		}
	}
	return mods, sc.Err()
}

// LoadOrder loads every module listed in Root/OrderFile. A missing order
// file means there is nothing to load. It keeps going after a failure and
// returns all failures joined.
func (l *Loader) LoadOrder() error {
	mods, err := ReadOrder(filepath.Join(l.root(), OrderFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read module order: %w", err)
	}
	var errs []error
	for _, m := range mods {
		if err := l.Load(m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Load loads one module file (path relative to Root) with the parameters
// the kernel command line gives it. A module that is already loaded is not
// an error.
func (l *Loader) Load(path string) error {
	name := ModuleName(path)
	params := bootparams.ModuleParams(l.cmdline(), name)
	l.Loaded = append(l.Loaded, strings.TrimSpace(path+" "+params))
	if l.Logf != nil {
		l.Logf("kmod: load %s %s", name, params)
	}
	if l.DryRun {
		return nil
	}
	f, err := os.Open(filepath.Join(l.root(), path))
	if err != nil {
		return fmt.Errorf("load module %s: %w", name, err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: finit_module: %w", name, err)
	}
	return nil
}

// ModuleName returns a module's canonical name from its file path:
// /lib/modules/x/kernel/drivers/virtio/virtio-mmio.ko -> virtio_mmio.
func ModuleName(path string) string {
	n := filepath.Base(path)
	n = strings.TrimSuffix(n, ".ko")
	return strings.ReplaceAll(n, "-", "_")
}

func (l *Loader) root() string {
	if l.Root == "" {
		return "/"
	}
	return l.Root
}

func (l *Loader) cmdline() string {
	if l.Cmdline != "" {
		return l.Cmdline
	}
	b, err := os.ReadFile(filepath.Join(l.root(), "proc/cmdline"))
	if err != nil {
		return ""
	}
	l.Cmdline = string(b)
	return l.Cmdline
}
