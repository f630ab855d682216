package image

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/smolvm-go/smolvm/internal/guest/kmod"
)

// initramfsSpec is what goes into the initramfs.
type initramfsSpec struct {
	Agent      []byte     // the static agent, stored as /init
	ModulesDir string     // unpacked /lib/modules/<version>, or "" for none
	Version    string     // kernel version, the directory name under /lib/modules
	Modules    []string   // module names in load order
	Set        *ModuleSet // where Modules' files are
}

// initramfsEntries lists the archive's files: /init, the console node the
// kernel opens before running init, mount points, the modules and the order
// file the init loads them from.
func initramfsEntries(s initramfsSpec) ([]cpioEntry, error) {
	entries := []cpioEntry{
		{Name: "init", Mode: cpioReg | 0o755, Data: s.Agent},
		{Name: "dev/console", Mode: cpioChar | 0o600, Major: 5, Minor: 1},
		{Name: "dev", Mode: cpioDir | 0o755},
		{Name: "proc", Mode: cpioDir | 0o555},
		{Name: "sys", Mode: cpioDir | 0o555},
		{Name: "newroot", Mode: cpioDir | 0o755},
		{Name: "tmp", Mode: cpioDir | 0o1777},
	}
	var order strings.Builder
	for _, m := range s.Modules {
		rel := s.Set.Path[m]
		data, err := os.ReadFile(filepath.Join(s.ModulesDir, rel))
		if err != nil {
			return nil, fmt.Errorf("read module %s: %w", m, err)
		}
		if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
			return nil, fmt.Errorf("module %s: not an uncompressed .ko (compressed modules are not supported)", rel)
		}
		p := path.Join("lib/modules", s.Version, rel)
		entries = append(entries, cpioEntry{Name: p, Mode: cpioReg | 0o644, Data: data})
		order.WriteString("/" + p + "\n")
	}
	entries = append(entries, cpioEntry{Name: strings.TrimPrefix(kmod.OrderFile, "/"), Mode: cpioReg | 0o644, Data: []byte(order.String())})
	return entries, nil
}

// buildInitramfs returns the compressed initramfs for s.
func buildInitramfs(s initramfsSpec, c Compression) ([]byte, error) {
	entries, err := initramfsEntries(s)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := writeCPIO(&buf, entries); err != nil {
		return nil, err
	}
	return compress(c, buf.Bytes())
}
