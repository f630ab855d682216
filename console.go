package smolvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/consolelog"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// The serial console is capped on disk (issue 13). The VMM writes it to a
// pipe; a console logger process reads the pipe and writes logs/<id>.log,
// rotating to logs/<id>.log.1, so that both together stay under the VM's
// cap whatever the guest prints and with no smolvm process running. The
// logger is a helper process (helpers.go): this very program re-executed.
// It exits when the VMM (the pipe's last writer) is gone.

// DefaultConsoleLogMaxBytes is the default cap of a VM's console log on
// disk (8 MiB, the current file and its rotated half together).
const DefaultConsoleLogMaxBytes = consolelog.DefaultMaxBytes

// consoleLogPathEnv and consoleLogMaxEnv pass the log's path and cap to
// the logger. They are not on its command line, which names only the VM,
// so the logger never looks like a process of the data directory.
const (
	consoleLogPathEnv = "_SMOLVM_CONSOLE_LOG_PATH"
	consoleLogMaxEnv  = "_SMOLVM_CONSOLE_LOG_MAX"
)

// consoleLoggerMain is the body of the console logger helper: the pipe
// is standard input, the log file (made by the parent) standard output.
func consoleLoggerMain() int {
	n, err := strconv.ParseInt(os.Getenv(consoleLogMaxEnv), 10, 64)
	if err != nil || os.Getenv(consoleLogPathEnv) == "" {
		return 2
	}
	if err := consolelog.Run(os.Stdin, os.Stdout, os.Getenv(consoleLogPathEnv), n); err != nil {
		return 1
	}
	return 0
}

// startConsoleLogger starts the logger of the console log at path and
// returns the write end of its pipe, for the VMM; the caller closes it
// once the VMM has it. The logger runs in its own session and outlives
// this process.
func startConsoleLogger(id, path string, maxBytes int64) (*os.File, error) {
	// The file exists before the VMM runs, made here and not by the
	// logger, so a logger that starts late cannot recreate the log of a VM
	// deleted meanwhile.
	logf, err := consolelog.Create(path)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := helperCommand(helperConsoleLogger, []string{"smolvm-console-log", id},
		[]string{consoleLogPathEnv + "=" + path, consoleLogMaxEnv + "=" + strconv.FormatInt(maxBytes, 10)})
	cmd.Stdin, cmd.Stdout = r, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start the console logger: %w", err)
	}
	// Reap it if it ends while this process lives; otherwise init does.
	go cmd.Wait()
	return w, nil
}

// consoleMax returns the console cap of a VM with configuration cfg.
func (h *Host) consoleMax(cfg VMConfig) int64 {
	if cfg.ConsoleLogMaxBytes > 0 {
		return cfg.ConsoleLogMaxBytes
	}
	if h.opts.ConsoleLogMaxBytes > 0 {
		return h.opts.ConsoleLogMaxBytes
	}
	return DefaultConsoleLogMaxBytes
}

// validateConsoleMax checks VMConfig.ConsoleLogMaxBytes.
func validateConsoleMax(n int64) error {
	if n != 0 && (n < consolelog.MinMaxBytes || n > maxConsoleLogMaxBytes) {
		return configErr("console_log_max_bytes", fmt.Sprint(n), fmt.Sprintf("must be 0 (the default, 8 MiB) or between %d and %d", consolelog.MinMaxBytes, maxConsoleLogMaxBytes))
	}
	return nil
}

// maxConsoleLogMaxBytes bounds the console cap (1 GiB).
const maxConsoleLogMaxBytes = 1 << 30

// consoleTail returns the last n lines of a console log, read from its
// end and with terminal control sequences removed.
func consoleTail(path string, n int) string {
	b, err := consolelog.Tail(path, n, 64<<10)
	if err != nil {
		return ""
	}
	return string(consolelog.Sanitize(b))
}

// SanitizeTerminal returns guest text with terminal control sequences
// removed (escape sequences, control characters other than newline and
// tab), for printing to a terminal.
func SanitizeTerminal(b []byte) []byte { return consolelog.Sanitize(b) }

// markerWriter reports whether the ready marker went through it.
type markerWriter struct {
	tail  []byte
	found bool
}

func (m *markerWriter) Write(p []byte) (int, error) {
	if m.found {
		return len(p), nil
	}
	marker := []byte(bootparams.ReadyMarker)
	chunk := append(m.tail, p...)
	if bytes.Contains(chunk, marker) {
		m.found = true
		m.tail = nil
		return len(p), nil
	}
	// Keep enough to find a marker split across writes.
	m.tail = append(m.tail[:0], chunk[max(0, len(chunk)-len(marker)):]...)
	return len(p), nil
}

// waitMarker waits until the guest's ready marker appears on its console,
// reading only what is new (across rotations of the log), or until the
// VMM dies or ctx ends.
func waitMarker(ctx context.Context, logPath string, inst vmm.Instance) error {
	// Woken by the log's writes (inotify), not by polling: the marker is
	// seen as soon as the logger writes it.
	w := consolelog.NewWatch(logPath)
	defer w.Close()
	fl := consolelog.NewFollower(logPath)
	defer fl.Close()
	var m markerWriter
	for {
		fl.ReadNew(&m)
		if m.found {
			return nil
		}
		if !vmm.Alive(inst.PID, inst.PIDStart) {
			return fmt.Errorf("VMM process %d exited before the guest was ready: %w", inst.PID, vmm.ErrNotRunning)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		w.Wait(ctx, 50*time.Millisecond) // the bound: notice a dead VMM
	}
}
