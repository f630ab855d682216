package apierr

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/smolvm-go/smolvm"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err    error
		kind   string
		status int
	}{
		{fmt.Errorf("x: %w", smolvm.ErrNotFound), "not_found", 404},
		{&smolvm.ConfigError{Field: "f", Rule: "r"}, "invalid_config", 422},
		{fmt.Errorf("x: %w", smolvm.ErrState), "invalid_state", 409},
		{fmt.Errorf("x: %w", smolvm.ErrAlreadyExists), "already_exists", 409},
		{fmt.Errorf("x: %w", smolvm.ErrTimeout), "timeout", 504},
		{fmt.Errorf("x: %w", smolvm.ErrUnavailable), "unavailable", 503},
		{fmt.Errorf("x: %w", smolvm.ErrCommandUnavailable), "command_unavailable", 503},
		{fmt.Errorf("x: %w", smolvm.ErrBackend), "backend", 500},
		{New(BadRequest, "bad"), BadRequest, 400},
		{New(Unauthorized, "who"), Unauthorized, 401},
		{New(TooLarge, "big"), TooLarge, 413},
		{New(LimitExceeded, "many"), LimitExceeded, 429},
		{New("not_found", "no route"), "not_found", 404},
		{errors.New("plain"), Internal, http.StatusInternalServerError},
	} {
		k, st := Classify(c.err)
		if k != c.kind || st != c.status {
			t.Errorf("%v: %s %d, want %s %d", c.err, k, st, c.kind, c.status)
		}
	}
}

// TestKindsRoundTrip checks every SDK kind survives the wire: its API name
// maps back to it.
func TestKindsRoundTrip(t *testing.T) {
	for _, k := range table {
		if got := SDKKind(k.name); got != k.err {
			t.Errorf("SDKKind(%s) = %v, want %v", k.name, got, k.err)
		}
		if name, _ := Classify(fmt.Errorf("wrapped: %w", k.err)); name != k.name {
			t.Errorf("Classify(%v) = %s", k.err, name)
		}
	}
	if SDKKind(Unauthorized) != nil || SDKKind("nonsense") != nil {
		t.Error("API-only kinds map to an SDK kind")
	}
	if len(Kinds()) != len(table)+len(extra) {
		t.Errorf("Kinds() = %v", Kinds())
	}
}
