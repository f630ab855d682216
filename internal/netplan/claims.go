package netplan

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Claims records, host-wide, which data directory holds each lease index,
// so that two data directories on one host (say, the CLI's and a server's)
// never hand out the same TAP name, subnet or vsock context id. A claim is
// a file named after the index in Dir, created exclusively, holding the
// owner's data directory and VM id. The zero value (no Dir) claims nothing
// and allows everything: a single data directory on its own.
type Claims struct {
	// Dir holds one file per claimed index.
	Dir string
}

// Owner is who holds a claim.
type Owner struct {
	// DataDir is the owner's data directory (absolute).
	DataDir string
	// VMID is the VM holding the index.
	VMID string
}

func (c Claims) path(i int) string { return filepath.Join(c.Dir, strconv.Itoa(i)) }

// ErrClaimed means another data directory holds the index.
var ErrClaimed = errors.New("lease index claimed by another data directory")

// Claim records that o holds index i. It succeeds when the claim is new or
// already o's; it fails with ErrClaimed when another live data directory
// holds it. A claim whose data directory has no database any more is
// stale and taken over; stale reports whether a claim of o's own data
// directory names a VM that no longer holds the index there.
func (c Claims) Claim(i int, o Owner, stale func(Owner) bool) error {
	if c.Dir == "" {
		return nil
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("lease claims: %w", err)
	}
	content := []byte(o.DataDir + "\n" + o.VMID + "\n")
	for attempt := 0; attempt < 3; attempt++ {
		err := c.create(i, content)
		if err == nil {
			return nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("lease claim %d: %w", i, err)
		}
		cur, err := c.owner(i)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			return err
		}
		switch {
		case cur == o:
			return nil
		case cur.DataDir == o.DataDir && stale != nil && stale(cur),
			cur.DataDir != o.DataDir && !dbExists(cur.DataDir):
			os.Remove(c.path(i)) // stale: retry the exclusive create
			continue
		}
		return fmt.Errorf("index %d (data dir %s, vm %s): %w", i, cur.DataDir, cur.VMID, ErrClaimed)
	}
	return fmt.Errorf("lease claim %d: contended: %w", i, ErrClaimed)
}

// create makes the claim file of index i with its content in one step: a
// hard link of a complete temporary file, which fails if the claim exists,
// so no reader ever sees a claim without its owner.
func (c Claims) create(i int, content []byte) error {
	tmp, err := os.CreateTemp(c.Dir, ".claim-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(content)
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return err
	}
	return os.Link(tmp.Name(), c.path(i))
}

// Release removes o's claim on index i; a claim of someone else stays.
func (c Claims) Release(i int, o Owner) error {
	if c.Dir == "" {
		return nil
	}
	cur, err := c.owner(i)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur != o {
		return nil
	}
	if err := os.Remove(c.path(i)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Held returns the indexes claimed by data directories other than dataDir.
func (c Claims) Held(dataDir string) (map[int]bool, error) {
	out := map[int]bool{}
	if c.Dir == "" {
		return out, nil
	}
	ents, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		i, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if o, err := c.owner(i); err == nil && o.DataDir != dataDir && dbExists(o.DataDir) {
			out[i] = true
		}
	}
	return out, nil
}

func (c Claims) owner(i int) (Owner, error) {
	b, err := os.ReadFile(c.path(i))
	if err != nil {
		return Owner{}, err
	}
	dir, rest, _ := strings.Cut(string(b), "\n")
	id, _, _ := strings.Cut(rest, "\n")
	return Owner{DataDir: dir, VMID: id}, nil
}

// dbExists reports whether dataDir still has a state database: a claim of
// a data directory that was removed is stale.
func dbExists(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "smolvm.db"))
	return err == nil
}

// Prune removes stale claims: those of dataDir whose VM holds the index
// no more (holds says which do, and should count work in progress), and
// those of data directories that no longer have a database. It returns
// the indexes removed (or, with dryRun, that would be).
func (c Claims) Prune(dataDir string, holds func(index int, vmID string) bool, dryRun bool) ([]int, error) {
	if c.Dir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		i, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		o, err := c.owner(i)
		if err != nil {
			continue
		}
		stale := (o.DataDir == dataDir && !holds(i, o.VMID)) || (o.DataDir != dataDir && !dbExists(o.DataDir))
		if !stale {
			continue
		}
		if !dryRun {
			if err := os.Remove(c.path(i)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return out, err
			}
		}
		out = append(out, i)
	}
	return out, nil
}
