package smolvm

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// The seed document's examples, translated to Go.
func TestNetworkConfigSeedExamples(t *testing.T) {
	network, err := NewNetworkConfig(NetworkSpec{
		GuestIP:     "172.16.0.2",
		GatewayIP:   "172.16.0.1",
		Netmask:     "255.255.255.0",
		TapDevice:   "smol0",
		GuestMAC:    "AA:FC:00:00:00:01",
		SSHHostPort: 2222,
	})
	if err != nil {
		t.Fatal(err)
	}
	if network.GuestIP() != "172.16.0.2" || network.GatewayIP() != "172.16.0.1" || network.TapDevice() != "smol0" ||
		network.Netmask() != "255.255.255.0" || network.GuestMAC() != "AA:FC:00:00:00:01" || network.SSHHostPort() != 2222 {
		t.Fatalf("example 1: %v", network)
	}

	custom, err := NewNetworkConfig(NetworkSpec{
		GuestIP:     "172.16.100.50",
		GatewayIP:   "172.16.100.1",
		Netmask:     "255.255.255.0",
		TapDevice:   "smol-custom",
		GuestMAC:    "AA:FC:00:00:01:23",
		SSHHostPort: 3333,
	})
	if err != nil {
		t.Fatal(err)
	}
	if custom.GuestIP() != "172.16.100.50" || custom.GatewayIP() != "172.16.100.1" || custom.SSHHostPort() != 3333 {
		t.Fatalf("custom example: %v", custom)
	}

	// Immutability example: only the required fields; defaults fill the rest.
	n, err := NewNetworkConfig(NetworkSpec{GuestIP: "172.16.0.2", TapDevice: "smol0", GuestMAC: "AA:FC:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	if n.GatewayIP() != DefaultGatewayIP || n.Netmask() != DefaultNetmask || n.SSHHostPort() != 0 || n.PrefixLen() != 24 {
		t.Fatalf("defaults: %v", n)
	}
	// "network.guest_ip = ..." has no Go spelling: there is no setter and no
	// exported field. Changing a Spec copy leaves n alone; a new config is a new value.
	spec := n.Spec()
	spec.GuestIP = "172.16.0.3"
	if n.GuestIP() != "172.16.0.2" {
		t.Fatal("changing a Spec changed the config")
	}
	n2, err := NewNetworkConfig(spec)
	if err != nil || n2.GuestIP() != "172.16.0.3" || n.GuestIP() != "172.16.0.2" {
		t.Fatalf("new config from spec: %v %v", n2, err)
	}
}

func TestNetworkConfigValidation(t *testing.T) {
	good := NetworkSpec{GuestIP: "172.16.0.2", TapDevice: "smol0", GuestMAC: "AA:FC:00:00:00:01"}
	for _, tc := range []struct {
		name  string
		edit  func(*NetworkSpec)
		field string // "" means valid
	}{
		{"valid", func(s *NetworkSpec) {}, ""},
		{"guest missing", func(s *NetworkSpec) { s.GuestIP = "" }, "guest_ip"},
		{"guest not ip", func(s *NetworkSpec) { s.GuestIP = "172.16.0" }, "guest_ip"},
		{"guest ipv6", func(s *NetworkSpec) { s.GuestIP = "fd00::2" }, "guest_ip"},
		{"guest with prefix", func(s *NetworkSpec) { s.GuestIP = "172.16.0.2/24" }, "guest_ip"},
		{"gateway not ip", func(s *NetworkSpec) { s.GatewayIP = "gateway" }, "gateway_ip"},
		{"gateway other subnet", func(s *NetworkSpec) { s.GatewayIP = "172.16.1.1" }, "gateway_ip"},
		{"gateway equals guest", func(s *NetworkSpec) { s.GatewayIP = "172.16.0.2" }, "guest_ip"},
		{"guest is network address", func(s *NetworkSpec) { s.GuestIP = "172.16.0.0" }, "guest_ip"},
		{"guest is broadcast", func(s *NetworkSpec) { s.GuestIP = "172.16.0.255" }, "guest_ip"},
		{"netmask not contiguous", func(s *NetworkSpec) { s.Netmask = "255.0.255.0" }, "netmask"},
		{"netmask zero", func(s *NetworkSpec) { s.Netmask = "0.0.0.0" }, "netmask"},
		{"netmask /32", func(s *NetworkSpec) { s.Netmask = "255.255.255.255" }, "netmask"},
		{"netmask not ip", func(s *NetworkSpec) { s.Netmask = "24" }, "netmask"},
		{"netmask /16 ok", func(s *NetworkSpec) { s.Netmask = "255.255.0.0"; s.GatewayIP = "172.16.5.1" }, ""},
		{"tap missing", func(s *NetworkSpec) { s.TapDevice = "" }, "tap_device"},
		{"tap 16 chars", func(s *NetworkSpec) { s.TapDevice = "smol012345678901" }, "tap_device"},
		{"tap 15 chars ok", func(s *NetworkSpec) { s.TapDevice = "smol01234567890" }, ""},
		{"tap slash", func(s *NetworkSpec) { s.TapDevice = "smol/0" }, "tap_device"},
		{"tap space", func(s *NetworkSpec) { s.TapDevice = "smol 0" }, "tap_device"},
		{"tap tab", func(s *NetworkSpec) { s.TapDevice = "smol\t0" }, "tap_device"},
		{"tap dot", func(s *NetworkSpec) { s.TapDevice = "." }, "tap_device"},
		{"mac missing", func(s *NetworkSpec) { s.GuestMAC = "" }, "guest_mac"},
		{"mac dashes", func(s *NetworkSpec) { s.GuestMAC = "AA-FC-00-00-00-01" }, "guest_mac"},
		{"mac short", func(s *NetworkSpec) { s.GuestMAC = "AA:FC:00:00:01" }, "guest_mac"},
		{"mac bad hex", func(s *NetworkSpec) { s.GuestMAC = "AA:FC:00:00:00:0G" }, "guest_mac"},
		{"mac multicast", func(s *NetworkSpec) { s.GuestMAC = "01:00:5E:00:00:01" }, "guest_mac"},
		{"mac broadcast", func(s *NetworkSpec) { s.GuestMAC = "FF:FF:FF:FF:FF:FF" }, "guest_mac"},
		{"mac zero", func(s *NetworkSpec) { s.GuestMAC = "00:00:00:00:00:00" }, "guest_mac"},
		{"mac lower ok", func(s *NetworkSpec) { s.GuestMAC = "aa:fc:00:00:00:0a" }, ""},
		{"ssh port negative", func(s *NetworkSpec) { s.SSHHostPort = -1 }, "ssh_host_port"},
		{"ssh port too big", func(s *NetworkSpec) { s.SSHHostPort = 65536 }, "ssh_host_port"},
		{"ssh port max ok", func(s *NetworkSpec) { s.SSHHostPort = 65535 }, ""},
		{"ssh port 1 ok", func(s *NetworkSpec) { s.SSHHostPort = 1 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.edit(&s)
			n, err := NewNetworkConfig(s)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if n != nil || err == nil {
				t.Fatalf("accepted %+v", s)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("error %v names the wrong field; want %s", err, tc.field)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v is not ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("message %q does not name %s", err, tc.field)
			}
		})
	}
}

func TestNetworkConfigMACUpperCase(t *testing.T) {
	n, err := NewNetworkConfig(NetworkSpec{GuestIP: "172.16.0.2", TapDevice: "smol0", GuestMAC: "aa:fc:00:00:0a:bc"})
	if err != nil {
		t.Fatal(err)
	}
	if n.GuestMAC() != "AA:FC:00:00:0A:BC" {
		t.Fatalf("mac = %s", n.GuestMAC())
	}
}

func TestNetworkConfigJSON(t *testing.T) {
	n, _ := NewNetworkConfig(NetworkSpec{GuestIP: "172.16.0.2", TapDevice: "smol0", GuestMAC: "AA:FC:00:00:00:01", SSHHostPort: 2222})
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"guest_ip":"172.16.0.2","gateway_ip":"172.16.0.1","netmask":"255.255.255.0","tap_device":"smol0","guest_mac":"AA:FC:00:00:00:01","ssh_host_port":2222}`
	if string(b) != want {
		t.Fatalf("json = %s\nwant   %s", b, want)
	}
	var back NetworkConfig
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != *n {
		t.Fatalf("round trip: %v != %v", back, *n)
	}
	// No forwarding is null, as SmolVM writes None.
	n2, _ := NewNetworkConfig(NetworkSpec{GuestIP: "172.16.0.2", TapDevice: "smol0", GuestMAC: "AA:FC:00:00:00:01"})
	b, _ = json.Marshal(n2)
	if !strings.Contains(string(b), `"ssh_host_port":null`) {
		t.Fatalf("json = %s", b)
	}
	// Defaults apply to absent fields, and decoding validates.
	if err := json.Unmarshal([]byte(`{"guest_ip":"172.16.0.9","tap_device":"smol3","guest_mac":"aa:fc:00:00:00:04"}`), &back); err != nil {
		t.Fatal(err)
	}
	if back.GatewayIP() != "172.16.0.1" || back.GuestMAC() != "AA:FC:00:00:00:04" || back.SSHHostPort() != 0 {
		t.Fatalf("decoded %v", &back)
	}
	err = json.Unmarshal([]byte(`{"guest_ip":"172.16.0.1","tap_device":"smol3","guest_mac":"AA:FC:00:00:00:04"}`), &back)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "guest_ip" {
		t.Fatalf("decoding guest == gateway: %v", err)
	}
}
