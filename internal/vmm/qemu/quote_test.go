package qemu

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// A comma in a path cannot end its option value and add options: every
// path put into an option string has its commas doubled.
func TestPathsWithCommasAreQuoted(t *testing.T) {
	evil := "/data,readonly=off,file=/etc/shadow"
	spec := vmm.Spec{ID: "v", Dir: evil + "/vms/v", Kernel: "/k", VCPUs: 1, MemoryMiB: 128,
		Disks: []vmm.Disk{{Path: evil + "/disk.ext4"}}, ConsoleLog: evil + "/console.log"}
	a := Args(spec, vmm.AccelTCG)
	joined := strings.Join(a, " ")
	for _, want := range []string{
		"file=/data,,readonly=off,,file=/etc/shadow/disk.ext4,format=raw",
		"file,id=console,path=/data,,readonly=off,,file=/etc/shadow/console.log",
		"socket,id=qmp,path=/data,,readonly=off,,file=/etc/shadow/vms/v/qmp.sock,server=on",
		"path=/data,,readonly=off,,file=/etc/shadow/vms/v/agent.sock,server=on",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("argv lacks %q:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "/data,readonly") {
		t.Errorf("an unquoted comma reached QEMU:\n%s", joined)
	}
	// With the console handed over as a pipe, QEMU writes it to its
	// standard output and opens no console file.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	spec.ConsoleFile = w
	a = Args(spec, vmm.AccelTCG)
	if i := slices.Index(a, "stdio,id=console,signal=off"); i < 0 || a[i-1] != "-chardev" || strings.Contains(strings.Join(a, " "), "console.log") {
		t.Errorf("console not on stdio: %v", a)
	}
	if consoleStdout(spec) != w {
		t.Error("QEMU's stdout is not the console pipe")
	}
	spec.ConsoleFile = nil
	if consoleStdout(spec) != nil {
		t.Error("no console pipe must mean a nil stdout, not a nil *os.File")
	}
	if optValue("a,b,,c") != "a,,b,,,,c" {
		t.Errorf("optValue = %q", optValue("a,b,,c"))
	}
}
