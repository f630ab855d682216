package agent

import (
	"context"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Restore tells the agent of a guest just restored from a snapshot to set
// its clock, reseed its RNG and take its network identity (see
// proto.RestoreArgs).
func (c *Client) Restore(ctx context.Context, args proto.RestoreArgs) (proto.RestoreResult, error) {
	var res proto.RestoreResult
	err := c.roundTrip(ctx, proto.MethodRestore, args, &res)
	return res, err
}
