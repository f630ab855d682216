// Package apierr is the one mapping between the SDK's error kinds, the HTTP
// API's error kinds (the "kind" of an error body) and HTTP status codes,
// shared by the server and the Go client so a kind survives the wire.
package apierr

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/smolvm-go/smolvm"
)

// Kinds of the HTTP API that have no SDK counterpart.
const (
	// BadRequest is a malformed request: bad JSON, unknown fields, wrong types.
	BadRequest = "bad_request"
	// Unauthorized is a missing, wrong or revoked API key.
	Unauthorized = "unauthorized"
	// TooLarge is a request body over the limit.
	TooLarge = "too_large"
	// LimitExceeded is a key over its limit of running sandboxes.
	LimitExceeded = "limit_exceeded"
	// Internal is any other failure.
	Internal = "internal"
)

// kind ties an SDK error kind to its API name and status.
type kind struct {
	err    error
	name   string
	status int
}

var table = []kind{
	{smolvm.ErrNotFound, "not_found", http.StatusNotFound},
	{smolvm.ErrAlreadyExists, "already_exists", http.StatusConflict},
	{smolvm.ErrInvalidConfig, "invalid_config", http.StatusUnprocessableEntity},
	{smolvm.ErrState, "invalid_state", http.StatusConflict},
	{smolvm.ErrTimeout, "timeout", http.StatusGatewayTimeout},
	{smolvm.ErrCommandUnavailable, "command_unavailable", http.StatusServiceUnavailable},
	{smolvm.ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
	{smolvm.ErrNetwork, "network", http.StatusInternalServerError},
	{smolvm.ErrBackend, "backend", http.StatusInternalServerError},
	{smolvm.ErrImage, "image", http.StatusInternalServerError},
}

var extra = map[string]int{
	BadRequest:    http.StatusBadRequest,
	Unauthorized:  http.StatusUnauthorized,
	TooLarge:      http.StatusRequestEntityTooLarge,
	LimitExceeded: http.StatusTooManyRequests,
	Internal:      http.StatusInternalServerError,
}

// Error is an error with an API kind of its own (bad_request, ...), made by
// the server for failures that are not the SDK's.
type Error struct {
	// Kind is the API kind.
	Kind string
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// New returns an error of API kind k with a formatted message.
func New(k, format string, a ...any) error {
	return &Error{Kind: k, Err: fmt.Errorf(format, a...)}
}

// Classify returns the API kind and HTTP status of err.
func Classify(err error) (name string, status int) {
	var e *Error
	if errors.As(err, &e) {
		if st, ok := extra[e.Kind]; ok {
			return e.Kind, st
		}
		for _, k := range table {
			if k.name == e.Kind {
				return k.name, k.status
			}
		}
	}
	for _, k := range table {
		if errors.Is(err, k.err) {
			return k.name, k.status
		}
	}
	return Internal, http.StatusInternalServerError
}

// SDKKind returns the SDK error kind named name, or nil for the API's own
// kinds (bad_request, unauthorized, ...).
func SDKKind(name string) error {
	for _, k := range table {
		if k.name == name {
			return k.err
		}
	}
	if name == TooLarge || name == BadRequest {
		return smolvm.ErrInvalidConfig
	}
	return nil
}

// Kinds lists every API kind name.
func Kinds() []string {
	out := make([]string, 0, len(table)+len(extra))
	for _, k := range table {
		out = append(out, k.name)
	}
	for _, k := range []string{BadRequest, Unauthorized, TooLarge, LimitExceeded, Internal} {
		out = append(out, k)
	}
	return out
}
