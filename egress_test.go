package smolvm

import (
	"errors"
	"strings"
	"testing"
)

func TestEgressValidation(t *testing.T) {
	off := false
	for _, tc := range []struct {
		name  string
		cfg   VMConfig
		field string // "" means valid
	}{
		{"default", VMConfig{}, ""},
		{"bare ip is /32", VMConfig{AllowOut: []string{"203.0.113.7"}}, ""},
		{"cidr", VMConfig{AllowOut: []string{"10.1.0.0/16"}, DenyOut: []string{"*.example.com"}}, ""},
		{"internet off with domain", VMConfig{Internet: &off, AllowOut: []string{"pypi.org"}}, ""},
		{"host bits", VMConfig{AllowOut: []string{"10.1.0.1/16"}}, "allow_out[0]"},
		{"bad prefix", VMConfig{DenyOut: []string{"1.2.3.4", "10.0.0.0/40"}}, "deny_out[1]"},
		{"bad domain", VMConfig{AllowOut: []string{"a..b"}}, "allow_out[0]"},
		{"ipv6", VMConfig{AllowOut: []string{"2001:db8::/32"}}, "allow_out[0]"},
		{"both lists", VMConfig{AllowOut: []string{"10.0.0.0/8"}, DenyOut: []string{"10.0.0.0/8"}}, "allow_out"},
		{"rate unit", VMConfig{EgressRate: "10 furlongs"}, "egress_rate"},
		{"rate no unit", VMConfig{EgressRate: "100"}, "egress_rate"},
		{"rate ok", VMConfig{EgressRate: "10mbit"}, ""},
		{"no network", VMConfig{NoNetwork: true, Internet: &off}, "internet"},
		{"no network upstream", VMConfig{NoNetwork: true, DNSUpstream: []string{"192.0.2.53"}}, "dns_upstream"},
		{"dns with domains", VMConfig{DNSServers: []string{"192.0.2.53"}, DenyOut: []string{"example.com"}}, "dns_servers"},
		{"dns with cidr rules", VMConfig{DNSServers: []string{"192.0.2.53"}, DenyOut: []string{"10.0.0.0/8"}}, ""},
		{"dns with upstream", VMConfig{DNSServers: []string{"192.0.2.53"}, DNSUpstream: []string{"192.0.2.54"}}, "dns_upstream"},
		{"upstream port", VMConfig{DNSUpstream: []string{"192.0.2.53:5353"}}, ""},
		{"upstream name", VMConfig{DNSUpstream: []string{"dns.example"}}, "dns_upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || !errors.Is(err, ErrInvalidConfig) || ce.Field != tc.field {
				t.Fatalf("Validate = %v, want a *ConfigError for %s", err, tc.field)
			}
		})
	}
}

func TestEgressNormalizedAndShown(t *testing.T) {
	off := false
	c := VMConfig{Internet: &off, AllowOut: []string{"PyPI.org.", "203.0.113.7/32"}, DNSUpstream: []string{"192.0.2.53"}}
	c.normalizeEgress()
	if got := strings.Join(c.AllowOut, ","); got != "pypi.org,203.0.113.7" {
		t.Errorf("AllowOut normalised to %s", got)
	}
	if c.DNSUpstream[0] != "192.0.2.53:53" {
		t.Errorf("DNSUpstream normalised to %v", c.DNSUpstream)
	}
	e := c.Egress()
	if e.Internet || e.DenyOut == nil || len(e.AllowOut) != 2 {
		t.Errorf("Egress() = %+v", e)
	}
	if e := (VMConfig{}).Egress(); !e.Internet || e.AllowOut == nil || e.DenyOut == nil {
		t.Errorf("default Egress() = %+v (lists must be [] in JSON, internet on)", e)
	}
}
