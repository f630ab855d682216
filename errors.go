package smolvm

import (
	"errors"
	"fmt"
)

// Error kinds. Every error the SDK returns wraps exactly one of them, so
// callers branch with errors.Is and never on message text.
var (
	// ErrNotFound means the VM, image or file does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists means a VM with that id (or a resource with that name) exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidConfig means a configuration value broke a rule; see ConfigError.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrNetwork means a TAP device, address, NAT rule or port forward failed.
	ErrNetwork = errors.New("network error")
	// ErrBackend means the VMM (QEMU or Firecracker) failed or is unusable.
	ErrBackend = errors.New("backend error")
	// ErrTimeout means an operation ran past its deadline.
	ErrTimeout = errors.New("timed out")
	// ErrCommandUnavailable means the guest cannot run commands (not running, agent gone).
	ErrCommandUnavailable = errors.New("command channel unavailable")
	// ErrImage means an image is missing, invalid or could not be built.
	ErrImage = errors.New("image error")
	// ErrState means the VM is not in a state that allows the operation.
	ErrState = errors.New("invalid state")
)

// ConfigError reports a configuration value that broke a rule. It matches
// ErrInvalidConfig with errors.Is.
type ConfigError struct {
	// Field is the JSON name of the offending field, e.g. "guest_ip".
	Field string
	// Value is the rejected value, rendered for humans.
	Value string
	// Rule says what the value must be.
	Rule string
}

// Error implements error.
func (e *ConfigError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("invalid %s: %s", e.Field, e.Rule)
	}
	return fmt.Sprintf("invalid %s %q: %s", e.Field, e.Value, e.Rule)
}

// Is reports whether target is ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

func configErr(field, value, rule string) error {
	return &ConfigError{Field: field, Value: value, Rule: rule}
}

// opError attaches an operation, a VM id and an error kind to a cause.
type opError struct {
	op   string
	id   string
	kind error
	err  error
}

func (e *opError) Error() string {
	msg := e.op
	if e.id != "" {
		msg += " " + e.id
	}
	if e.err != nil {
		return msg + ": " + e.err.Error()
	}
	return msg + ": " + e.kind.Error()
}

func (e *opError) Unwrap() []error {
	if e.err == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.err}
}

// wrapErr returns err annotated with op and id, tagged with kind unless err
// already carries one of the SDK's kinds.
func wrapErr(op, id string, kind, err error) error {
	if err == nil {
		return nil
	}
	for _, k := range []error{ErrNotFound, ErrAlreadyExists, ErrInvalidConfig, ErrNetwork, ErrBackend, ErrTimeout, ErrCommandUnavailable, ErrImage, ErrState} {
		if errors.Is(err, k) {
			kind = k
			break
		}
	}
	return &opError{op: op, id: id, kind: kind, err: err}
}
