package proto

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

func TestErrorKindsSurviveTheWire(t *testing.T) {
	_, statErr := os.Stat("/no/such/file/smolvm")
	tests := []struct {
		name string
		err  error
		kind error
	}{
		{"sentinel", ErrNotFound, ErrNotFound},
		{"wrapped sentinel", fmt.Errorf("upload: %w", ErrInvalidArgument), ErrInvalidArgument},
		{"os not exist", statErr, ErrNotFound},
		{"permission", fs.ErrPermission, ErrPermission},
		{"exists", fs.ErrExist, ErrAlreadyExists},
		{"deadline", context.DeadlineExceeded, ErrTimeout},
		{"canceled", context.Canceled, ErrCanceled},
		{"not a directory", &fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOTDIR}, ErrInvalidArgument},
		{"read-only fs", syscall.EROFS, ErrPermission},
		{"unavailable", ErrUnavailable, ErrUnavailable},
		{"unsupported", ErrUnsupported, ErrUnsupported},
		{"protocol", ErrProtocol, ErrProtocol},
		{"other", errors.New("disk on fire"), ErrInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KindOf(tt.err); got != tt.kind {
				t.Fatalf("KindOf = %v, want %v", got, tt.kind)
			}
			p := MarshalResponse(nil, tt.err)
			got := UnmarshalResponse(p, nil)
			if !errors.Is(got, tt.kind) {
				t.Fatalf("after the wire: %v is not %v", got, tt.kind)
			}
			if got.Error() != tt.err.Error() {
				t.Fatalf("message %q, want %q", got.Error(), tt.err.Error())
			}
		})
	}
	if KindOf(nil) != nil {
		t.Fatal("KindOf(nil) != nil")
	}
	if err := FromWire(&WireError{Kind: "from_the_future", Message: "m"}); !errors.Is(err, ErrInternal) {
		t.Fatalf("unknown kind: %v", err)
	}
}

func TestResponseResult(t *testing.T) {
	p := MarshalResponse(ExecResult{ExitCode: 137, Signal: "SIGKILL"}, nil)
	var res ExecResult
	if err := UnmarshalResponse(p, &res); err != nil || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("got %+v, %v", res, err)
	}
	if err := UnmarshalResponse([]byte("{"), &res); !errors.Is(err, ErrProtocol) {
		t.Fatalf("bad JSON: %v", err)
	}
	if _, err := MarshalRequest(MethodEnvSet, EnvSetArgs{Vars: map[string]string{"A": string(make([]byte, MaxPayload))}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("oversized request: %v", err)
	}
}
