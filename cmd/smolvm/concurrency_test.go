package main

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestConcurrentProcesses runs many smolvm processes at once, on different
// VMs and on the same VM: no two VMs get the same id, IP, TAP, MAC, port or
// directory, and no process sees "database is locked".
func TestConcurrentProcesses(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	t.Cleanup(func() { cli(t, dir, "cleanup", "--all") })
	// 8 processes create and boot 8 VMs at once.
	const n = 8
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = cli(t, dir, "create", "--start", "--image", "minimal", "--memory", "192", "--vcpus", "1", "--ssh-port", "auto", "--json")
		}()
	}
	wg.Wait()
	ids, ips, taps, macs, ports := map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]bool{}, map[int]bool{}
	for i, r := range results {
		if r.code != 0 || strings.Contains(r.stderr, "locked") {
			t.Fatalf("create %d: %+v", i, r)
		}
		var inf smolvm.VMInfo
		if err := json.Unmarshal([]byte(r.stdout), &inf); err != nil {
			t.Fatal(err)
		}
		n := inf.Network
		ids[inf.VMID], ips[n.GuestIP()], taps[n.TapDevice()], macs[n.GuestMAC()], ports[n.SSHHostPort()] = true, true, true, true, true
	}
	if len(ids) != n || len(ips) != n || len(taps) != n || len(macs) != n || len(ports) != n {
		t.Fatalf("collisions: %d ids, %d IPs, %d TAPs, %d MACs, %d ports of %d VMs", len(ids), len(ips), len(taps), len(macs), len(ports), n)
	}
	// All of them answer through the agent, asked at once.
	execs := map[string]*result{}
	for id := range ids {
		execs[id] = &result{}
	}
	for id, r := range execs {
		wg.Add(1)
		go func() { defer wg.Done(); *r = cli(t, dir, "exec", id, "--", "hostname") }()
	}
	wg.Wait()
	for id, r := range execs {
		if r.code != 0 || r.stdout != id+"\n" {
			t.Fatalf("exec on %s: %+v", id, r)
		}
	}
	// The same VM from several processes at once: one boots it, the others
	// are told it already runs; readers meanwhile never fail.
	var one string
	for id := range ids {
		one = id
		break
	}
	if r := cli(t, dir, "stop", one); r.code != 0 {
		t.Fatalf("stop: %+v", r)
	}
	starts := make([]result, 4)
	infos := make([]result, 8)
	for i := range starts {
		wg.Add(1)
		go func() { defer wg.Done(); starts[i] = cli(t, dir, "start", one) }()
	}
	for i := range infos {
		wg.Add(1)
		go func() { defer wg.Done(); infos[i] = cli(t, dir, "list", "--all", "--json") }()
	}
	wg.Wait()
	ok := 0
	for _, r := range starts {
		switch {
		case r.code == 0:
			ok++
		case !strings.Contains(r.stderr, "already running"):
			t.Errorf("concurrent start: %+v", r)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent starts booted the VM, want 1", ok, len(starts))
	}
	for _, r := range infos {
		if r.code != 0 || strings.Contains(r.stderr, "locked") {
			t.Errorf("concurrent list: %+v", r)
		}
	}
	if r := cli(t, dir, "exec", one, "--", "echo up"); r.stdout != "up\n" {
		t.Fatalf("the VM started concurrently: %+v", r)
	}
	// Delete all at once, each VM from two processes.
	dels := make([]result, 0, 2*n)
	var mu sync.Mutex
	for id := range ids {
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := cli(t, dir, "delete", id)
				mu.Lock()
				dels = append(dels, r)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	deleted := 0
	for _, r := range dels {
		switch {
		case r.code == 0:
			deleted++
		case !strings.Contains(r.stderr, "no such VM"):
			t.Errorf("concurrent delete: %+v", r)
		}
	}
	if deleted != n {
		t.Errorf("%d deletes succeeded, want %d", deleted, n)
	}
	if r := cli(t, dir, "list", "--all", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("left: %s", r.stdout)
	}
}
