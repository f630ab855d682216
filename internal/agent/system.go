package agent

import (
	"context"
	"slices"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// Info describes the guest agent.
type Info struct {
	// Version is the agent's build version.
	Version string
	// Protocol is the agent's protocol version.
	Protocol int
	// Capabilities lists the request methods the agent serves.
	Capabilities []string
	// Uptime is how long the agent has been running.
	Uptime time.Duration
}

// Health asks the agent for its version and capabilities; a nil error means
// the agent answers requests.
func (c *Client) Health(ctx context.Context) (Info, error) {
	var res proto.HealthResult
	if err := c.roundTrip(ctx, proto.MethodHealth, nil, &res); err != nil {
		return Info{}, err
	}
	return c.storeHealth(res), nil
}

// storeHealth keeps a Health answer for Has and returns it as an Info.
func (c *Client) storeHealth(res proto.HealthResult) Info {
	info := Info{
		Version:      res.Version,
		Protocol:     res.Protocol,
		Capabilities: res.Capabilities,
		Uptime:       time.Duration(res.UptimeMillis) * time.Millisecond,
	}
	c.info.Store(&info)
	return info
}

// Has reports whether the agent listed capability in its last Health
// answer on this session (false before any).
func (c *Client) Has(capability string) bool {
	info := c.info.Load()
	return info != nil && slices.Contains(info.Capabilities, capability)
}

// Sync flushes the guest's file systems to its disks.
func (c *Client) Sync(ctx context.Context) error {
	return c.roundTrip(ctx, proto.MethodSync, nil, nil)
}

// PowerOff asks the guest to sync and power off. It returns once the agent
// has accepted the request; the VM stops shortly after.
func (c *Client) PowerOff(ctx context.Context) error {
	return c.roundTrip(ctx, proto.MethodPowerOff, nil, nil)
}
