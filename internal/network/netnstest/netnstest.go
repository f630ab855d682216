// Package netnstest gives tests network namespaces to stand in for guests
// and outside worlds: made without moving the caller, entered only by the
// locked thread that runs a function there. Only tests import it.
package netnstest

import (
	"errors"
	"runtime"

	"github.com/vishvananda/netns"
)

// New creates a network namespace without moving the caller into it.
func New() (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.New() // moves this thread into ns
		if err == nil {
			if serr := netns.Set(orig); serr != nil {
				// Leave the thread locked: it dies with this goroutine.
				ch <- result{err: serr}
				return
			}
		}
		runtime.UnlockOSThread()
		ch <- result{ns, err}
	}()
	r := <-ch
	return r.ns, r.err
}

// Do runs f on a thread inside ns. Sockets f creates belong to ns and may
// be used from any goroutine afterwards.
func Do(ns netns.NsHandle, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			ch <- errors.Join(ferr, err) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}
