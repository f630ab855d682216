package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// readEnv returns the persisted variables; a missing file holds none.
func (s *Server) readEnv() (map[string]string, error) {
	s.envMu.Lock()
	defer s.envMu.Unlock()
	return s.readEnvLocked()
}

func (s *Server) readEnvLocked() (map[string]string, error) {
	data, err := os.ReadFile(s.opts.EnvFile)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	return parseEnvFile(data)
}

// updateEnv applies change to the persisted variables and rewrites the file
// atomically.
func (s *Server) updateEnv(change func(vars map[string]string) error) error {
	s.envMu.Lock()
	defer s.envMu.Unlock()
	vars, err := s.readEnvLocked()
	if err != nil {
		return err
	}
	if err := change(vars); err != nil {
		return err
	}
	if err := writeFileAtomic(s.opts.EnvFile, formatEnvFile(vars), 0o644); err != nil {
		return fmt.Errorf("env file: %w", err)
	}
	return nil
}

// envSet sets variables (proto.MethodEnvSet).
func (s *Server) envSet(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.EnvSetArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	for k, v := range a.Vars {
		if err := checkEnvVar(k, v); err != nil {
			return nil, fmt.Errorf("env set: %w", err)
		}
	}
	return nil, s.updateEnv(func(vars map[string]string) error {
		if a.Replace {
			clear(vars)
		}
		for k, v := range a.Vars {
			vars[k] = v
		}
		return nil
	})
}

// envUnset removes variables (proto.MethodEnvUnset).
func (s *Server) envUnset(_ *stream, raw json.RawMessage) (any, error) {
	var a proto.EnvUnsetArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	for _, k := range a.Keys {
		if !validEnvKey(k) {
			return nil, fmt.Errorf("%w: env unset: bad variable name %q", proto.ErrInvalidArgument, k)
		}
	}
	return nil, s.updateEnv(func(vars map[string]string) error {
		for _, k := range a.Keys {
			delete(vars, k)
		}
		return nil
	})
}

// envList lists variables (proto.MethodEnvList).
func (s *Server) envList(_ *stream, _ json.RawMessage) (any, error) {
	vars, err := s.readEnv()
	if err != nil {
		return nil, err
	}
	return proto.EnvListResult{Vars: vars}, nil
}
