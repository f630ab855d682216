package firecracker

// Request and answer bodies of Firecracker's API, named after the
// definitions of its Swagger specification (firecracker.yaml). Optional
// fields are omitted when empty so that older Firecracker releases, which
// reject unknown fields, accept them.

// Action types of PUT /actions.
const (
	actionInstanceStart  = "InstanceStart"
	actionSendCtrlAltDel = "SendCtrlAltDel"
)

// States of GET / (InstanceInfo.state).
const (
	fcStateNotStarted = "Not started"
	fcStateRunning    = "Running"
	fcStatePaused     = "Paused"
)

// logger is the Logger definition (PUT /logger).
type logger struct {
	LogPath   string `json:"log_path"`
	Level     string `json:"level,omitempty"`
	ShowLevel bool   `json:"show_level"`
}

// metrics is the Metrics definition (PUT /metrics).
type metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// machineConfig is the MachineConfiguration definition (PUT /machine-config).
type machineConfig struct {
	VCPUCount       int  `json:"vcpu_count"`
	MemSizeMiB      int  `json:"mem_size_mib"`
	SMT             bool `json:"smt"`
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
}

// bootSource is the BootSource definition (PUT /boot-source).
type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// drive is the Drive definition (PUT /drives/{drive_id}).
type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	// RateLimiter throttles the drive; nil means none.
	RateLimiter *rateLimiter `json:"rate_limiter,omitempty"`
}

// rateLimiter is the RateLimiter definition: independent byte and
// operation token buckets.
type rateLimiter struct {
	Bandwidth *tokenBucket `json:"bandwidth,omitempty"`
	Ops       *tokenBucket `json:"ops,omitempty"`
}

// tokenBucket is the TokenBucket definition: Size tokens refilled every
// RefillTime milliseconds.
type tokenBucket struct {
	Size       int64 `json:"size"`
	RefillTime int64 `json:"refill_time"`
}

// diskLimiter is the rate limiter of spec's disks: bytes and operations
// per second; nil when neither is limited.
func diskLimiter(bps, iops int64) *rateLimiter {
	if bps <= 0 && iops <= 0 {
		return nil
	}
	r := &rateLimiter{}
	if bps > 0 {
		r.Bandwidth = &tokenBucket{Size: bps, RefillTime: 1000}
	}
	if iops > 0 {
		r.Ops = &tokenBucket{Size: iops, RefillTime: 1000}
	}
	return r
}

// networkInterface is the NetworkInterface definition
// (PUT /network-interfaces/{iface_id}).
type networkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// vsock is the Vsock definition (PUT /vsock).
type vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// instanceAction is the InstanceActionInfo definition (PUT /actions).
type instanceAction struct {
	ActionType string `json:"action_type"`
}

// vmState is the Vm definition (PATCH /vm): "Paused" or "Resumed".
type vmState struct {
	State string `json:"state"`
}

// instanceInfo is the InstanceInfo definition (GET /).
type instanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// snapshotCreate is the SnapshotCreateParams definition (PUT /snapshot/create).
type snapshotCreate struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// memoryBackend is the MemoryBackend definition.
type memoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// networkOverride is the NetworkOverride definition.
type networkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// vsockOverride is the VsockOverride definition.
type vsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// snapshotLoad is the SnapshotLoadParams definition (PUT /snapshot/load).
type snapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *memoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm"`
	NetworkOverrides []networkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *vsockOverride    `json:"vsock_override,omitempty"`
}
