package server

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// TestRestoreRejectsBadInput checks that a restore request is validated
// whole before anything is applied (clock, RNG and network are not
// touched here: every case fails validation).
func TestRestoreRejectsBadInput(t *testing.T) {
	s := New(Options{})
	net := func(mac, addr, gw string, dns ...string) *proto.RestoreNetwork {
		return &proto.RestoreNetwork{MAC: mac, Addr: addr, Gateway: gw, DNS: dns}
	}
	for name, a := range map[string]proto.RestoreArgs{
		"entropy":  {Entropy: make([]byte, proto.MaxRestoreEntropy+1)},
		"addr":     {Network: net("aa:fc:00:00:00:01", "172.16.0.2", "172.16.0.1")},
		"gateway":  {Network: net("aa:fc:00:00:00:01", "172.16.0.2/24", "gw")},
		"mac":      {Network: net("aa:fc:00:00:00", "172.16.0.2/24", "172.16.0.1")},
		"dns":      {Network: net("aa:fc:00:00:00:01", "172.16.0.2/24", "172.16.0.1", "x")},
		"hostname": {Hostname: strings.Repeat("h", 65)},
	} {
		raw, _ := json.Marshal(a)
		if _, err := s.restore(nil, raw); !errors.Is(err, proto.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want invalid argument", name, err)
		}
	}
	if _, err := s.restore(nil, json.RawMessage(`{"entropy": 5}`)); !errors.Is(err, proto.ErrInvalidArgument) {
		t.Errorf("malformed: %v", err)
	}
}
