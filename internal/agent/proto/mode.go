package proto

import "io/fs"

// Unix permission bits beyond rwxrwxrwx.
const (
	unixSetuid = 0o4000
	unixSetgid = 0o2000
	unixSticky = 0o1000
)

// ModeToWire converts the permission bits of m (including setuid, setgid
// and sticky) to Unix mode bits for the wire.
func ModeToWire(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= unixSetuid
	}
	if m&fs.ModeSetgid != 0 {
		u |= unixSetgid
	}
	if m&fs.ModeSticky != 0 {
		u |= unixSticky
	}
	return u
}

// ModeFromWire converts Unix mode bits from the wire to an fs.FileMode.
func ModeFromWire(u uint32) fs.FileMode {
	m := fs.FileMode(u) & fs.ModePerm
	if u&unixSetuid != 0 {
		m |= fs.ModeSetuid
	}
	if u&unixSetgid != 0 {
		m |= fs.ModeSetgid
	}
	if u&unixSticky != 0 {
		m |= fs.ModeSticky
	}
	return m
}
