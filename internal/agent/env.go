package agent

import (
	"context"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// SetEnv persists environment variables in the guest (in
// /etc/profile.d/smolvm_env.sh). With replace, vars replace every persisted
// variable; otherwise they are merged in. Names must match
// [A-Za-z_][A-Za-z0-9_]* (else proto.ErrInvalidArgument); values may hold any
// text except NUL.
func (c *Client) SetEnv(ctx context.Context, vars map[string]string, replace bool) error {
	return c.roundTrip(ctx, proto.MethodEnvSet, proto.EnvSetArgs{Vars: vars, Replace: replace}, nil)
}

// UnsetEnv removes persisted environment variables; missing names are ignored.
func (c *Client) UnsetEnv(ctx context.Context, keys []string) error {
	return c.roundTrip(ctx, proto.MethodEnvUnset, proto.EnvUnsetArgs{Keys: keys}, nil)
}

// ListEnv returns the persisted environment variables.
func (c *Client) ListEnv(ctx context.Context) (map[string]string, error) {
	var res proto.EnvListResult
	if err := c.roundTrip(ctx, proto.MethodEnvList, nil, &res); err != nil {
		return nil, err
	}
	if res.Vars == nil {
		res.Vars = map[string]string{}
	}
	return res.Vars, nil
}
