package smolvm

import (
	"context"
	"fmt"
	"time"
)

// undoStack collects the undo of each lifecycle step as the step succeeds;
// run calls them in reverse. Undo work runs on a context that the caller's
// cancellation cannot cut short, with its own deadline.
type undoStack []func(ctx context.Context)

func (u *undoStack) push(f func(ctx context.Context)) { *u = append(*u, f) }

// release forgets every undo: the steps are kept.
func (u *undoStack) release() { *u = nil }

func (u *undoStack) run(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i](ctx)
	}
	*u = nil
}

// failStep, when set (by tests), is called at the start of every named
// lifecycle step; an error it returns fails that step, so tests can prove
// that each failure point undoes everything before it.
var failStep func(step string) error

func step(name string) error {
	if failStep != nil {
		if err := failStep(name); err != nil {
			return fmt.Errorf("step %s: %w", name, err)
		}
	}
	return nil
}
