package qemu

import (
	"io"
	"strings"

	"github.com/smolvm-go/smolvm/internal/vmm"
)

// optValue escapes a value for a QEMU option string ("key=value,..."):
// QEMU reads ",," as a literal comma, so a data directory or disk path
// holding a comma cannot end its value and add options of its own
// (",readonly=off", ",script=...").
func optValue(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// consoleChardev returns the -chardev option of the serial console: QEMU's
// standard output when the caller hands over the console as an open file
// (the pipe of the capping logger), else the file console (a quoted path
// or a /dev/fdset name).
func consoleChardev(spec vmm.Spec, console string) string {
	if spec.ConsoleFile != nil {
		// signal=off: a ^C in the guest's output is not a signal to QEMU.
		return "stdio,id=console,signal=off"
	}
	return "file,id=console,path=" + console
}

// consoleStdout is QEMU's standard output: the console pipe, or nothing
// (a nil interface, not a nil *os.File).
func consoleStdout(spec vmm.Spec) io.Writer {
	if spec.ConsoleFile == nil {
		return nil
	}
	return spec.ConsoleFile
}
