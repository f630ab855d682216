// Package bootparams is the contract between the host and the guest's init: the
// smolvm.* keys on the kernel command line that tell the guest who it is, which
// disk is its root and how to configure its network.
//
// The host formats Params with Format; the guest's init parses /proc/cmdline
// with Parse. Both sides import this package, so the key names cannot drift.
package bootparams

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Kernel command-line keys understood by the guest init.
const (
	KeyID        = "smolvm.id"        // VM id; becomes the hostname
	KeyRoot      = "smolvm.root"      // root block device, e.g. /dev/vda
	KeyRootFS    = "smolvm.rootfs"    // root filesystem type, e.g. ext4
	KeyIP        = "smolvm.ip"        // guest address with prefix, e.g. 172.16.0.2/24
	KeyGateway   = "smolvm.gw"        // default gateway, e.g. 172.16.0.1
	KeyDNS       = "smolvm.dns"       // comma-separated resolvers
	KeyAgentPort = "smolvm.agentport" // vsock port the agent listens on (0: no vsock)
	KeyAgentPeer = "smolvm.agentpeer" // "any": vsock peers need no privileged port (see Params.AgentAnyPeer)
	KeyMTU       = "smolvm.mtu"       // eth0's MTU, e.g. 1450 (absent: the kernel's default)
	KeySSHKey    = "smolvm.sshkey"    // root's SSH key: "ed25519:" and the raw key in unpadded base64url (see Params.SSHKey)
)

// ReadyMarker starts the line the guest init prints on the serial console
// when the agent is ready to serve, followed by " uptime=<seconds>s".
const ReadyMarker = "SMOLVM_READY"

// Quiet is the kernel's console level every backend boots with: only
// errors and worse reach the serial console (the init's own lines always
// do). Under emulation each console byte is a trap into the VMM, and the
// host's logger copies them: the kernel's full boot log (about 17 KB)
// cost a TCG boot about 65 ms. A later "loglevel=7" in boot_args brings the
// full log back.
const Quiet = "quiet"

// Params is what the host tells the guest at boot. The zero value means no
// network, root on /dev/vda as ext4.
type Params struct {
	// ID is the VM id, used as the guest's hostname.
	ID string
	// Root is the root block device; empty means /dev/vda.
	Root string
	// RootFS is the root filesystem type; empty means ext4.
	RootFS string
	// Addr is the guest's address and prefix on eth0; invalid means no network.
	Addr netip.Prefix
	// Gateway is the default route; invalid means none.
	Gateway netip.Addr
	// DNS lists the resolvers written to /etc/resolv.conf.
	DNS []netip.Addr
	// AgentPort is the vsock port for the agent; 0 means the agent uses
	// virtio-serial only.
	AgentPort uint32
	// AgentAnyPeer lets the agent accept vsock connections from any host
	// port. By default (false) it accepts only peers whose source port is
	// below 1024, which on the host needs CAP_NET_BIND_SERVICE: an
	// unprivileged local user cannot reach the agent. Firecracker's hybrid
	// vsock sets it: there the host side is a Unix socket in a root-only
	// directory and Firecracker picks the source port itself.
	AgentAnyPeer bool
	// MTU is eth0's MTU; 0 means the kernel's default (1500). An attached
	// VM takes its interface's (a pod's overlay network may use less).
	MTU int
	// SSHKey is the raw 32-byte Ed25519 public key that the init writes
	// to /root/.ssh/authorized_keys before the ready marker (see
	// AuthorizedKey); nil writes nothing. It is public: the guest may read
	// it from /proc/cmdline. On the command line it takes 65 bytes.
	SSHKey []byte
}

// Format renders p as space-separated key=value words for the kernel command line.
func (p Params) Format() string {
	var w []string
	add := func(k, v string) {
		if v != "" {
			w = append(w, k+"="+v)
		}
	}
	add(KeyID, p.ID)
	add(KeyRoot, p.Root)
	add(KeyRootFS, p.RootFS)
	if p.Addr.IsValid() {
		add(KeyIP, p.Addr.String())
	}
	if p.Gateway.IsValid() {
		add(KeyGateway, p.Gateway.String())
	}
	if len(p.DNS) > 0 {
		s := make([]string, len(p.DNS))
		for i, a := range p.DNS {
			s[i] = a.String()
		}
		add(KeyDNS, strings.Join(s, ","))
	}
	if p.AgentPort != 0 {
		add(KeyAgentPort, strconv.FormatUint(uint64(p.AgentPort), 10))
	}
	if p.AgentAnyPeer {
		add(KeyAgentPeer, "any")
	}
	if p.MTU != 0 {
		add(KeyMTU, strconv.Itoa(p.MTU))
	}
	if len(p.SSHKey) == ed25519KeySize {
		add(KeySSHKey, sshKeyPrefix+base64.RawURLEncoding.EncodeToString(p.SSHKey))
	}
	return strings.Join(w, " ")
}

// ed25519KeySize is the size of a raw Ed25519 public key.
const ed25519KeySize = 32

// sshKeyPrefix starts a KeySSHKey value: the key type, so that another
// type could be added without a new key.
const sshKeyPrefix = "ed25519:"

// SSHKeyComment ends the authorized_keys line of Params.SSHKey, as the
// host's key file names it.
const SSHKeyComment = "smolvm"

func parseSSHKey(v string) ([]byte, error) {
	b64, ok := strings.CutPrefix(v, sshKeyPrefix)
	if !ok {
		return nil, errors.New(`want "ed25519:" and the key in base64url`)
	}
	k, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil {
		return nil, err
	}
	if len(k) != ed25519KeySize {
		return nil, fmt.Errorf("an Ed25519 key has %d bytes, not %d", ed25519KeySize, len(k))
	}
	return k, nil
}

// AuthorizedKey returns the authorized_keys line (with its newline) of a
// raw Ed25519 public key: "ssh-ed25519 <SSH wire form in base64> smolvm".
// It is built here, without an SSH library, because the guest agent must
// not link package net.
func AuthorizedKey(key []byte) string {
	const typ = "ssh-ed25519"
	wire := binary.BigEndian.AppendUint32(nil, uint32(len(typ)))
	wire = append(wire, typ...)
	wire = binary.BigEndian.AppendUint32(wire, uint32(len(key)))
	wire = append(wire, key...)
	return typ + " " + base64.StdEncoding.EncodeToString(wire) + " " + SSHKeyComment + "\n"
}

// RootDevice returns Root or its default.
func (p Params) RootDevice() string {
	if p.Root == "" {
		return "/dev/vda"
	}
	return p.Root
}

// RootFSType returns RootFS or its default.
func (p Params) RootFSType() string {
	if p.RootFS == "" {
		return "ext4"
	}
	return p.RootFS
}

// Parse reads the smolvm.* keys from a kernel command line and ignores every
// other word. A malformed value of a known key is an error naming the key.
func Parse(cmdline string) (Params, error) {
	var p Params
	for _, word := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(word, "=")
		if !ok || !strings.HasPrefix(k, "smolvm.") {
			continue
		}
		var err error
		switch k {
		case KeyID:
			p.ID = v
		case KeyRoot:
			p.Root = v
		case KeyRootFS:
			p.RootFS = v
		case KeyIP:
			p.Addr, err = netip.ParsePrefix(v)
		case KeyGateway:
			p.Gateway, err = netip.ParseAddr(v)
		case KeyDNS:
			for _, s := range strings.Split(v, ",") {
				var a netip.Addr
				if a, err = netip.ParseAddr(s); err != nil {
					break
				}
				p.DNS = append(p.DNS, a)
			}
		case KeyAgentPort:
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			p.AgentPort = uint32(n)
		case KeyAgentPeer:
			p.AgentAnyPeer = v == "any"
		case KeyMTU:
			var n uint64
			if n, err = strconv.ParseUint(v, 10, 16); err == nil && n < 68 {
				err = fmt.Errorf("below the IPv4 minimum of 68")
			}
			p.MTU = int(n)
		case KeySSHKey:
			p.SSHKey, err = parseSSHKey(v)
		}
		if err != nil {
			return Params{}, fmt.Errorf("kernel command line %s=%q: %w", k, v, err)
		}
	}
	return p, nil
}

// ModuleParams returns the "name.param=value" words of cmdline that belong to
// module name, as the "param=value ..." string finit_module expects. The
// kernel keeps such words for built-in code only; an init that loads a module
// itself must pass them on (QEMU's microvm describes virtio-mmio devices as
// virtio_mmio.device=... words).
func ModuleParams(cmdline, module string) string {
	var out []string
	prefix := module + "."
	alt := strings.ReplaceAll(module, "_", "-") + "."
	for _, word := range strings.Fields(cmdline) {
		switch {
		case strings.HasPrefix(word, prefix):
			out = append(out, strings.TrimPrefix(word, prefix))
		case alt != prefix && strings.HasPrefix(word, alt):
			out = append(out, strings.TrimPrefix(word, alt))
		}
	}
	return strings.Join(out, " ")
}

// CheckUserArgs reports the first word of user-supplied kernel arguments
// that would override what the host sets: a smolvm.* key (the guest reads
// those as instructions from the host) or init=/rdinit= (which would
// replace the agent as PID 1). Quotes and the kernel's equivalence of '-'
// and '_' in parameter names do not get around it.
func CheckUserArgs(args string) error {
	for _, word := range strings.Fields(args) {
		k, _, _ := strings.Cut(strings.ReplaceAll(word, `"`, ""), "=")
		norm := strings.ReplaceAll(strings.ToLower(k), "-", "_")
		switch {
		case strings.HasPrefix(norm, "smolvm."):
			return fmt.Errorf("%q: smolvm.* keys are set by the host", word)
		case norm == "init" || norm == "rdinit":
			return fmt.Errorf("%q: the init is the smolvm agent and cannot be replaced", word)
		}
	}
	return nil
}
