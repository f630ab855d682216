package proto

// Methods and capabilities added with background processes, terminals,
// file-system calls, directory transfers and port waits.
const (
	// MethodProcStart starts a background process; args ProcStartArgs,
	// result ProcStartResult.
	MethodProcStart = "proc.start"
	// MethodProcList streams one JSON ProcInfo per line on ChanOut, for
	// every process started with MethodProcStart and not yet reaped.
	MethodProcList = "proc.list"
	// MethodProcAttach replays a process's buffered output, then streams
	// it live on ChanOut and ChanErr until the process exits; with
	// ProcAttachArgs.Stdin, ChanIn data goes to its stdin. CONTROL frames
	// resize its terminal or signal it. Result: ProcExit.
	MethodProcAttach = "proc.attach"
	// MethodProcInput writes bytes to a process's stdin and may close it;
	// args ProcInputArgs.
	MethodProcInput = "proc.input"
	// MethodProcSignal signals a process's group or resizes its terminal;
	// args ProcSignalArgs.
	MethodProcSignal = "proc.signal"
	// MethodProcWait waits for a process to exit and reaps its entry;
	// args PidArgs, result ProcExit.
	MethodProcWait = "proc.wait"
	// MethodPortWait returns once a TCP socket in the guest listens on a
	// port; args PortWaitArgs.
	MethodPortWait = "net.port_wait"

	// CapabilityPty says the agent runs commands on terminals (ExecArgs.Pty).
	CapabilityPty = "exec.pty"
	// CapabilityControl says the agent obeys CONTROL frames.
	CapabilityControl = "frame.control"
	// CapabilityBootSSHKey says the guest's init writes the key given on
	// the kernel command line (bootparams.KeySSHKey) to root's
	// authorized_keys before it prints the ready marker.
	CapabilityBootSSHKey = "boot.sshkey"
)

// ProcStartArgs are the arguments of MethodProcStart.
type ProcStartArgs struct {
	// Exec describes the command, as for MethodExec. Exec.Stdin reports
	// whether the process gets a stdin pipe (fed by MethodProcInput and
	// attachments); otherwise it reads /dev/null. Exec.TimeoutMillis kills
	// the process group after that long.
	Exec ExecArgs `json:"exec"`
	// Tag is a free label the host chooses, reported by MethodProcList.
	Tag string `json:"tag,omitempty"`
	// BufferBytes is the size of each output ring buffer; 0 means the
	// agent's default (1 MiB).
	BufferBytes int `json:"buffer_bytes,omitempty"`
}

// ProcStartResult is the result of MethodProcStart.
type ProcStartResult struct {
	// Pid is the process id in the guest.
	Pid int `json:"pid"`
}

// ProcInfo describes a background process (one line of MethodProcList).
type ProcInfo struct {
	// Pid is the process id in the guest.
	Pid int `json:"pid"`
	// Argv is the command as started (a shell command shows as
	// [shell, "-lc", script]).
	Argv []string `json:"argv"`
	// Tag is the label given at start.
	Tag string `json:"tag,omitempty"`
	// StartUnixNano is the start time.
	StartUnixNano int64 `json:"start_ns"`
	// Running reports whether the process has not exited yet.
	Running bool `json:"running"`
	// Pty reports whether the process runs on a terminal.
	Pty bool `json:"pty,omitempty"`
	// Exit is how it ended, once Running is false.
	Exit *ExecResult `json:"exit,omitempty"`
}

// PidArgs name a background process.
type PidArgs struct {
	// Pid is the process id returned by MethodProcStart.
	Pid int `json:"pid"`
}

// ProcAttachArgs are the arguments of MethodProcAttach.
type ProcAttachArgs struct {
	// Pid is the process id returned by MethodProcStart.
	Pid int `json:"pid"`
	// Stdin reports whether the host sends stdin on ChanIn. EOF on ChanIn
	// ends the attachment's input without closing the process's stdin.
	Stdin bool `json:"stdin,omitempty"`
	// NoReplay skips the buffered output: only output produced after the
	// attachment is streamed.
	NoReplay bool `json:"no_replay,omitempty"`
}

// ProcExit is the result of MethodProcAttach and MethodProcWait.
type ProcExit struct {
	// Exited reports whether the process has exited; false when an
	// attachment ended first (canceled).
	Exited bool `json:"exited"`
	// Result is how it ended, when Exited.
	Result ExecResult `json:"result"`
}

// ProcInputArgs are the arguments of MethodProcInput.
type ProcInputArgs struct {
	// Pid is the process id returned by MethodProcStart.
	Pid int `json:"pid"`
	// Data is written to the process's stdin (base64 in JSON; at most
	// MaxInputBytes).
	Data []byte `json:"data,omitempty"`
	// Close closes the process's stdin after Data.
	Close bool `json:"close,omitempty"`
}

// MaxInputBytes bounds ProcInputArgs.Data so a request fits in a frame.
const MaxInputBytes = 32 << 10

// ProcSignalArgs are the arguments of MethodProcSignal.
type ProcSignalArgs struct {
	// Pid is the process id returned by MethodProcStart.
	Pid int `json:"pid"`
	// Signal is a name ("SIGTERM", "TERM") or a number ("15"); may be
	// empty when Resize is set.
	Signal string `json:"signal,omitempty"`
	// Resize sets the window size of the process's terminal.
	Resize *WindowSize `json:"resize,omitempty"`
}

// PortWaitArgs are the arguments of MethodPortWait.
type PortWaitArgs struct {
	// Port is the TCP port, 1-65535.
	Port int `json:"port"`
	// IntervalMillis is the polling interval; 0 means 50 ms.
	IntervalMillis int `json:"interval_ms,omitempty"`
}
