package smolvm

import (
	"os"
	"os/exec"
)

// Helper processes. Two jobs outlive the SDK call that needs them: the
// console logger of each VM (console.go) and the DNS forwarder supervisor
// (dnsforwarder.go). Both are this very program re-executed through
// /proc/self/exe with helperEnv naming the job: the init function below
// runs the job and exits before main, so the CLI, the server, the
// containerd shim and any other program using the SDK need no separate
// binary and no smolvm in PATH. /proc/self/exe is the running executable
// even if its file was replaced or removed since it started.
//
// A program that imports this package therefore starts differently only
// when helperEnv is set in its environment, which the SDK sets for its own
// helpers alone (and never passes on to a VMM or a guest).

// helperEnv names the helper job a re-executed process runs.
const helperEnv = "_SMOLVM_HELPER"

// The helper jobs.
const (
	helperConsoleLogger = "console-log"
	helperDNSForwarder  = "dns-forwarder"
)

func init() {
	job, ok := os.LookupEnv(helperEnv)
	if !ok {
		return
	}
	switch job {
	case helperConsoleLogger:
		os.Exit(consoleLoggerMain())
	case helperDNSForwarder:
		os.Exit(dnsForwarderMain(os.Args[1:]))
	default:
		os.Stderr.WriteString("smolvm: unknown helper job " + job + "\n")
		os.Exit(2)
	}
}

// helperCommand returns the command that runs job in a re-executed copy of
// this program, with argv as its command line (for ps and for process
// recognition), env added to a minimal environment, / as its directory
// and no standard streams unless the caller sets them.
func helperCommand(job string, argv, env []string) *exec.Cmd {
	return &exec.Cmd{
		Path: "/proc/self/exe",
		Args: argv,
		Env:  append([]string{helperEnv + "=" + job, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...),
		Dir:  "/",
	}
}
