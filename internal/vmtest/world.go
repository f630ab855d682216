package vmtest

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/smolvm-go/smolvm/internal/network/netnstest"
)

// Addresses of the fake outside world (NewWorld): a namespace behind the
// veth wan0, which becomes the test namespace's default route.
const (
	WANHost    = "198.51.100.1"    // the host's (test namespace's) address on wan0
	WANWorld   = "198.51.100.2"    // the world's address; its DNS server listens here
	Pub1       = "203.0.113.10"    // a "public" address (api.example.test)
	Pub2       = "203.0.113.20"    // another one (other.example.test)
	MetadataIP = "169.254.169.254" // a cloud metadata service
	PrivateIP  = "10.99.0.5"       // a private service
)

// World is a fake outside world for VM tests: HTTP listeners on every
// address above that answer with the address they were reached on, a DNS
// server, and a record of the ICMP echo requests that reached it.
type World struct {
	// NS is the world's network namespace.
	NS netns.NsHandle

	mu       sync.Mutex
	records  map[string]string // name -> A
	echoLens map[int]bool      // lengths of ICMP echo requests received
}

// SetRecord makes the world's DNS server answer name with addr (TTL 1 s).
func (w *World) SetRecord(name, addr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.records[dns.Fqdn(name)] = addr
}

// SawEcho reports whether an ICMP echo request with n data bytes arrived.
func (w *World) SawEcho(n int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.echoLens[n]
}

// NewWorld makes the world in a new namespace joined to the calling
// (test) namespace by the veth wan0 (WANHost here, WANWorld there), routes
// this namespace's traffic to it, and removes it when t ends. It holds
// Pub1, Pub2, MetadataIP and PrivateIP with an HTTP server on port 80 of
// each that answers "hello from ADDR", and a DNS server on WANWorld:53
// answering api.example.test (Pub1), other.example.test (Pub2) and
// meta.example.test (MetadataIP).
func NewWorld(t testing.TB) *World {
	t.Helper()
	ns, err := netnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	w := &World{NS: ns, records: map[string]string{}, echoLens: map[int]bool{}}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("wan0"); err == nil {
			netlink.LinkDel(l)
		}
		ns.Close()
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wan0"}, PeerName: "wan0p"}))
	pl, err := netlink.LinkByName("wan0p")
	must(err)
	must(netlink.LinkSetNsFd(pl, int(ns)))
	h, err := netlink.NewHandleAt(ns)
	must(err)
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	pl, err = h.LinkByName("wan0p")
	must(err)
	wa, _ := netlink.ParseAddr(WANWorld + "/24")
	must(h.LinkSetUp(lo))
	must(h.AddrAdd(pl, wa))
	must(h.LinkSetUp(pl))
	for _, a := range []string{Pub1, Pub2, MetadataIP, PrivateIP} {
		la, _ := netlink.ParseAddr(a + "/32")
		must(h.AddrAdd(lo, la))
	}
	wan, err := netlink.LinkByName("wan0")
	must(err)
	ha, _ := netlink.ParseAddr(WANHost + "/24")
	must(netlink.AddrAdd(wan, ha))
	must(netlink.LinkSetUp(wan))
	must(netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(WANWorld)}))

	var ln net.Listener
	var icmp net.PacketConn
	var dnsConn net.PacketConn
	must(netnstest.Do(ns, func() (err error) {
		if ln, err = net.Listen("tcp4", "0.0.0.0:80"); err != nil {
			return err
		}
		if icmp, err = net.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
			return err
		}
		dnsConn, err = net.ListenPacket("udp4", WANWorld+":53")
		return err
	}))
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello from %s\n", r.Context().Value(http.LocalAddrContextKey).(net.Addr).(*net.TCPAddr).IP)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := icmp.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 && buf[0] == 8 { // echo request: 8 bytes of header + data
				w.mu.Lock()
				w.echoLens[n-8] = true
				w.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { icmp.Close() })
	ds := &dns.Server{PacketConn: dnsConn, Handler: dns.HandlerFunc(func(rw dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		w.mu.Lock()
		a, ok := w.records[strings.ToLower(q.Name)]
		w.mu.Unlock()
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR(fmt.Sprintf("%s 1 IN A %s", q.Name, a))
			m.Answer = append(m.Answer, rr)
		}
		rw.WriteMsg(m)
	})}
	go ds.ActivateAndServe()
	t.Cleanup(func() { ds.Shutdown() })
	w.SetRecord("api.example.test", Pub1)
	w.SetRecord("other.example.test", Pub2)
	w.SetRecord("meta.example.test", MetadataIP)
	return w
}
