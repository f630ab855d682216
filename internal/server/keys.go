package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/store"
)

// KeyPrefix starts every API key the server makes, so keys are easy to
// recognise in configuration and in leaked text.
const KeyPrefix = "smk_"

// APIKey is a recorded key as `smolvm apikey list --json` prints it.
type APIKey = store.APIKey

var keyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Keys manages the API keys recorded in a data directory.
type Keys struct{ st *store.Store }

// OpenKeys opens the key records of the data directory dir.
func OpenKeys(ctx context.Context, dir string) (*Keys, error) {
	st, err := store.Open(ctx, dir)
	if err != nil {
		return nil, err
	}
	return &Keys{st: st}, nil
}

// Close closes the records.
func (k *Keys) Close() error { return k.st.Close() }

// Create makes a key named name (empty: the key's id) and returns its
// record and its secret, which is shown only now: only its SHA-256 is kept.
func (k *Keys) Create(ctx context.Context, name string) (APIKey, string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return APIKey{}, "", err
	}
	secret := KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	var idb [6]byte
	rand.Read(idb[:])
	id := "key-" + hex.EncodeToString(idb[:])
	if name == "" {
		name = id
	}
	if !keyNameRE.MatchString(name) {
		return APIKey{}, "", &smolvm.ConfigError{Field: "name", Value: name, Rule: "must be 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit"}
	}
	sum := sha256.Sum256([]byte(secret))
	rec := APIKey{ID: id, Name: name, Hash: sum[:]}
	if err := k.st.AddAPIKey(ctx, rec); err != nil {
		if errors.Is(err, store.ErrExists) {
			return APIKey{}, "", fmt.Errorf("an API key named %q exists: %w", name, smolvm.ErrAlreadyExists)
		}
		return APIKey{}, "", err
	}
	ks, err := k.st.APIKeys(ctx)
	if err == nil {
		for _, x := range ks {
			if x.ID == id {
				rec = x
			}
		}
	}
	return rec, secret, nil
}

// List returns every key, revoked ones included.
func (k *Keys) List(ctx context.Context) ([]APIKey, error) { return k.st.APIKeys(ctx) }

// Revoke revokes the key whose id or name is idOrName. Requests with it get
// 401 at once; its sandboxes stay (and stay unreachable through other keys).
func (k *Keys) Revoke(ctx context.Context, idOrName string) (APIKey, error) {
	rec, err := k.st.RevokeAPIKey(ctx, idOrName)
	if errors.Is(err, store.ErrNotFound) {
		return rec, fmt.Errorf("no API key %q (see 'smolvm apikey list'): %w", idOrName, smolvm.ErrNotFound)
	}
	return rec, err
}
