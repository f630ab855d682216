package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// newConn opens an nftables connection in the calling thread's network
// namespace. Tests replace it to capture netlink messages.
var newConn = func() (*nftables.Conn, error) { return nftables.New() }

// lockDir holds the host-wide lock that serialises read-modify-write of
// our tables across processes. It must be a directory only its owner (the
// user we run as: root) can write, so no other local user can plant a
// symlink or take the lock to stall every VM's network set-up.
var lockDir = "/run/smolvm"

// lockName is the lock file's name in lockDir.
const lockName = "network.lock"

var mu sync.Mutex

// lock takes the in-process and host-wide locks; the returned func releases
// them. A lock that cannot be taken is an error, never skipped.
func lock() (func(), error) {
	mu.Lock()
	f, err := openLock(lockDir)
	if err != nil {
		mu.Unlock()
		return nil, fmt.Errorf("network: host-wide lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		mu.Unlock()
		return nil, fmt.Errorf("network: host-wide lock %s: %w", f.Name(), err)
	}
	return func() {
		f.Close() // drops the flock
		mu.Unlock()
	}, nil
}

// openLock opens (creating) the lock file in dir, creating dir with mode
// 0700 if needed. An existing dir must be a real directory owned by this
// user with no group or other access; the file is opened without
// following symlinks.
func openLock(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return nil, err
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return nil, fmt.Errorf("%s is not a directory (a symlink?); remove it", dir)
	case st.Uid != uint32(os.Geteuid()):
		return nil, fmt.Errorf("%s is owned by uid %d, not %d; remove it", dir, st.Uid, os.Geteuid())
	case st.Mode&0o077 != 0:
		return nil, fmt.Errorf("%s has mode %04o; it must be accessible to its owner only (chmod 700 it)", dir, st.Mode&0o7777)
	}
	return os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
}

// state is what our tables hold now.
type state struct {
	tables map[*nftables.Table]bool             // tables of ours that exist
	chains map[*nftables.Chain]bool             // chains of ours that exist
	rules  map[*nftables.Chain][]*nftables.Rule // rules of our existing chains, in order
	tags   map[*nftables.Rule]tag               // tags of the rules in rules
	egress map[string]bool                      // ids of the VMs with an egress chain
}

// readState lists our tables, chains and rules. An existing chain of ours
// with another type, hook or priority is an error: we do not guess whose it is.
// current connects to nf_tables and reads our tables, for operation op.
func current(op string) (*nftables.Conn, *state, error) {
	c, err := newConn()
	if err != nil {
		return nil, nil, fmt.Errorf("network: %s: nftables: %w", op, err)
	}
	s, err := readState(c)
	if err != nil {
		return nil, nil, err
	}
	return c, s, nil
}

func readState(c *nftables.Conn) (*state, error) {
	s := &state{
		tables: map[*nftables.Table]bool{},
		chains: map[*nftables.Chain]bool{},
		rules:  map[*nftables.Chain][]*nftables.Rule{},
		tags:   map[*nftables.Rule]tag{},
		egress: map[string]bool{},
	}
	ts, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("network: list nftables tables: %w", err)
	}
	for _, t := range ts {
		for _, ours := range []*nftables.Table{table4, table6} {
			if t.Name == ours.Name && t.Family == ours.Family {
				s.tables[ours] = true
			}
		}
	}
	if len(s.tables) == 0 {
		return s, nil
	}
	cs, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("network: list nftables chains: %w", err)
	}
	s.egress = egressVMs(cs)
	for _, have := range cs {
		for _, want := range chains {
			if have.Table.Name != want.Table.Name || have.Table.Family != want.Table.Family || have.Name != want.Name {
				continue
			}
			if have.Type != want.Type || have.Hooknum == nil || *have.Hooknum != *want.Hooknum ||
				have.Priority == nil || *have.Priority != *want.Priority {
				return nil, fmt.Errorf("network: chain %s %s %s exists with another type, hook or priority; delete the table %q and retry",
					familyName(want.Table.Family), want.Table.Name, want.Name, TableName)
			}
			s.chains[want] = true
		}
	}
	for _, ch := range chains {
		if !s.chains[ch] {
			continue
		}
		rs, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("network: list rules of %s %s %s: %w", familyName(ch.Table.Family), ch.Table.Name, ch.Name, err)
		}
		for _, r := range rs {
			r.Table, r.Chain = ch.Table, ch
			if t, ok := parseTag(r.UserData); ok {
				s.tags[r] = t
			}
		}
		s.rules[ch] = rs
	}
	return s, nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return fmt.Sprint(f)
}

// ensureChains queues the tables and chains that are missing.
func (s *state) ensureChains(c *nftables.Conn) {
	for _, t := range []*nftables.Table{table4, table6} {
		if !s.tables[t] {
			c.AddTable(t)
		}
	}
	for _, ch := range chains {
		if !s.chains[ch] {
			c.AddChain(ch)
		}
	}
}

// ensureShared queues what makes the shared rules of each chain exactly
// sharedRules, in order, at the tail of the chain.
func (s *state) ensureShared(c *nftables.Conn) error {
	want := map[*nftables.Chain][]ruleSpec{}
	for _, r := range sharedRules() {
		want[r.chain] = append(want[r.chain], r)
	}
	for _, ch := range chains {
		var haveKinds []string
		var have []*nftables.Rule
		for _, r := range s.rules[ch] {
			if t, ok := s.tags[r]; ok && t.VM == "" {
				haveKinds = append(haveKinds, t.Kind)
				have = append(have, r)
			}
		}
		var wantKinds []string
		for _, r := range want[ch] {
			wantKinds = append(wantKinds, r.tag.Kind)
		}
		// The shared rules must be the last ones of the chain.
		tail := len(have) == 0 || s.rules[ch][len(s.rules[ch])-1] == have[len(have)-1]
		if slices.Equal(haveKinds, wantKinds) && tail {
			continue
		}
		for _, r := range have {
			if err := c.DelRule(r); err != nil {
				return err
			}
		}
		for _, r := range want[ch] {
			c.AddRule(r.rule())
		}
	}
	return nil
}

// delWhere queues the deletion of every tagged rule for which match is true,
// and returns the tags deleted.
func (s *state) delWhere(c *nftables.Conn, match func(tag) bool) ([]tag, error) {
	var out []tag
	for _, ch := range chains {
		for _, r := range s.rules[ch] {
			t, ok := s.tags[r]
			if !ok || !match(t) {
				continue
			}
			if err := c.DelRule(r); err != nil {
				return nil, err
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// add queues specs: inserted at the head or appended, as each says.
func add(c *nftables.Conn, specs []ruleSpec) {
	for _, r := range specs {
		if r.insert {
			c.InsertRule(r.rule())
		} else {
			c.AddRule(r.rule())
		}
	}
}

// flush sends the batch, naming op in the error.
func flush(c *nftables.Conn, op string) error {
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("network: %s: nftables: %w (%v)", op, ErrNoPermission, err)
		}
		return fmt.Errorf("network: %s: nftables: %w", op, err)
	}
	return nil
}
