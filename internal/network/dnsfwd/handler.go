package dnsfwd

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/smolvm-go/smolvm/internal/network"
)

// maxAnswerAddrs bounds the addresses of one answer put into a set.
const maxAnswerAddrs = 256

// serveDNS answers one query from a guest.
func (f *Forwarder) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	src := addrOf(w.RemoteAddr())
	vm := f.vmFor(src)
	if vm == nil || addrOf(w.LocalAddr()) != vm.Gateway {
		// Not a guest of ours, or a guest asking another VM's gateway.
		reply(w, r, dns.RcodeRefused, nil)
		return
	}
	select {
	case vm.slots <- struct{}{}:
		defer func() { <-vm.slots }()
	default:
		reply(w, r, dns.RcodeServerFailure, nil)
		return
	}
	select {
	case f.slots <- struct{}{}:
		defer func() { <-f.slots }()
	default:
		reply(w, r, dns.RcodeServerFailure, nil)
		return
	}
	if len(r.Question) != 1 || r.Question[0].Qclass != dns.ClassINET {
		reply(w, r, dns.RcodeNotImplemented, nil)
		return
	}
	q := r.Question[0]
	ups := vm.Upstreams
	if len(ups) == 0 {
		ups = f.cfg.Upstreams
	}
	if len(ups) == 0 {
		reply(w, r, dns.RcodeServerFailure, nil)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*f.cfg.UpstreamTimeout*time.Duration(len(ups)))
	defer cancel()

	deny, allow := vm.Policy.NameVerdict(q.Name)
	switch {
	case deny:
		if q.Qtype == dns.TypeA {
			if ans, err := f.resolve(ctx, ups, q); err == nil {
				f.addAddrs(ctx, vm, ans, true)
			}
		}
		reply(w, r, dns.RcodeRefused, nil)
		return
	case !allow && !vm.Policy.Internet:
		reply(w, r, dns.RcodeRefused, nil)
		return
	}
	ans, err := f.resolve(ctx, ups, q)
	if err != nil {
		f.cfg.Log.Debug("dnsfwd: upstream", "vm", vm.ID, "name", q.Name, "err", err)
		reply(w, r, dns.RcodeServerFailure, nil)
		return
	}
	if allow {
		f.addAddrs(ctx, vm, ans, false)
	}
	reply(w, r, ans.rcode, ans)
}

// addAddrs puts the public IPv4 addresses of ans's A records into vm's
// allow (or deny) set, for their TTL raised to the floor.
func (f *Forwarder) addAddrs(ctx context.Context, vm *vmState, ans *answer, deny bool) {
	var addrs []netip.Addr
	ttl := time.Duration(0)
	for _, rr := range ans.rrs(time.Now()) {
		a, ok := rr.(*dns.A)
		if !ok || len(addrs) == maxAnswerAddrs {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.A)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !deny && inSafeDefaults(ip) {
			continue // only an AllowOut prefix opens these
		}
		addrs = append(addrs, ip)
		ttl = max(ttl, time.Duration(a.Hdr.Ttl)*time.Second)
	}
	if len(addrs) == 0 {
		return
	}
	ttl = max(ttl, f.cfg.TTLFloor)
	add := f.cfg.Sets.Allow
	if deny {
		add = f.cfg.Sets.Deny
	}
	if err := add(ctx, vm.ID, addrs, ttl); err != nil {
		f.cfg.Log.Warn("dnsfwd: add resolved addresses", "vm", vm.ID, "deny", deny, "err", err)
	}
}

func inSafeDefaults(a netip.Addr) bool {
	for _, p := range network.SafeDefaults {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// reply answers r with rcode and, if ans is not nil, its records, cut to
// what the client can take over UDP.
func reply(w dns.ResponseWriter, r *dns.Msg, rcode int, ans *answer) {
	m := new(dns.Msg)
	m.SetRcode(r, rcode)
	m.RecursionAvailable = true
	if ans != nil {
		now := time.Now()
		m.Answer = ans.answerRRs(now)
		m.Ns = ans.nsRRs(now)
	}
	size := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil {
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), MaxQuerySize)
		m.SetEdns0(MaxQuerySize, false)
	}
	if _, isTCP := w.RemoteAddr().(*net.TCPAddr); isTCP {
		size = dns.MaxMsgSize
	}
	m.Truncate(size)
	_ = w.WriteMsg(m)
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// resolve answers q from the cache or the upstream resolvers.
func (f *Forwarder) resolve(ctx context.Context, ups []string, q dns.Question) (*answer, error) {
	key := cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, upstreams: strings.Join(ups, ",")}
	if a := f.cache.get(key, time.Now()); a != nil {
		return a, nil
	}
	m := new(dns.Msg)
	m.SetQuestion(key.name, q.Qtype)
	m.RecursionDesired = true
	m.SetEdns0(MaxQuerySize, false)
	var lastErr error
	for _, up := range ups {
		resp, err := f.exchange(ctx, m, up)
		if err != nil {
			lastErr = err
			continue
		}
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			lastErr = errRcode(resp.Rcode)
			continue
		}
		a := newAnswer(resp, time.Now())
		f.cache.put(key, a)
		return a, nil
	}
	return nil, lastErr
}

// exchange asks one upstream over UDP, and again over TCP if the answer
// was truncated.
func (f *Forwarder) exchange(ctx context.Context, m *dns.Msg, upstream string) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: f.cfg.UpstreamTimeout, UDPSize: MaxQuerySize}
	resp, _, err := c.ExchangeContext(ctx, m, upstream)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, upstream)
	}
	if err == nil && resp.Id != m.Id {
		err = errRcode(dns.RcodeFormatError)
	}
	return resp, err
}

type errRcode int

func (e errRcode) Error() string { return "upstream answered " + dns.RcodeToString[int(e)] }

// answer is an upstream answer as cached: records with the time they were
// received, so that TTLs count down.
type answer struct {
	rcode   int
	answer  []dns.RR
	ns      []dns.RR
	got     time.Time
	expires time.Time
}

const (
	maxCacheTTL = time.Hour
	negCacheTTL = 30 * time.Second
)

func newAnswer(m *dns.Msg, now time.Time) *answer {
	a := &answer{rcode: m.Rcode, got: now}
	ttl := maxCacheTTL
	for _, rr := range m.Answer {
		a.answer = append(a.answer, dns.Copy(rr))
		ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			a.ns = append(a.ns, dns.Copy(rr))
			if len(m.Answer) == 0 {
				ttl = min(ttl, time.Duration(min(soa.Minttl, soa.Hdr.Ttl))*time.Second)
			}
		}
	}
	if len(m.Answer) == 0 {
		ttl = min(ttl, negCacheTTL)
	}
	a.expires = now.Add(ttl)
	return a
}

// age returns copies of rrs with their TTLs lowered by the time since got.
func (a *answer) age(rrs []dns.RR, now time.Time) []dns.RR {
	elapsed := uint32(now.Sub(a.got) / time.Second)
	out := make([]dns.RR, 0, len(rrs))
	for _, rr := range rrs {
		c := dns.Copy(rr)
		if h := c.Header(); h.Ttl > elapsed {
			h.Ttl -= elapsed
		} else {
			h.Ttl = 0
		}
		out = append(out, c)
	}
	return out
}

func (a *answer) answerRRs(now time.Time) []dns.RR { return a.age(a.answer, now) }
func (a *answer) nsRRs(now time.Time) []dns.RR     { return a.age(a.ns, now) }
func (a *answer) rrs(now time.Time) []dns.RR       { return a.answerRRs(now) }

type cacheKey struct {
	name      string
	qtype     uint16
	upstreams string // the resolvers asked, so VMs with their own do not share answers
}

// cache holds at most max answers until they expire.
type cache struct {
	max int
	mu  sync.Mutex
	m   map[cacheKey]*answer // guarded by mu
}

func newCache(max int) *cache { return &cache{max: max, m: map[cacheKey]*answer{}} }

func (c *cache) get(k cacheKey, now time.Time) *answer {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.m[k]
	if a != nil && !now.Before(a.expires) {
		delete(c.m, k)
		return nil
	}
	return a
}

func (c *cache) put(k cacheKey, a *answer) {
	if !a.expires.After(a.got) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for key, old := range c.m { // drop the expired, else one at random
			if !a.got.Before(old.expires) {
				delete(c.m, key)
			}
		}
		for key := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, key)
		}
	}
	c.m[k] = a
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// limitListener accepts at most n connections open at once.
type limitListener struct {
	net.Listener
	sem   chan struct{}
	done  chan struct{}
	close func()
}

func newLimitListener(l net.Listener, n int) net.Listener {
	ll := &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
	ll.close = sync.OnceFunc(func() { close(ll.done) })
	return ll
}

// Close closes the listener, also ending an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.close()
	return l.Listener.Close()
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.sem })}, nil
}

type limitConn struct {
	net.Conn
	release func()
}

// Close closes the connection and frees its slot.
func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
