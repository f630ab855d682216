package network

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// MaxRules bounds each of a Policy's AllowOut and DenyOut lists.
const MaxRules = 256

// Rule is one entry of an egress list: an IPv4 prefix or a domain. Exactly
// one of Prefix and Domain is set.
type Rule struct {
	// Prefix is an IPv4 network, e.g. 10.1.0.0/16; a bare address is a /32.
	Prefix netip.Prefix
	// Domain is a lower-case name without a trailing dot: "pypi.org"
	// matches that name only, "*.github.com" matches every name below
	// github.com (api.github.com, a.b.github.com) but not github.com.
	Domain string
}

// String renders r as ParseRule reads it.
func (r Rule) String() string {
	if r.Domain != "" {
		return r.Domain
	}
	if r.Prefix.Bits() == 32 {
		return r.Prefix.Addr().String()
	}
	return r.Prefix.String()
}

// Matches reports whether name (any case, with or without a trailing dot)
// is matched by r's domain. A prefix rule matches no name.
func (r Rule) Matches(name string) bool {
	if r.Domain == "" {
		return false
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if base, ok := strings.CutPrefix(r.Domain, "*."); ok {
		return strings.HasSuffix(name, "."+base)
	}
	return name == r.Domain
}

// Policy is what a VM may reach outside the host. The zero value has the
// internet off and no exceptions; DefaultPolicy is what Setup applies.
//
// A new connection from the guest is judged in this order, first match
// wins: DenyOut (its prefixes, and the addresses its domains resolved to
// through the VM's DNS forwarder) drops; AllowOut (its prefixes, and the
// addresses its domains resolved to) accepts; with Internet false
// everything else drops; the safe defaults (SafeDefaults: link-local and
// metadata, loopback, private, shared, multicast and reserved ranges) drop;
// everything else is accepted. An AllowOut prefix inside a safe default
// range therefore opens it. Isolation comes before the policy and no policy
// changes it: a guest never reaches another guest or the host, except DNS
// and ping to its own gateway.
type Policy struct {
	// Internet reports whether public addresses are reachable by default.
	Internet bool
	// AllowOut lists destinations the guest may reach even when Internet is
	// false or a safe default would drop them.
	AllowOut []Rule
	// DenyOut lists destinations the guest never reaches; it wins over
	// AllowOut.
	DenyOut []Rule
	// EgressRate, if not zero, caps the guest's outbound traffic leaving
	// the host in bytes per second; packets over it are dropped.
	EgressRate uint64
}

// DefaultPolicy is the policy of a VM that asked for none: internet on,
// the safe defaults, no limit.
func DefaultPolicy() Policy { return Policy{Internet: true} }

// SafeDefaults are the destinations dropped unless an AllowOut rule
// covers them.
var SafeDefaults = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// HasDomains reports whether p has a domain in AllowOut or DenyOut.
func (p Policy) HasDomains() bool {
	for _, l := range [][]Rule{p.AllowOut, p.DenyOut} {
		for _, r := range l {
			if r.Domain != "" {
				return true
			}
		}
	}
	return false
}

// NameVerdict says what the DNS forwarder does with a query for name
// under p: deny (answer REFUSED, and the addresses the name resolves to
// are dropped), allow (answer, and the addresses are accepted), or
// neither (answer only if p.Internet).
func (p Policy) NameVerdict(name string) (deny, allow bool) {
	for _, r := range p.DenyOut {
		if r.Matches(name) {
			return true, false
		}
	}
	for _, r := range p.AllowOut {
		if r.Matches(name) {
			return false, true
		}
	}
	return false, false
}

// Validate reports the first invalid rule of p as a *FieldError.
func (p Policy) Validate() error {
	for _, l := range []struct {
		field string
		rules []Rule
	}{{"AllowOut", p.AllowOut}, {"DenyOut", p.DenyOut}} {
		if len(l.rules) > MaxRules {
			return fieldErr(l.field, fmt.Sprintf("%d rules", len(l.rules)), fmt.Sprintf("must have at most %d rules", MaxRules))
		}
		for i, r := range l.rules {
			field := fmt.Sprintf("%s[%d]", l.field, i)
			switch {
			case r.Domain != "" && r.Prefix.IsValid():
				return fieldErr(field, r.String(), "must be a prefix or a domain, not both")
			case r.Domain != "":
				if pr, err := ParseRule(r.Domain); err != nil || pr.Domain != r.Domain {
					return fieldErr(field, r.Domain, "must be a lower-case domain such as pypi.org or *.github.com")
				}
			case !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() || r.Prefix.Masked() != r.Prefix:
				return fieldErr(field, r.Prefix.String(), "must be an IPv4 network without host bits, such as 10.0.0.0/8")
			}
		}
	}
	if p.EgressRate != 0 && p.EgressRate < minRate {
		return fieldErr("EgressRate", strconv.FormatUint(p.EgressRate, 10), fmt.Sprintf("must be 0 (no limit) or at least %d bytes per second", minRate))
	}
	return nil
}

// ParsePolicy builds a Policy from the strings a user typed (for example
// --internet, --allow-out, --deny-out and --egress-rate): each rule as
// ParseRule reads it, the rate as ParseRate reads it ("" for no limit).
// A bad entry gives a *FieldError naming the list, its index and the rule.
func ParsePolicy(internet bool, allowOut, denyOut []string, rate string) (Policy, error) {
	p := Policy{Internet: internet}
	for _, l := range []struct {
		field string
		in    []string
		out   *[]Rule
	}{{"AllowOut", allowOut, &p.AllowOut}, {"DenyOut", denyOut, &p.DenyOut}} {
		if len(l.in) > MaxRules {
			return Policy{}, fieldErr(l.field, fmt.Sprintf("%d rules", len(l.in)), fmt.Sprintf("must have at most %d rules", MaxRules))
		}
		for i, s := range l.in {
			r, err := ParseRule(s)
			if err != nil {
				fe := err.(*FieldError)
				fe.Field = fmt.Sprintf("%s[%d]", l.field, i)
				return Policy{}, fe
			}
			*l.out = append(*l.out, r)
		}
	}
	if rate != "" {
		r, err := ParseRate(rate)
		if err != nil {
			return Policy{}, err
		}
		p.EgressRate = r
	}
	return p, p.Validate()
}

// ParseRule reads one egress rule: an IPv4 address ("203.0.113.7", a /32),
// an IPv4 network in CIDR form without host bits ("10.0.0.0/8"), an exact
// domain ("pypi.org") or a wildcard domain ("*.github.com"). Domains are
// case-insensitive; a trailing dot is accepted. Errors are *FieldError with
// Field "Rule".
func ParseRule(s string) (Rule, error) {
	in := s
	s = strings.TrimSpace(s)
	bad := func(reason string) (Rule, error) { return Rule{}, fieldErr("Rule", in, reason) }
	if s == "" {
		return bad("is empty; want an IPv4 address, a CIDR such as 10.0.0.0/8, or a domain such as pypi.org or *.github.com")
	}
	if looksLikeIP(s) {
		return parsePrefixRule(s, bad)
	}
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	wild := false
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name, wild = rest, true
	}
	if strings.Contains(name, "*") {
		return bad("a wildcard is allowed only as the whole first label, as in *.github.com")
	}
	if err := checkDomain(name); err != "" {
		return bad(err)
	}
	if wild {
		name = "*." + name
	}
	return Rule{Domain: name}, nil
}

// looksLikeIP reports whether s is meant as an address or CIDR: only
// digits, dots, a slash, or any colon (IPv6).
func looksLikeIP(s string) bool {
	if strings.ContainsAny(s, ":/") {
		return true
	}
	return strings.Trim(s, "0123456789.") == ""
}

func parsePrefixRule(s string, bad func(string) (Rule, error)) (Rule, error) {
	if strings.Contains(s, ":") {
		return bad("IPv6 is not routed to guests; use an IPv4 address or network")
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return bad("is not a valid IPv4 address (four numbers 0-255 separated by dots)")
		}
		return Rule{Prefix: netip.PrefixFrom(a, 32)}, nil
	}
	addr, bits, _ := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return bad(fmt.Sprintf("%q is not a valid IPv4 address (four numbers 0-255 separated by dots)", addr))
	}
	n, err := strconv.Atoi(bits)
	if err != nil || n < 0 || n > 32 || bits == "" || bits[0] == '+' || bits[0] == '-' {
		return bad(fmt.Sprintf("prefix length %q must be a number from 0 to 32", bits))
	}
	p := netip.PrefixFrom(a, n)
	if p.Masked() != p {
		return bad(fmt.Sprintf("has host bits set; did you mean %s?", p.Masked()))
	}
	return Rule{Prefix: p}, nil
}

// checkDomain returns why name (lower case, no trailing dot, no wildcard)
// is not a domain, or "".
func checkDomain(name string) string {
	if len(name) > 253 {
		return "is longer than 253 characters"
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return "must have at least two labels, such as example.com (or be an IPv4 address or CIDR)"
	}
	for _, l := range labels {
		switch {
		case l == "":
			return "has an empty label (two dots in a row, or a leading dot)"
		case len(l) > 63:
			return fmt.Sprintf("label %q is longer than 63 characters", l)
		case l[0] == '-' || l[len(l)-1] == '-':
			return fmt.Sprintf("label %q must not start or end with '-'", l)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Sprintf("label %q has %q; use letters, digits, '-' and '_' (write internationalised names in their xn-- form)", l, r)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "ends in an all-numeric label; write an IPv4 address as four numbers 0-255"
	}
	return ""
}

// minRate is the smallest EgressRate: 1 KB/s (8 kbit/s).
const minRate = 1000

// rateUnits maps a rate unit to bytes per second per unit.
var rateUnits = map[string]float64{
	"bit": 1.0 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
	"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
}

// ParseRate reads a bandwidth such as "10mbit", "512kbit", "2MB/s" or
// "1.5MiB" into bytes per second. Units (case-insensitive, an optional
// "/s"): bit, kbit, mbit, gbit (bits per second, SI), B, KB, MB, GB (bytes,
// SI) and KiB, MiB, GiB (bytes, binary). Errors are *FieldError with Field
// "EgressRate".
func ParseRate(s string) (uint64, error) {
	bad := func(reason string) (uint64, error) { return 0, fieldErr("EgressRate", s, reason) }
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "/s")
	i := strings.IndexFunc(t, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	if i < 0 && t != "" {
		return bad("has no unit; use bit, kbit, mbit, gbit, B, KB, MB, GB, KiB, MiB or GiB, such as 10mbit or 2MB/s")
	}
	if i <= 0 {
		return bad("must be a number followed by a unit, such as 10mbit or 2MB/s")
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return bad(fmt.Sprintf("%q is not a number", num))
	}
	per, ok := rateUnits[unit]
	if !ok {
		return bad(fmt.Sprintf("unknown unit %q; use bit, kbit, mbit, gbit, B, KB, MB, GB, KiB, MiB or GiB, optionally with /s", unit))
	}
	bps := f * per
	switch {
	case bps < minRate:
		return bad(fmt.Sprintf("is below the minimum of %d bytes per second (8kbit)", minRate))
	case bps > 1<<40:
		return bad("is above the maximum of 1TiB/s")
	}
	return uint64(bps), nil
}
