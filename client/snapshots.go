package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/smolvm-go/smolvm"
)

// Snapshot takes a snapshot named name ("" generates one) of the running
// sandbox, like smolvm.VM.Snapshot. It belongs to the client's key.
// Environment variable values in its config come back redacted.
func (vm *VM) Snapshot(ctx context.Context, name string) (smolvm.SnapshotInfo, error) {
	var info smolvm.SnapshotInfo
	err := vm.c.call(ctx, http.MethodPost, vm.path("/snapshots"), nil, map[string]string{"name": name}, &info)
	return info, err
}

// Restore rolls the sandbox back to the key's snapshot name and runs it on
// from there, like smolvm.VM.Restore.
func (vm *VM) Restore(ctx context.Context, name string) error {
	return vm.c.call(ctx, http.MethodPost, vm.path("/restore"), nil, map[string]string{"snapshot": name}, &vm.sb)
}

// Snapshots lists the key's snapshots, oldest first, like smolvm.Host.Snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]smolvm.SnapshotInfo, error) {
	var out []smolvm.SnapshotInfo
	err := c.call(ctx, http.MethodGet, "/v1/snapshots", nil, nil, &out)
	return out, err
}

// GetSnapshot returns the key's snapshot name; another key's or a missing
// one is smolvm.ErrNotFound, like smolvm.Host.GetSnapshot.
func (c *Client) GetSnapshot(ctx context.Context, name string) (smolvm.SnapshotInfo, error) {
	var info smolvm.SnapshotInfo
	err := c.call(ctx, http.MethodGet, "/v1/snapshots/"+url.PathEscape(name), nil, nil, &info)
	return info, err
}

// RemoveSnapshot deletes the key's snapshot name, like smolvm.Host.RemoveSnapshot.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(name), nil, nil, nil)
}
