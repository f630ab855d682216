package bootparams

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
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

func TestSSHKey(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	word := Params{SSHKey: pub}.Format()
	if !strings.HasPrefix(word, KeySSHKey+"=ed25519:") || len(word) >= 200 || strings.ContainsAny(word, " \"\t") {
		t.Fatalf("SSHKey word %q (%d bytes)", word, len(word))
	}
	p, err := Parse("quiet " + word)
	if err != nil || !bytes.Equal(p.SSHKey, pub) {
		t.Fatalf("round trip: %x, %v", p.SSHKey, err)
	}
	// The line the guest writes is what ssh(1) and sshd read.
	spk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spk))) + " smolvm\n"
	if got := AuthorizedKey(pub); got != want {
		t.Fatalf("AuthorizedKey:\n%q\nwant\n%q", got, want)
	}
	// Only a 32-byte key is formatted; bad values are errors naming the key.
	if w := (Params{SSHKey: []byte("short")}).Format(); w != "" {
		t.Errorf("a short key formatted as %q", w)
	}
	for _, bad := range []string{"AAAA", "ed25519:", "ed25519:!!!", "ed25519:" + strings.Repeat("A", 42), "rsa:" + strings.Repeat("A", 43)} {
		if _, err := Parse(KeySSHKey + "=" + bad); err == nil || !strings.Contains(err.Error(), KeySSHKey) {
			t.Errorf("Parse(%q) = %v", bad, err)
		}
	}
	// Users cannot set it through boot_args.
	for _, bad := range []string{word, "smolvm.SSHkey=x", `"smolvm.sshkey=ed25519:x"`} {
		if err := CheckUserArgs(bad); err == nil {
			t.Errorf("CheckUserArgs(%q) accepted", bad)
		}
	}
}

// TestCommandLineSize checks that the host's part of the kernel command
// line, at its longest, stays well under x86's COMMAND_LINE_SIZE (2048),
// leaving room for the VMM's own words and the user's boot_args.
func TestCommandLineSize(t *testing.T) {
	key := make([]byte, 32)
	p := Params{
		ID: strings.Repeat("x", 64), Root: "/dev/vda", RootFS: "ext4",
		Addr:    netip.MustParsePrefix("172.16.255.254/24"),
		Gateway: netip.MustParseAddr("172.16.255.1"),
		DNS: []netip.Addr{netip.MustParseAddr("255.255.255.255"), netip.MustParseAddr("255.255.255.255"),
			netip.MustParseAddr("255.255.255.255"), netip.MustParseAddr("255.255.255.255")},
		AgentPort: 4294967295, AgentAnyPeer: true, SSHKey: key,
	}
	ours := p.Format()
	// QEMU's words (console, reboot, panic, tsc_early_khz) and microvm's
	// virtio_mmio.device= word per device (disk, NIC, serial, vsock, rng,
	// balloon, shares).
	vmmWords := "console=ttyS0 reboot=t panic=-1 tsc_early_khz=4294967" + strings.Repeat(" virtio_mmio.device=512@0xfeb00e00:12", 10)
	if n := len(ours) + 1 + len(vmmWords); n > 1024 {
		t.Fatalf("the host's command line takes %d bytes, want at most 1024 of 2048:\n%s %s", n, ours, vmmWords)
	}
}
