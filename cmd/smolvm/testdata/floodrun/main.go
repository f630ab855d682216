// Command floodrun is a helper of the hostile-guest test: a separate host
// process that runs one command through the SDK's Run, whose output the
// guest makes huge, and reports what it kept. The test reads this
// process's peak RSS and CPU time from the kernel.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm-go/smolvm"
)

func main() {
	dataDir := flag.String("data-dir", "", "data directory")
	hostDir := flag.String("host-dir", "", "host directory")
	id := flag.String("vm", "", "VM id")
	n := flag.Int64("bytes", 1<<30, "bytes of output the guest prints")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out := map[string]any{}
	err := run(ctx, *dataDir, *hostDir, *id, *n, out)
	if err != nil {
		out["error"] = err.Error()
	}
	out["vm_hwm_kib"] = peakRSS()
	json.NewEncoder(os.Stdout).Encode(out)
}

// peakRSS returns this process's peak resident set (VmHWM) in KiB. The
// kernel's rusage of a child is no good here: its maxrss includes the
// memory of the parent it was forked from, up to the exec.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return -1
}

func run(ctx context.Context, dataDir, hostDir, id string, n int64, out map[string]any) error {
	h, err := smolvm.Open(ctx, smolvm.HostOptions{DataDir: dataDir, HostDir: hostDir})
	if err != nil {
		return err
	}
	defer h.Close()
	vm, err := h.Get(ctx, id)
	if err != nil {
		return err
	}
	defer vm.Release()
	start := time.Now()
	res, err := vm.Run(ctx, fmt.Sprintf("head -c %d /dev/zero; echo done >&2", n))
	out["seconds"] = time.Since(start).Seconds()
	out["exit_code"] = res.ExitCode
	out["stdout_len"] = len(res.Stdout)
	out["stderr"] = res.Stderr
	out["truncated"] = res.Truncated
	return err
}
