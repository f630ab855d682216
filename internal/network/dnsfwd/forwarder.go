// Package dnsfwd is the DNS forwarder guests use as their resolver: it
// serves each VM's gateway address on UDP and TCP port 53, answers by
// asking the host's upstream resolvers, enforces the VM's egress policy on
// names, and puts the addresses of answers into the VM's nftables sets
// (network.AllowAddrs, network.DenyAddrs) so that the policy's domain rules
// hold for connections.
//
// # Names and addresses
//
// A query is matched to its VM by its source address (the network package's
// anti-spoofing rules guarantee that a guest's address arrives only through
// its own TAP) and must be sent to that VM's own gateway. For the asked
// name, the VM's network.Policy decides:
//
//   - a DenyOut domain: the answer is REFUSED; for an A query the name is
//     still resolved upstream and its addresses go to the VM's deny set, so
//     a guest that learnt them another way is dropped too;
//   - an AllowOut domain: the answer is forwarded, and its A records'
//     addresses go to the VM's allow set for the record's TTL, at least
//     Config.TTLFloor (a guest caching a little longer than the TTL still
//     connects), at most network.MaxSetTimeout. Addresses in the safe
//     default ranges (network.SafeDefaults) are not added: a wildcard domain
//     whose names resolve to 169.254.169.254 or 10.0.0.1 (DNS rebinding)
//     does not open the metadata service or the LAN; an AllowOut prefix does;
//   - any other name: forwarded when the policy's Internet is on; REFUSED,
//     without asking upstream, when it is off. With the internet off no name
//     leaves the host unless the policy allows it, so DNS is no channel to
//     smuggle data out through.
//
// Addresses are added to the sets before the answer is sent, so the guest's
// first connection finds them.
//
// # Bounds
//
// Everything a guest sends is bounded: UDP queries are read into
// MaxQuerySize bytes; TCP connections per listener are capped
// (Config.MaxTCPConns), with miekg/dns's read and idle timeouts and at most
// 64 queries per connection; queries in progress are capped per VM
// (Config.MaxInflightPerVM) and in all (Config.MaxInflight), and answered
// SERVFAIL beyond; upstream exchanges time out (Config.UpstreamTimeout);
// the answer cache holds at most Config.CacheEntries entries, each for at
// most an hour; at most 256 addresses per answer go to a set, and each set
// holds at most network.MaxSetElements.
//
// # Running it: one supervisor per host
//
// The forwarder must outlive the CLI command that started a VM, so it runs
// in a small supervisor process, one per host (per state directory), that
// serves the gateways of all VMs. Serve is that process's body; the CLI runs
// it as the hidden subcommand `smolvm _dns-forwarder --dir DIR`.
//
// The state directory (DIR, e.g. <data dir>/dnsfwd, mode 0700) holds:
//
//	DIR/lock        flock held by the running supervisor: at most one runs
//	DIR/pid         its process id (for `cleanup` and `doctor`)
//	DIR/vms/ID.json one file per VM that needs DNS (WriteVM, RemoveVM)
//
// Protocol: the SDK sets up the VM's network (network.Setup, SetPolicy),
// writes the VM's file with WriteVM, then calls Start, which starts the
// supervisor if none holds the lock, and waits for it. The supervisor watches vms/ with
// inotify (and rescans every RescanInterval), serving each VM file's
// gateway with its policy; a changed file (a new policy) is applied at
// once. Deleting a VM removes its file (RemoveVM). When vms/ has been empty
// for ServeConfig.IdleExit (or at once when ServeConfig.Wake fires; the
// CLI's supervisor wakes on SIGUSR1) the supervisor exits; before it does,
// it releases the lock and looks at vms/ once more, so a VM file written by a CLI that
// saw the lock still held is never left without a forwarder (the CLI
// writes before it checks the lock, so the supervisor's last look sees the
// file, takes the lock again and goes on serving; if another supervisor
// took the lock meanwhile, that one serves). `cleanup` removes the files
// of VMs the store does not know (RemoveVM); the supervisor then exits by
// itself; Running tells whether one is alive and its pid.
//
// The upstream resolvers come from /etc/resolv.conf as the supervisor sees
// it; when a host runs VMs in a named network namespace (`ip netns exec
// NAME`), that command bind-mounts /etc/netns/NAME/resolv.conf over
// /etc/resolv.conf, so reading /etc/resolv.conf is right there too.
package dnsfwd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/smolvm-go/smolvm/internal/network"
)

// MaxQuerySize bounds a UDP query read from a guest.
const MaxQuerySize = 1232

// Sets receives the addresses resolved for a VM's allowed and denied
// names. The default puts them into the VM's nftables sets.
type Sets interface {
	// Allow adds addrs to the VM's allow set for ttl.
	Allow(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error
	// Deny adds addrs to the VM's deny set for ttl.
	Deny(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error
}

// NFTSets is the Sets of the network package: the VM's nftables sets in
// the calling thread's network namespace.
type NFTSets struct{}

// Allow calls network.AllowAddrs.
func (NFTSets) Allow(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error {
	return network.AllowAddrs(ctx, vmID, addrs, ttl)
}

// Deny calls network.DenyAddrs.
func (NFTSets) Deny(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error {
	return network.DenyAddrs(ctx, vmID, addrs, ttl)
}

// Config configures a Forwarder. Zero fields take the defaults named.
type Config struct {
	// Upstreams are the resolvers asked, as "ip:port", in order. Empty
	// means the nameservers of ResolvConf.
	Upstreams []string
	// ResolvConf is read when Upstreams is empty; default /etc/resolv.conf.
	ResolvConf string
	// UpstreamsOptional lets New succeed when ResolvConf is missing or
	// lists no nameserver: VMs with their own VM.Upstreams are served,
	// the others are answered SERVFAIL.
	UpstreamsOptional bool
	// Port is the port served on each gateway; default 53.
	Port uint16
	// TTLFloor is the least time an address stays in a set; default 30s.
	TTLFloor time.Duration
	// UpstreamTimeout bounds one upstream exchange; default 2s.
	UpstreamTimeout time.Duration
	// MaxInflight bounds the queries being answered at once; default 256.
	MaxInflight int
	// MaxInflightPerVM bounds one VM's queries being answered; default 32.
	MaxInflightPerVM int
	// MaxTCPConns bounds the open TCP connections per gateway; default 64.
	MaxTCPConns int
	// CacheEntries bounds the answer cache; default 4096.
	CacheEntries int
	// Sets receives resolved addresses; default NFTSets{}.
	Sets Sets
	// Log receives one line per problem; default slog.Default().
	Log *slog.Logger
}

func (c *Config) defaults() error {
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	if len(c.Upstreams) == 0 {
		cc, err := dns.ClientConfigFromFile(c.ResolvConf)
		if err != nil && !c.UpstreamsOptional {
			return fmt.Errorf("dnsfwd: read upstream resolvers: %w", err)
		}
		if err == nil {
			for _, s := range cc.Servers {
				c.Upstreams = append(c.Upstreams, net.JoinHostPort(s, cc.Port))
			}
		}
		if len(c.Upstreams) == 0 && !c.UpstreamsOptional {
			return fmt.Errorf("dnsfwd: %s lists no nameserver", c.ResolvConf)
		}
	}
	for _, u := range c.Upstreams {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return fmt.Errorf("dnsfwd: upstream %q: must be ip:port: %w", u, err)
		}
	}
	set := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	set(&c.MaxInflight, 256)
	set(&c.MaxInflightPerVM, 32)
	set(&c.MaxTCPConns, 64)
	set(&c.CacheEntries, 4096)
	if c.Port == 0 {
		c.Port = 53
	}
	if c.TTLFloor <= 0 {
		c.TTLFloor = 30 * time.Second
	}
	if c.UpstreamTimeout <= 0 {
		c.UpstreamTimeout = 2 * time.Second
	}
	if c.Sets == nil {
		c.Sets = NFTSets{}
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}

// VM is what the forwarder knows of one VM.
type VM struct {
	ID      string         // ID names the VM (its sets are named after it).
	GuestIP netip.Addr     // GuestIP is the source of the VM's queries.
	Gateway netip.Addr     // Gateway is the address served for it.
	Policy  network.Policy // Policy decides which names resolve.
	// Upstreams, if not empty, are the resolvers ("ip:port") asked for
	// this VM instead of Config.Upstreams.
	Upstreams []string
}

// maxVMUpstreams bounds VM.Upstreams.
const maxVMUpstreams = 3

// checkUpstreams reports the first upstream that is not ip:port.
func checkUpstreams(ups []string) error {
	if len(ups) > maxVMUpstreams {
		return fmt.Errorf("at most %d upstreams", maxVMUpstreams)
	}
	for _, u := range ups {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return fmt.Errorf("upstream %q: must be ip:port: %w", u, err)
		}
	}
	return nil
}

type vmState struct {
	VM
	slots chan struct{} // queries in progress
}

// Forwarder serves DNS on the gateways of the VMs it is given.
type Forwarder struct {
	cfg   Config
	cache *cache
	slots chan struct{} // queries in progress, all VMs

	mu        sync.Mutex
	byGuest   map[netip.Addr]*vmState  // guarded by mu
	byID      map[string]*vmState      // guarded by mu
	listeners map[netip.Addr]*listener // guarded by mu; one per gateway address
	closed    bool                     // guarded by mu
}

// New returns a Forwarder serving no VM yet.
func New(cfg Config) (*Forwarder, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	return &Forwarder{
		cfg:       cfg,
		cache:     newCache(cfg.CacheEntries),
		slots:     make(chan struct{}, cfg.MaxInflight),
		byGuest:   map[netip.Addr]*vmState{},
		byID:      map[string]*vmState{},
		listeners: map[netip.Addr]*listener{},
	}, nil
}

// SetVM starts serving vm's gateway for it, or replaces what the
// forwarder knows of it (a new policy applies to the next query). The
// gateway address must exist on this host (network.Setup puts it on the
// VM's TAP).
func (f *Forwarder) SetVM(vm VM) error {
	if !vm.GuestIP.Is4() || !vm.Gateway.Is4() || vm.ID == "" {
		return fmt.Errorf("dnsfwd: vm %q: needs an id and IPv4 guest and gateway addresses", vm.ID)
	}
	if err := vm.Policy.Validate(); err != nil {
		return fmt.Errorf("dnsfwd: vm %s: %w", vm.ID, err)
	}
	if err := checkUpstreams(vm.Upstreams); err != nil {
		return fmt.Errorf("dnsfwd: vm %s: %w", vm.ID, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("dnsfwd: forwarder closed")
	}
	if other, ok := f.byGuest[vm.GuestIP]; ok && other.ID != vm.ID {
		return fmt.Errorf("dnsfwd: vm %s: guest address %s is vm %s's", vm.ID, vm.GuestIP, other.ID)
	}
	old := f.byID[vm.ID]
	if old == nil || old.Gateway != vm.Gateway {
		if err := f.acquireListener(vm.Gateway); err != nil {
			return fmt.Errorf("dnsfwd: vm %s: %w", vm.ID, err)
		}
	}
	st := &vmState{VM: vm, slots: make(chan struct{}, f.cfg.MaxInflightPerVM)}
	if old != nil {
		st.slots = old.slots
		delete(f.byGuest, old.GuestIP)
		if old.Gateway != vm.Gateway {
			f.releaseListener(old.Gateway)
		}
	}
	f.byID[vm.ID] = st
	f.byGuest[vm.GuestIP] = st
	return nil
}

// RemoveVM stops serving the VM; its gateway's listeners close when no
// other VM uses that address. Removing an unknown VM does nothing.
func (f *Forwarder) RemoveVM(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.byID[id]
	if !ok {
		return
	}
	delete(f.byID, id)
	delete(f.byGuest, st.GuestIP)
	f.releaseListener(st.Gateway)
}

// VMs returns the ids of the VMs served.
func (f *Forwarder) VMs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.byID))
	for id := range f.byID {
		out = append(out, id)
	}
	return out
}

// Close stops every listener.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for gw, l := range f.listeners {
		l.stop()
		delete(f.listeners, gw)
	}
	f.byID, f.byGuest = map[string]*vmState{}, map[netip.Addr]*vmState{}
	return nil
}

func (f *Forwarder) vmFor(src netip.Addr) *vmState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byGuest[src.Unmap()]
}

// listener is the UDP and TCP servers of one gateway address.
type listener struct {
	refs     int
	udp, tcp *dns.Server
}

func (l *listener) stop() {
	_ = l.udp.Shutdown()
	_ = l.tcp.Shutdown()
}

// acquireListener starts (or counts one more user of) the servers on gw.
// Called with f.mu held.
func (f *Forwarder) acquireListener(gw netip.Addr) error {
	if l, ok := f.listeners[gw]; ok {
		l.refs++
		return nil
	}
	addr := net.JoinHostPort(gw.String(), strconv.Itoa(int(f.cfg.Port)))
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return fmt.Errorf("listen on %s/udp: %w", addr, err)
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("listen on %s/tcp: %w", addr, err)
	}
	h := dns.HandlerFunc(f.serveDNS)
	l := &listener{
		refs: 1,
		udp:  &dns.Server{PacketConn: pc, Handler: h, UDPSize: MaxQuerySize, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second},
		tcp: &dns.Server{Listener: newLimitListener(ln, f.cfg.MaxTCPConns), Handler: h, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			MaxTCPQueries: 64, IdleTimeout: func() time.Duration { return 8 * time.Second }},
	}
	started := make(chan struct{}, 4) // started, or failed to
	for _, s := range []*dns.Server{l.udp, l.tcp} {
		s.NotifyStartedFunc = func() { started <- struct{}{} }
		go func() {
			if err := s.ActivateAndServe(); err != nil {
				f.cfg.Log.Warn("dnsfwd: server stopped", "addr", addr, "err", err)
			}
			started <- struct{}{}
		}()
	}
	<-started
	<-started
	f.listeners[gw] = l
	return nil
}

// releaseListener drops one user of gw's servers, stopping them after the
// last. Called with f.mu held.
func (f *Forwarder) releaseListener(gw netip.Addr) {
	l, ok := f.listeners[gw]
	if !ok {
		return
	}
	if l.refs--; l.refs == 0 {
		l.stop()
		delete(f.listeners, gw)
	}
}
