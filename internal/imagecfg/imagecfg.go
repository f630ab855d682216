// Package imagecfg is the contract between a user image's build (host) and
// the guest (its init and agent server): how the image runs, written by the
// image builder to File inside the root filesystem and read by the guest at
// boot and for every command.
//
// The file is the image's, so a guest can change it; it configures only
// what runs inside that guest, never anything on the host.
package imagecfg

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// File is where the config lives in the root filesystem.
const File = "/etc/smolvm/image.json"

// maxBytes bounds the file.
const maxBytes = 1 << 20

// Config is how a user image runs.
type Config struct {
	// Env are the image's environment variables: defaults of every command.
	Env map[string]string `json:"env,omitempty"`
	// User is the default user of every command (name or uid, optionally
	// :group); empty means root.
	User string `json:"user,omitempty"`
	// Workdir is the default directory of every command.
	Workdir string `json:"workdir,omitempty"`
	// Start is a shell command the init starts in the background on every
	// boot, as User in Workdir with Env.
	Start string `json:"start,omitempty"`
	// Ready is a shell command the host runs after boot until it exits 0.
	Ready string `json:"ready,omitempty"`
}

// Read reads the config at path (File in the guest). A missing file is an
// empty config and no error.
func Read(path string) (Config, error) {
	var c Config
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxBytes+1))
	if err != nil {
		return c, err
	}
	if len(b) > maxBytes {
		return c, fmt.Errorf("%s: more than %d bytes", path, maxBytes)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
