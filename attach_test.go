package smolvm

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestAttachValidation(t *testing.T) {
	off := false
	for _, tc := range []struct {
		name  string
		c     VMConfig
		field string
	}{
		{"ok", VMConfig{AttachInterface: "eth0"}, ""},
		{"ok with dns", VMConfig{AttachInterface: "eth0", DNSServers: []string{"10.96.0.10"}}, ""},
		{"too long", VMConfig{AttachInterface: strings.Repeat("e", 16)}, "attach_interface"},
		{"slash", VMConfig{AttachInterface: "a/b"}, "attach_interface"},
		{"space", VMConfig{AttachInterface: "a b"}, "attach_interface"},
		{"a TAP of ours", VMConfig{AttachInterface: "smol0"}, "attach_interface"},
		{"no network", VMConfig{AttachInterface: "eth0", NoNetwork: true}, "no_network"},
		{"ssh port", VMConfig{AttachInterface: "eth0", SSHHostPort: 2222}, "ssh_host_port"},
		{"ssh auto", VMConfig{AttachInterface: "eth0", SSHHostPort: SSHPortAuto}, "ssh_host_port"},
		{"internet", VMConfig{AttachInterface: "eth0", Internet: &off}, "internet"},
		{"allow_out", VMConfig{AttachInterface: "eth0", AllowOut: []string{"10.0.0.0/8"}}, "allow_out"},
		{"deny_out", VMConfig{AttachInterface: "eth0", DenyOut: []string{"10.0.0.0/8"}}, "deny_out"},
		{"egress_rate", VMConfig{AttachInterface: "eth0", EgressRate: "10mbit"}, "egress_rate"},
		{"dns_upstream", VMConfig{AttachInterface: "eth0", DNSUpstream: []string{"192.0.2.53"}}, "dns_upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v, want a ConfigError on %s", err, tc.field)
			}
		})
	}
}

func TestAttachIdentityNetworkConfig(t *testing.T) {
	a := &attachIdentity{Interface: "eth0", MAC: "0A:58:0A:58:00:05", Addr: netip.MustParsePrefix("10.88.0.5/16"), Gateway: netip.MustParseAddr("10.88.0.1")}
	n, err := a.networkConfig("smol3")
	if err != nil {
		t.Fatal(err)
	}
	if n.GuestIP() != "10.88.0.5" || n.Netmask() != "255.255.0.0" || n.GatewayIP() != "10.88.0.1" || n.GuestMAC() != "0A:58:0A:58:00:05" || n.TapDevice() != "smol3" || n.SSHHostPort() != 0 {
		t.Fatalf("network config: %v", n)
	}
}
