package network

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseRule(t *testing.T) {
	good := []struct {
		in   string
		want Rule
	}{
		{"203.0.113.7", Rule{Prefix: netip.MustParsePrefix("203.0.113.7/32")}},
		{"10.0.0.0/8", Rule{Prefix: netip.MustParsePrefix("10.0.0.0/8")}},
		{"0.0.0.0/0", Rule{Prefix: netip.MustParsePrefix("0.0.0.0/0")}},
		{"PyPI.org.", Rule{Domain: "pypi.org"}},
		{"*.GitHub.com", Rule{Domain: "*.github.com"}},
		{"_dmarc.example.com", Rule{Domain: "_dmarc.example.com"}},
		{"xn--bcher-kva.example", Rule{Domain: "xn--bcher-kva.example"}},
	}
	for _, tt := range good {
		got, err := ParseRule(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseRule(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	bad := []struct{ in, reason string }{
		{"", "is empty"},
		{"10.0.0.0/33", "prefix length"},
		{"10.0.0.0/", "prefix length"},
		{"10.0.0.0/-1", "prefix length"},
		{"10.0.0.5/8", "did you mean 10.0.0.0/8"},
		{"10.0.0.300", "not a valid IPv4 address"},
		{"10.0.0", "not a valid IPv4 address"},
		{"300.1.1.1/8", "not a valid IPv4 address"},
		{"fd00::/8", "IPv6"},
		{"::1", "IPv6"},
		{"localhost", "at least two labels"},
		{"exa mple.com", "use letters, digits"},
		{"bad..example.com", "empty label"},
		{".example.com", "empty label"},
		{"-a.example.com", "must not start or end with '-'"},
		{"a.*.example.com", "wildcard is allowed only"},
		{"*example.com", "wildcard is allowed only"},
		{"*", "wildcard is allowed only"},
		{"example.123", "all-numeric"},
		{"ex\u00e4mple.com", "xn--"},
		{strings.Repeat("a", 64) + ".com", "longer than 63"},
		{strings.Repeat("abcdefghi.", 26) + "com", "longer than 253"},
	}
	for _, tt := range bad {
		_, err := ParseRule(tt.in)
		var fe *FieldError
		if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRule(%q) = %v, want a FieldError", tt.in, err)
			continue
		}
		if fe.Value != tt.in || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("ParseRule(%q) = %q; want it to name the rule and say %q", tt.in, err, tt.reason)
		}
	}
}

func TestParsePolicyNamesFieldAndIndex(t *testing.T) {
	_, err := ParsePolicy(true, []string{"pypi.org", "10.0.0.0/33"}, nil, "")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "AllowOut[1]" || fe.Value != "10.0.0.0/33" {
		t.Fatalf("ParsePolicy = %v, want a FieldError for AllowOut[1] 10.0.0.0/33", err)
	}
	if !strings.Contains(err.Error(), "AllowOut[1]") || !strings.Contains(err.Error(), `"10.0.0.0/33"`) {
		t.Errorf("error %q does not name the field and the rule", err)
	}
	_, err = ParsePolicy(false, nil, []string{"ok.example", "bad..example"}, "")
	if !errors.As(err, &fe) || fe.Field != "DenyOut[1]" {
		t.Errorf("ParsePolicy deny = %v, want DenyOut[1]", err)
	}
	_, err = ParsePolicy(false, nil, nil, "10 parsecs")
	if !errors.As(err, &fe) || fe.Field != "EgressRate" || !strings.Contains(err.Error(), `unknown unit "parsecs"`) {
		t.Errorf("ParsePolicy rate = %v, want EgressRate unknown unit", err)
	}
	many := make([]string, MaxRules+1)
	for i := range many {
		many[i] = "10.0.0.1"
	}
	if _, err := ParsePolicy(false, many, nil, ""); !errors.As(err, &fe) || fe.Field != "AllowOut" {
		t.Errorf("ParsePolicy with %d rules = %v, want AllowOut too many", len(many), err)
	}

	p, err := ParsePolicy(false, []string{"api.example.test", "10.1.0.0/16"}, []string{"*.bad.test"}, "10mbit")
	if err != nil {
		t.Fatal(err)
	}
	if p.Internet || len(p.AllowOut) != 2 || p.AllowOut[1].Prefix != netip.MustParsePrefix("10.1.0.0/16") ||
		p.DenyOut[0].Domain != "*.bad.test" || p.EgressRate != 1_250_000 || !p.HasDomains() {
		t.Errorf("ParsePolicy = %+v", p)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, tt := range []struct {
		p     Policy
		field string
	}{
		{Policy{AllowOut: []Rule{{Prefix: netip.MustParsePrefix("10.0.0.5/8")}}}, "AllowOut[0]"},
		{Policy{AllowOut: []Rule{{}}}, "AllowOut[0]"},
		{Policy{DenyOut: []Rule{{Domain: "10.0.0.1"}}}, "DenyOut[0]"},
		{Policy{DenyOut: []Rule{{Domain: "Upper.Example"}}}, "DenyOut[0]"},
		{Policy{DenyOut: []Rule{{Domain: "a.example", Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}, "DenyOut[0]"},
		{Policy{AllowOut: []Rule{{Prefix: netip.MustParsePrefix("fd00::/8")}}}, "AllowOut[0]"},
		{Policy{EgressRate: 10}, "EgressRate"},
	} {
		var fe *FieldError
		if err := tt.p.Validate(); !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("Validate(%+v) = %v, want a FieldError for %s", tt.p, err, tt.field)
		}
	}
	if err := DefaultPolicy().Validate(); err != nil {
		t.Errorf("DefaultPolicy: %v", err)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{
		"10mbit": 1_250_000, "512kbit": 64_000, "2MB/s": 2_000_000, "1.5MiB": 1_572_864,
		"1gbit": 125_000_000, "8000bit": 1000, "1000B": 1000, " 3 KB ": 3000,
	} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, reason := range map[string]string{
		"":        "number followed by a unit",
		"mbit":    "number followed by a unit",
		"10":      "has no unit",
		"10 mbps": `unknown unit "mbps"`,
		"1.2.3MB": "not a number",
		"-5MB":    "number followed by a unit",
		"100bit":  "below the minimum",
		"5000GiB": "above the maximum",
	} {
		_, err := ParseRate(in)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "EgressRate" || !strings.Contains(err.Error(), reason) {
			t.Errorf("ParseRate(%q) = %v; want an EgressRate error saying %q", in, err, reason)
		}
	}
}

func TestNameVerdict(t *testing.T) {
	p, err := ParsePolicy(false, []string{"*.github.com", "pypi.org"}, []string{"evil.github.com"}, "")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][2]bool{ // deny, allow
		"api.github.com.":   {false, true},
		"A.B.GitHub.com":    {false, true},
		"github.com":        {false, false}, // a wildcard does not match its base
		"evil.github.com.":  {true, false},  // deny wins
		"pypi.org":          {false, true},
		"files.pypi.org":    {false, false}, // exact means exact
		"notgithub.com":     {false, false},
		"github.com.evil.x": {false, false},
	} {
		d, a := p.NameVerdict(name)
		if [2]bool{d, a} != want {
			t.Errorf("NameVerdict(%q) = deny %v allow %v, want %v", name, d, a, want)
		}
	}
}

func TestForwardHostIPValidate(t *testing.T) {
	for _, tt := range []struct {
		ip     string
		reason string
	}{
		{"::1", "IPv4"},
		{"127.0.0.2", "must be 127.0.0.1"},
		{"224.0.0.1", "unicast"},
	} {
		f := testForward
		f.HostIP = netip.MustParseAddr(tt.ip)
		var fe *FieldError
		if err := f.Validate(); !errors.As(err, &fe) || fe.Field != "HostIP" || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("Validate with HostIP %s = %v, want a HostIP error saying %q", tt.ip, err, tt.reason)
		}
	}
	for _, ip := range []string{"0.0.0.0", "127.0.0.1", "192.0.2.1"} {
		f := testForward
		f.HostIP = netip.MustParseAddr(ip)
		if err := f.Validate(); err != nil {
			t.Errorf("Validate with HostIP %s: %v", ip, err)
		}
	}
}
