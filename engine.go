package smolvm

import (
	"context"
	"errors"
	"time"
)

// A step is one stage of a lifecycle operation: do makes something exist,
// undo (if any) removes it again. Create and Start are ordered tables of
// steps; runSteps runs them and, when one fails, the undos of those done
// in reverse, so a failed operation leaves nothing behind.
type step[T any] struct {
	name string
	// kind is the error kind of a failure of this step that carries none
	// of its own; nil means the table's.
	kind error
	do   func(ctx context.Context, s T) error
	// undo gets the operation's error, so the record can say why it failed.
	undo func(ctx context.Context, s T, cause error)
}

// errInjected is what a step failed by HostOptions.failAt returns.
var errInjected = errors.New("injected failure")

// runSteps runs steps in order on state s. The error of a failed step is
// "<step name>: <cause>" with one kind: the cause's, else the step's, else
// def. Undo runs on a context the caller's cancellation cannot cut short,
// with its own deadline.
func runSteps[T any](ctx context.Context, h *Host, steps []step[T], s T, def error) error {
	for i, st := range steps {
		err := ctx.Err()
		if err == nil && h.opts.failAt == st.name {
			err = errInjected
		}
		if err == nil {
			err = st.do(ctx, s)
		}
		if err == nil {
			continue
		}
		if st.kind != nil {
			def = st.kind
		}
		failed := &opError{op: st.name, kind: kindOf(err, def), err: err}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for j := i - 1; j >= 0; j-- {
			if steps[j].undo != nil {
				steps[j].undo(uctx, s, failed)
			}
		}
		return failed
	}
	return nil
}

// stepNames lists the names of a step table, in order.
func stepNames[T any](steps []step[T]) []string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = s.name
	}
	return out
}
