package proto

import (
	"encoding/json"
	"fmt"
)

// Method names: every request the guest serves. Capabilities lists them.
const (
	// MethodExec runs a command; args ExecArgs, result ExecResult.
	MethodExec = "exec"
	// MethodUpload writes a file from ChanIn data; args UploadArgs.
	MethodUpload = "file.upload"
	// MethodDownload streams a file on ChanOut; args DownloadArgs, result DownloadResult.
	MethodDownload = "file.download"
	// MethodEnvSet sets persistent environment variables; args EnvSetArgs.
	MethodEnvSet = "env.set"
	// MethodEnvUnset removes persistent environment variables; args EnvUnsetArgs.
	MethodEnvUnset = "env.unset"
	// MethodEnvList lists persistent environment variables; result EnvListResult.
	MethodEnvList = "env.list"
	// MethodHealth reports the agent's version; result HealthResult.
	MethodHealth = "health"
	// MethodSync flushes guest file systems.
	MethodSync = "sync"
	// MethodPowerOff asks the guest to power off after answering.
	MethodPowerOff = "poweroff"
)

// Capabilities returns the methods this protocol version defines. A host
// checks a method's presence before relying on it: agents built before a
// method existed answer it with ErrUnsupported.
func Capabilities() []string {
	return []string{
		MethodExec, MethodUpload, MethodDownload,
		MethodEnvSet, MethodEnvUnset, MethodEnvList,
		MethodHealth, MethodSync, MethodPowerOff,
		MethodProcStart, MethodProcList, MethodProcAttach, MethodProcInput,
		MethodProcSignal, MethodProcWait,
		MethodFsStat, MethodFsList, MethodFsMkdir, MethodFsMove, MethodFsRemove, MethodFsWatch,
		MethodDirUpload, MethodDirDownload,
		MethodPortWait,
		MethodRestore,
		CapabilityPty, CapabilityControl, CapabilityBootSSHKey,
	}
}

// Request is the payload of a REQUEST frame.
type Request struct {
	// Method is one of the Method constants.
	Method string `json:"method"`
	// Args holds the method's JSON arguments.
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is the payload of a RESPONSE frame.
type Response struct {
	// Error is set when the request failed.
	Error *WireError `json:"error,omitempty"`
	// Result holds the method's JSON result.
	Result json.RawMessage `json:"result,omitempty"`
}

// ExecArgs are the arguments of MethodExec.
type ExecArgs struct {
	// Argv is the program and its arguments; exclusive with Shell.
	Argv []string `json:"argv,omitempty"`
	// Shell is a script run with `/bin/sh -lc`; exclusive with Argv.
	Shell string `json:"shell,omitempty"`
	// Env adds or overrides environment variables.
	Env map[string]string `json:"env,omitempty"`
	// Dir is the absolute working directory; empty means the user's home.
	Dir string `json:"dir,omitempty"`
	// User is a user name or numeric uid; empty means the agent's user.
	User string `json:"user,omitempty"`
	// TimeoutMillis kills the process group after this long; 0 means never.
	TimeoutMillis int64 `json:"timeout_ms,omitempty"`
	// Stdin reports whether the host sends stdin on ChanIn; otherwise the
	// command reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// Pty, if set, runs the command on a new pseudo-terminal; see PtyArgs.
	Pty *PtyArgs `json:"pty,omitempty"`
}

// PtyArgs ask for a command on a pseudo-terminal. The terminal is the
// controlling terminal of a new session whose leader is the command, so
// job control and Ctrl-C (byte 0x03 on ChanIn) work. Output (stdout and
// stderr merged by the terminal) arrives on ChanOut; ChanIn is the raw
// keyboard. With neither Argv nor Shell, the user's login shell runs as a
// login shell. The host resizes the terminal with CONTROL frames.
type PtyArgs struct {
	// Rows and Cols are the initial window size; 0 means 24x80.
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Term is the TERM variable; empty means "xterm-256color".
	Term string `json:"term,omitempty"`
}

// Control is the payload of a CONTROL frame: a change to a running stream.
type Control struct {
	// Resize sets a terminal's window size.
	Resize *WindowSize `json:"resize,omitempty"`
	// Signal sends a signal (a name like "SIGINT" or a number) to the
	// stream's process group.
	Signal string `json:"signal,omitempty"`
}

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	// Rows is the number of lines.
	Rows uint16 `json:"rows"`
	// Cols is the number of columns.
	Cols uint16 `json:"cols"`
}

// ExecResult is the result of MethodExec.
type ExecResult struct {
	// ExitCode is the exit status, or 128+N when killed by signal N.
	ExitCode int `json:"exit_code"`
	// Signal is the name of the killing signal (e.g. "SIGKILL"), if any.
	Signal string `json:"signal,omitempty"`
	// TimedOut reports whether the agent killed the command at its timeout.
	TimedOut bool `json:"timed_out,omitempty"`
}

// UploadArgs are the arguments of MethodUpload.
type UploadArgs struct {
	// Path is the absolute guest path to write.
	Path string `json:"path"`
	// Mode holds the permission bits of the file.
	Mode uint32 `json:"mode"`
	// MkdirParents reports whether missing parent directories are created.
	MkdirParents bool `json:"mkdir_parents,omitempty"`
}

// DownloadArgs are the arguments of MethodDownload.
type DownloadArgs struct {
	// Path is the absolute guest path to read.
	Path string `json:"path"`
}

// DownloadResult is the result of MethodDownload.
type DownloadResult struct {
	// Mode holds the file's permission bits.
	Mode uint32 `json:"mode"`
	// Size is the number of bytes sent.
	Size int64 `json:"size"`
}

// EnvSetArgs are the arguments of MethodEnvSet.
type EnvSetArgs struct {
	// Vars are the variables to set.
	Vars map[string]string `json:"vars"`
	// Replace reports whether Vars replace all persisted variables instead
	// of being merged into them.
	Replace bool `json:"replace,omitempty"`
}

// EnvUnsetArgs are the arguments of MethodEnvUnset.
type EnvUnsetArgs struct {
	// Keys are the variables to remove; missing ones are ignored.
	Keys []string `json:"keys"`
}

// EnvListResult is the result of MethodEnvList.
type EnvListResult struct {
	// Vars are the persisted variables.
	Vars map[string]string `json:"vars"`
}

// HealthResult is the result of MethodHealth.
type HealthResult struct {
	// Version is the agent's build version.
	Version string `json:"version"`
	// Protocol is the agent's protocol version.
	Protocol int `json:"protocol"`
	// Capabilities lists the methods the agent serves.
	Capabilities []string `json:"capabilities"`
	// UptimeMillis is how long the agent has been running.
	UptimeMillis int64 `json:"uptime_ms"`
}

// MarshalRequest encodes a request for method with args (nil for none).
func MarshalRequest(method string, args any) ([]byte, error) {
	req := Request{Method: method}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("%w: %s arguments: %v", ErrInvalidArgument, method, err)
		}
		req.Args = b
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s request: %v", ErrInvalidArgument, method, err)
	}
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("%w: %s request of %d bytes exceeds %d", ErrInvalidArgument, method, len(b), MaxPayload)
	}
	return b, nil
}

// MarshalResponse encodes a response carrying result, or err when err is not
// nil. A result that does not fit in a frame becomes an error response.
func MarshalResponse(result any, err error) []byte {
	var resp Response
	if err == nil && result != nil {
		b, merr := json.Marshal(result)
		if merr != nil {
			err = fmt.Errorf("%w: encode result: %v", ErrInternal, merr)
		} else {
			resp.Result = b
		}
	}
	if err != nil {
		resp.Error = ToWire(err)
	}
	b, merr := json.Marshal(resp)
	if merr != nil || len(b) > MaxPayload {
		b, _ = json.Marshal(Response{Error: &WireError{Kind: kindInternal, Message: "response too large"}})
	}
	return b
}

// UnmarshalResponse decodes a RESPONSE payload into result (which may be nil)
// and returns the error it carries, with its kind restored.
func UnmarshalResponse(p []byte, result any) error {
	var resp Response
	if err := json.Unmarshal(p, &resp); err != nil {
		return fmt.Errorf("%w: response: %v", ErrProtocol, err)
	}
	if resp.Error != nil {
		return FromWire(resp.Error)
	}
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("%w: result: %v", ErrProtocol, err)
		}
	}
	return nil
}
