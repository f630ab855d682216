package proto

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Error kinds. They survive the wire: an error returned by the guest can be
// checked on the host with errors.Is against these values.
var (
	// ErrInvalidArgument: the request is malformed (e.g. a relative guest path).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: a file, directory, user or executable does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the target exists and may not be replaced.
	ErrAlreadyExists = errors.New("already exists")
	// ErrPermission: the guest denied access.
	ErrPermission = errors.New("permission denied")
	// ErrTimeout: a deadline passed (a command's timeout, a context deadline).
	ErrTimeout = errors.New("timed out")
	// ErrCanceled: the request was canceled.
	ErrCanceled = errors.New("canceled")
	// ErrUnavailable: the channel to the agent is closed or the session was
	// replaced by another host process.
	ErrUnavailable = errors.New("agent unavailable")
	// ErrUnsupported: the agent does not implement the request.
	ErrUnsupported = errors.New("unsupported")
	// ErrResourceExhausted: a limit was reached (tracked processes, a size
	// bound on data from the guest).
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrProtocol: the peer violated the protocol.
	ErrProtocol = errors.New("protocol error")
	// ErrInternal: anything else.
	ErrInternal = errors.New("internal error")
)

// Wire names of the error kinds.
const (
	kindInvalidArgument = "invalid_argument"
	kindNotFound        = "not_found"
	kindAlreadyExists   = "already_exists"
	kindPermission      = "permission_denied"
	kindTimeout         = "timeout"
	kindCanceled        = "canceled"
	kindUnavailable     = "unavailable"
	kindUnsupported     = "unsupported"
	kindExhausted       = "resource_exhausted"
	kindProtocol        = "protocol"
	kindInternal        = "internal"
)

var kinds = []struct {
	name string
	err  error
}{
	{kindInvalidArgument, ErrInvalidArgument},
	{kindNotFound, ErrNotFound},
	{kindAlreadyExists, ErrAlreadyExists},
	{kindPermission, ErrPermission},
	{kindTimeout, ErrTimeout},
	{kindCanceled, ErrCanceled},
	{kindUnavailable, ErrUnavailable},
	{kindUnsupported, ErrUnsupported},
	{kindExhausted, ErrResourceExhausted},
	{kindProtocol, ErrProtocol},
	{kindInternal, ErrInternal},
}

// WireError is an error as carried in a Response.
type WireError struct {
	// Kind is the wire name of the error kind.
	Kind string `json:"kind"`
	// Message is the human-readable error text.
	Message string `json:"message"`
}

// Error is an error received from the peer: its kind plus the peer's message.
type Error struct {
	// Kind is one of the Err* kinds of this package.
	Kind error
	// Message is the peer's error text.
	Message string
}

// Error returns the peer's message.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the kind, so errors.Is(err, ErrNotFound) works.
func (e *Error) Unwrap() error { return e.Kind }

// KindOf classifies err as one of the Err* kinds. It returns nil for nil.
func KindOf(err error) error {
	if err == nil {
		return nil
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.err
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ErrNotFound
	case errors.Is(err, fs.ErrPermission):
		return ErrPermission
	case errors.Is(err, fs.ErrExist):
		return ErrAlreadyExists
	case errors.Is(err, context.DeadlineExceeded):
		return ErrTimeout
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR),
		errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG):
		return ErrInvalidArgument
	case errors.Is(err, syscall.EROFS):
		return ErrPermission
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return ErrResourceExhausted
	case errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EXDEV), errors.Is(err, syscall.ELOOP):
		return ErrInvalidArgument
	}
	return ErrInternal
}

// ToWire converts err for a Response.
func ToWire(err error) *WireError {
	kind := KindOf(err)
	for _, k := range kinds {
		if k.err == kind {
			return &WireError{Kind: k.name, Message: err.Error()}
		}
	}
	return &WireError{Kind: kindInternal, Message: err.Error()}
}

// FromWire converts a received WireError back into an error of its kind.
// Unknown kinds become ErrInternal.
func FromWire(w *WireError) error {
	for _, k := range kinds {
		if k.name == w.Kind {
			return &Error{Kind: k.err, Message: w.Message}
		}
	}
	return &Error{Kind: ErrInternal, Message: fmt.Sprintf("%s (%s)", w.Message, w.Kind)}
}
