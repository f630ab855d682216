package smolvm

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// A step is one stage of a lifecycle operation: do makes something exist,
// undo (if any) removes it again. Create and Start are ordered tables of
// steps; runSteps runs them and, when one fails, the undos of those done
// in reverse, so a failed operation leaves nothing behind.
type step[T any] struct {
	name string
	do   func(ctx context.Context, s T) error
	undo func(ctx context.Context, s T)
}

// errInjected is what a step failed by HostOptions.failAt returns.
var errInjected = errors.New("injected failure")

// runSteps runs steps in order on state s. The error of a failed step is
// "<step name>: <cause>", tagged with the cause's kind (or def). Undo runs on
// a context the caller's cancellation cannot cut short, with its own
// deadline.
func runSteps[T any](ctx context.Context, h *Host, steps []step[T], s T, def error) error {
	var done []step[T]
	for _, st := range steps {
		err := ctx.Err()
		if err == nil && h.opts.failAt == st.name {
			err = errInjected
		}
		if err == nil {
			err = st.do(ctx, s)
		}
		if err != nil {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			for i := len(done) - 1; i >= 0; i-- {
				if done[i].undo != nil {
					done[i].undo(uctx, s)
				}
			}
			cancel()
			return &stepError{step: st.name, kind: kindOf(err, def), err: err}
		}
		done = append(done, st)
	}
	return nil
}

// stepError names the failed step; it carries the step's kind so wrapErr
// keeps it.
type stepError struct {
	step string
	kind error
	err  error
}

func (e *stepError) Error() string { return fmt.Sprintf("%s: %v", e.step, e.err) }

func (e *stepError) Is(target error) bool { return target == e.kind }

func (e *stepError) Unwrap() error { return maskKinds{e.err} }

// stepNames lists the names of a step table, in order.
func stepNames[T any](steps []step[T]) []string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = s.name
	}
	return out
}
