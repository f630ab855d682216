package smolvm

import (
	"context"
	"errors"
	"fmt"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/network"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Error kinds. Every error the SDK returns matches exactly one of them with
// errors.Is (an error joining several failures matches the kind of each),
// so callers branch on kinds and never on message text. The CLI maps them
// to exit codes.
var (
	// ErrNotFound means the VM, image, snapshot or file does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists means a VM with that id (or a resource with that name) exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidConfig means a configuration value broke a rule; see ConfigError.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrNetwork means a TAP device, address, NAT rule or port forward failed.
	ErrNetwork = errors.New("network error")
	// ErrBackend means the VMM (QEMU or Firecracker) failed.
	ErrBackend = errors.New("backend error")
	// ErrTimeout means an operation ran past its deadline.
	ErrTimeout = errors.New("timed out")
	// ErrCommandUnavailable means the guest cannot run commands (agent gone or not answering).
	ErrCommandUnavailable = errors.New("command channel unavailable")
	// ErrImage means an image is invalid or could not be built.
	ErrImage = errors.New("image error")
	// ErrState means the VM is not in a state that allows the operation.
	ErrState = errors.New("invalid state")
	// ErrUnavailable means the host lacks something the operation needs:
	// a VMM binary, /dev/net/tun, hardware KVM, a privilege.
	ErrUnavailable = errors.New("unavailable on this host")
)

// kinds lists the SDK's error kinds.
var kinds = []error{ErrNotFound, ErrAlreadyExists, ErrInvalidConfig, ErrNetwork, ErrBackend,
	ErrTimeout, ErrCommandUnavailable, ErrImage, ErrState, ErrUnavailable}

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

// kindOf is the one mapping from errors to SDK kinds: an SDK kind the error
// already carries wins, then the internal packages' kinds (store, image,
// network, vmm, agent protocol, context), else def.
func kindOf(err, def error) error {
	for _, k := range kinds {
		if errors.Is(err, k) {
			return k
		}
	}
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, image.ErrNotFound), errors.Is(err, proto.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, store.ErrExists), errors.Is(err, network.ErrPortInUse), errors.Is(err, proto.ErrAlreadyExists):
		return ErrAlreadyExists
	case errors.Is(err, store.ErrExhausted):
		return ErrNetwork
	case errors.Is(err, proto.ErrInvalidArgument), errors.Is(err, network.ErrInvalid), errors.Is(err, image.ErrInvalidSpec):
		return ErrInvalidConfig
	case errors.Is(err, vmm.ErrUnavailable), errors.Is(err, network.ErrNoTun), errors.Is(err, network.ErrNoPermission), errors.Is(err, image.ErrToolMissing):
		return ErrUnavailable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, proto.ErrTimeout):
		return ErrTimeout
	case errors.Is(err, proto.ErrUnavailable):
		return ErrCommandUnavailable
	}
	return def
}

// opError attaches an operation, a VM id and exactly one error kind to a
// cause. Its message is "op id: cause".
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

// Is reports whether target is the error's kind, or matches its cause
// (other than by another SDK kind: an error has one kind).
func (e *opError) Is(target error) bool { return target == e.kind }

// Unwrap returns the cause behind a mask that hides its SDK kinds.
func (e *opError) Unwrap() error { return maskKinds{e.err} }

// maskKinds hides the SDK kinds of a wrapped cause, so the outer opError's
// kind is the only one errors.Is finds, while other targets (a
// *ConfigError with errors.As, os.ErrNotExist, an internal kind) stay
// reachable.
type maskKinds struct{ err error }

func (m maskKinds) Error() string { return m.err.Error() }

func (m maskKinds) Is(target error) bool {
	for _, k := range kinds {
		if target == k {
			return false
		}
	}
	return errors.Is(m.err, target)
}

func (m maskKinds) As(target any) bool { return errors.As(m.err, target) }

// wrapErr returns err annotated with op and id, with the kind kindOf finds
// in it, or def. To report several failures with their kinds, join errors
// that were wrapped one by one.
func wrapErr(op, id string, def, err error) error {
	if err == nil {
		return nil
	}
	return &opError{op: op, id: id, kind: kindOf(err, def), err: err}
}
