package proto

// MethodRestore brings a guest restored from a snapshot up to date: its
// clock, its random number generator and its network identity; args
// RestoreArgs, result RestoreResult.
const MethodRestore = "restore"

// MaxRestoreEntropy bounds RestoreArgs.Entropy.
const MaxRestoreEntropy = 512

// RestoreArgs are the arguments of MethodRestore.
type RestoreArgs struct {
	// TimeUnixNano is the host's wall clock when the request was sent.
	TimeUnixNano int64 `json:"time_unix_nano"`
	// Entropy is random bytes from the host, credited to the guest's
	// entropy pool before the kernel's CRNG is reseeded (at most
	// MaxRestoreEntropy).
	Entropy []byte `json:"entropy,omitempty"`
	// Hostname is the VM's new host name; empty keeps it.
	Hostname string `json:"hostname,omitempty"`
	// Network is the VM's network identity; nil leaves the network alone.
	Network *RestoreNetwork `json:"network,omitempty"`
}

// RestoreNetwork is a guest's network identity after a restore.
type RestoreNetwork struct {
	// MAC is eth0's MAC address (aa:bb:cc:dd:ee:ff).
	MAC string `json:"mac"`
	// Addr is eth0's IPv4 address with prefix length (172.16.3.2/24).
	Addr string `json:"addr"`
	// Gateway is the default route's gateway.
	Gateway string `json:"gateway"`
	// DNS are the resolvers written to /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
}

// RestoreResult is the result of MethodRestore.
type RestoreResult struct {
	// ClockStepMillis is how far the guest's clock was moved forward.
	ClockStepMillis int64 `json:"clock_step_ms"`
	// Reseeded reports whether the kernel's CRNG was reseeded with the
	// host's entropy.
	Reseeded bool `json:"reseeded"`
}
