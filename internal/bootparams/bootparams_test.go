package bootparams

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestModuleParams(t *testing.T) {
	cmdline := "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 virtio_mmio_x.y=1 vsock.a=b smolvm.id=x"
	tests := []struct{ module, want string }{
		{"virtio_mmio", "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"},
		{"vsock", "a=b"},
		{"virtio_blk", ""},
		{"smolvm", "id=x"},
	}
	for _, tt := range tests {
		if got := ModuleParams(cmdline, tt.module); got != tt.want {
			t.Errorf("ModuleParams(%q) = %q, want %q", tt.module, got, tt.want)
		}
	}
}

func TestFormatParseRoundTrip(t *testing.T) {
	p := Params{
		ID: "vm1", Root: "/dev/vdb", RootFS: "ext4",
		Addr:      netip.MustParsePrefix("172.16.0.2/24"),
		Gateway:   netip.MustParseAddr("172.16.0.1"),
		DNS:       []netip.Addr{netip.MustParseAddr("172.16.0.1"), netip.MustParseAddr("9.9.9.9")},
		AgentPort: 1024,
		MTU:       1450,
	}
	got, err := Parse("console=ttyS0 " + p.Format() + " quiet")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("round trip:\n%+v\n%+v", got, p)
	}
	var zero Params
	if zero.RootDevice() != "/dev/vda" || zero.RootFSType() != "ext4" || zero.Format() != "" {
		t.Error("zero Params defaults")
	}
	if _, err := Parse("smolvm.ip=bogus"); err == nil {
		t.Error("bad smolvm.ip accepted")
	}
}

func TestCheckUserArgs(t *testing.T) {
	for _, ok := range []string{"", "quiet loglevel=3", "mitigations=off", "initcall_debug", "foo.init=1"} {
		if err := CheckUserArgs(ok); err != nil {
			t.Errorf("CheckUserArgs(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"init=/bin/sh", "quiet rdinit=/bin/sh", `"init=/bin/sh"`, "smolvm.agentport=0", "smolvm.id=x", "SMOLVM.ip=1.2.3.4/24", "smolvm.new", "Smolvm.root=/dev/vdb"} {
		if err := CheckUserArgs(bad); err == nil {
			t.Errorf("CheckUserArgs(%q) accepted", bad)
		}
	}
}

func TestAgentAnyPeerRoundTrip(t *testing.T) {
	for _, anyPeer := range []bool{false, true} {
		p, err := Parse(Params{ID: "x", AgentPort: 1024, AgentAnyPeer: anyPeer}.Format())
		if err != nil || p.AgentAnyPeer != anyPeer {
			t.Fatalf("AgentAnyPeer %v -> %+v, %v", anyPeer, p, err)
		}
	}
}
