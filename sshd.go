package smolvm

import (
	"context"
	"errors"
	"path"
	"sync"

	"github.com/smolvm-go/smolvm/internal/agent"
	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// sshdDirs are where Start looks for an sshd in the guest: the PATH the
// guest's commands get.
var sshdDirs = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// guestHasSSHD reports whether the guest has an sshd program in one of
// sshdDirs: an executable file, or a symlink (taken as one). The stat calls
// go out at once over the agent's one connection, so this costs one round
// trip, not a shell started in the guest.
func guestHasSSHD(ctx context.Context, c *agent.Client) (bool, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		found bool
		errs  []error
	)
	for _, d := range sshdDirs {
		wg.Go(func() {
			fi, err := c.Stat(ctx, path.Join(d, "sshd"))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, proto.ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
				errs = append(errs, err) // the channel failed: no answer
			case err != nil: // not there (or not a directory)
			case fi.Type == proto.FileSymlink || (fi.Type == proto.FileRegular && fi.Mode&0o111 != 0):
				found = true
			}
		})
	}
	wg.Wait()
	if found {
		return true, nil
	}
	return false, errors.Join(errs...)
}
