package server

import (
	"testing"

	"golang.org/x/sys/unix"
)

// Only the host connecting from a privileged port reaches the agent over
// vsock, unless any peer is allowed.
func TestPeerAllowed(t *testing.T) {
	tests := []struct {
		peer    unix.Sockaddr
		anyPeer bool
		want    bool
	}{
		{&unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: 1023}, false, true},
		{&unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: 600}, false, true},
		{&unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: 1024}, false, false},
		{&unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: 49152}, false, false},
		{&unix.SockaddrVM{CID: 5, Port: 600}, false, false}, // another guest
		{&unix.SockaddrUnix{Name: "x"}, false, false},
		{nil, false, false},
		{&unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: 1 << 30}, true, true},
	}
	for _, tt := range tests {
		if got := PeerAllowed(tt.peer, tt.anyPeer); got != tt.want {
			t.Errorf("PeerAllowed(%+v, any=%v) = %v, want %v", tt.peer, tt.anyPeer, got, tt.want)
		}
	}
}
