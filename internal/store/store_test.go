package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A worker process for TestConcurrentProcesses: it creates N VMs with a
// lease and an SSH port each and prints the allocations as JSON lines.
func TestMain(m *testing.M) {
	if dir := os.Getenv("STORE_TEST_WORKER_DIR"); dir != "" {
		os.Exit(worker(dir, os.Getenv("STORE_TEST_WORKER_NAME")))
	}
	os.Exit(m.Run())
}

func worker(dir, name string) int {
	ctx := context.Background()
	s, err := Open(ctx, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	for i := 0; i < 20; i++ {
		a, err := s.CreateVM(ctx, VM{ID: fmt.Sprintf("%s-%d", name, i), Status: "created", Config: []byte("{}")}, Alloc{Lease: true, SSHPort: -1})
		if err != nil {
			fmt.Fprintln(os.Stderr, "allocate:", err)
			return 1
		}
		b, _ := json.Marshal(struct {
			IP, TAP, MAC string
			Port         int
		}{a.Lease.IP.String(), a.Lease.TAP, a.Lease.MAC, a.SSH.HostPort})
		fmt.Println(string(b))
	}
	return 0
}

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestLeaseFor(t *testing.T) {
	for _, tc := range []struct {
		i           int
		ip, gw, tap string
		mac         string
	}{
		{0, "172.16.0.2", "172.16.0.1", "smol0", "AA:FC:00:00:00:01"},
		{1, "172.16.0.3", "172.16.0.1", "smol1", "AA:FC:00:00:00:02"},
		{252, "172.16.0.254", "172.16.0.1", "smol252", "AA:FC:00:00:00:FD"},
		{253, "172.16.1.2", "172.16.1.1", "smol253", "AA:FC:00:00:00:FE"},
		{255, "172.16.1.4", "172.16.1.1", "smol255", "AA:FC:00:00:01:00"},
		{MaxLeases - 1, "172.16.255.254", "172.16.255.1", "smol64767", "AA:FC:00:00:FD:00"},
	} {
		l := LeaseFor(tc.i)
		if l.IP.String() != tc.ip || l.Gateway.String() != tc.gw || l.TAP != tc.tap || l.MAC != tc.mac {
			t.Errorf("LeaseFor(%d) = %s %s %s %s, want %s %s %s %s", tc.i, l.IP, l.Gateway, l.TAP, l.MAC, tc.ip, tc.gw, tc.tap, tc.mac)
		}
		if len(l.TAP) > 15 {
			t.Errorf("LeaseFor(%d).TAP %q longer than IFNAMSIZ", tc.i, l.TAP)
		}
	}
	// No lease is ever a network, broadcast or gateway address.
	seen := map[string]bool{}
	for i := 0; i < MaxLeases; i++ {
		b := LeaseFor(i).IP.As4()
		if b[3] == 0 || b[3] == 1 || b[3] == 255 {
			t.Fatalf("lease %d has address %v", i, b)
		}
		k := LeaseFor(i).IP.String()
		if seen[k] {
			t.Fatalf("lease %d repeats %s", i, k)
		}
		seen[k] = true
	}
}

func TestCreateGetUpdateDelete(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	a, err := s.CreateVM(ctx, VM{ID: "a", Status: "created", Config: []byte(`{"x":1}`)}, Alloc{Lease: true, SSHPort: -1})
	if err != nil {
		t.Fatal(err)
	}
	if a.Lease.IP.String() != "172.16.0.2" || a.Lease.TAP != "smol0" || a.SSH.HostPort < FirstPort {
		t.Fatalf("first allocation = %+v %+v", a.Lease, a.SSH)
	}
	if _, err := s.CreateVM(ctx, VM{ID: "a", Status: "created", Config: []byte(`{}`)}, Alloc{Lease: true}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate id: err = %v, want ErrExists", err)
	}
	// The failed create allocated nothing.
	if ls, _ := s.Leases(ctx); len(ls) != 1 {
		t.Fatalf("leases after failed create = %d, want 1", len(ls))
	}
	v, err := s.UpdateVM(ctx, "a", func(v *VM) error { v.Status = "running"; v.PID = 42; return nil })
	if err != nil || v.Status != "running" {
		t.Fatalf("update = %+v, %v", v, err)
	}
	got, err := s.GetVM(ctx, "a")
	if err != nil || got.PID != 42 || string(got.Config) != `{"x":1}` || !got.Updated.After(got.Created) && !got.Updated.Equal(got.Created) {
		t.Fatalf("get = %+v, %v", got, err)
	}
	if _, err := s.UpdateVM(ctx, "a", func(v *VM) error { return errors.New("no") }); err == nil {
		t.Fatal("update whose fn fails succeeded")
	}
	if got, _ := s.GetVM(ctx, "a"); got.Status != "running" {
		t.Fatalf("failed update changed the row: %+v", got)
	}
	if err := s.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if err := s.DeleteVM(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete deleted: %v", err)
	}
	if ls, _ := s.Leases(ctx); len(ls) != 0 {
		t.Fatalf("leases after delete = %v", ls)
	}
	if ps, _ := s.Ports(ctx, ""); len(ps) != 0 {
		t.Fatalf("ports after delete = %v", ps)
	}
}

func TestLeaseReuseLowestFree(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for i := 0; i < 3; i++ {
		if _, err := s.CreateVM(ctx, VM{ID: strconv.Itoa(i), Status: "created", Config: []byte("{}")}, Alloc{Lease: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteVM(ctx, "1"); err != nil {
		t.Fatal(err)
	}
	a, err := s.CreateVM(ctx, VM{ID: "x", Status: "created", Config: []byte("{}")}, Alloc{Lease: true})
	if err != nil {
		t.Fatal(err)
	}
	if a.Lease.Index != 1 || a.Lease.IP.String() != "172.16.0.3" {
		t.Fatalf("reused lease = %+v, want index 1", a.Lease)
	}
	l, err := s.LeaseOf(ctx, "x")
	if err != nil || l != *a.Lease {
		t.Fatalf("LeaseOf = %+v, %v", l, err)
	}
}

func TestLeasesExhausted(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	defer func(n int) { leaseLimit = n }(leaseLimit)
	leaseLimit = 3
	for i := 0; i < 3; i++ {
		if _, err := s.CreateVM(ctx, VM{ID: strconv.Itoa(i), Status: "created", Config: []byte("{}")}, Alloc{Lease: true}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.CreateVM(ctx, VM{ID: "one-more", Status: "created", Config: []byte("{}")}, Alloc{Lease: true})
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	if _, err := s.GetVM(ctx, "one-more"); !errors.Is(err, ErrNotFound) {
		t.Fatal("a failed allocation left its VM row behind")
	}
}

func TestPortsSkipBoundAndTaken(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	// Occupy the first automatic port on the host.
	l, err := net.Listen("tcp", ":"+strconv.Itoa(FirstPort))
	if err != nil {
		t.Skipf("port %d busy already: %v", FirstPort, err)
	}
	defer l.Close()
	a, err := s.CreateVM(ctx, VM{ID: "a", Status: "created", Config: []byte("{}")}, Alloc{SSHPort: -1})
	if err != nil {
		t.Fatal(err)
	}
	if a.SSH.HostPort == FirstPort {
		t.Fatalf("allocated port %d that is bound on the host", FirstPort)
	}
	if _, err := s.CreateVM(ctx, VM{ID: "b", Status: "created", Config: []byte("{}")}, Alloc{SSHPort: FirstPort}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "in use on this host") {
		t.Fatalf("explicit bound port: err = %v", err)
	}
	if _, err := s.AllocatePort(ctx, "a", 80, KindExpose, a.SSH.HostPort); !errors.Is(err, ErrExists) {
		t.Fatalf("explicit taken port: err = %v", err)
	}
	p, err := s.AllocatePort(ctx, "a", 8080, KindExpose, 0)
	if err != nil || p.HostPort == a.SSH.HostPort || p.HostPort == FirstPort {
		t.Fatalf("second port = %+v, %v", p, err)
	}
	ps, _ := s.Ports(ctx, "a")
	if len(ps) != 2 {
		t.Fatalf("ports = %+v", ps)
	}
	if err := s.ReleasePort(ctx, p.HostPort); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleasePort(ctx, p.HostPort); !errors.Is(err, ErrNotFound) {
		t.Fatalf("double release: %v", err)
	}
}

func TestSnapshots(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	if err := s.AddSnapshot(ctx, Snapshot{ID: "s1", VMID: "a", Path: "/x"}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSnapshot(ctx, Snapshot{ID: "s1", VMID: "a", Path: "/y"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate snapshot: %v", err)
	}
	ss, err := s.Snapshots(ctx, "a")
	if err != nil || len(ss) != 1 || ss[0].Path != "/x" {
		t.Fatalf("snapshots = %+v, %v", ss, err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if ss, _ := s.Snapshots(ctx, ""); len(ss) != 0 {
		t.Fatalf("after delete: %+v", ss)
	}
}

func TestSchemaVersionAndNewerRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var v int
	s.db.QueryRow("PRAGMA user_version").Scan(&v)
	if v != SchemaVersion {
		t.Fatalf("user_version = %d, want %d", v, SchemaVersion)
	}
	var mode string
	s.db.QueryRow("PRAGMA journal_mode").Scan(&mode)
	if mode != "wal" {
		t.Fatalf("journal_mode = %q, want wal", mode)
	}
	s.db.Exec(fmt.Sprintf("PRAGMA user_version = %d", SchemaVersion+1))
	s.Close()
	if _, err := Open(ctx, dir); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("opening a newer schema: %v", err)
	}
	// Reopening a current database is a no-op migration.
	dir2 := t.TempDir()
	for i := 0; i < 2; i++ {
		s, err := Open(ctx, dir2)
		if err != nil {
			t.Fatalf("open #%d: %v", i, err)
		}
		s.Close()
	}
}

// TestConcurrentGoroutines: many goroutines on one Store never collide.
func TestConcurrentGoroutines(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.CreateVM(ctx, VM{ID: fmt.Sprint("g", i), Status: "created", Config: []byte("{}")}, Alloc{Lease: true})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ls, _ := s.Leases(ctx)
	if len(ls) != 50 || ls[49].Index != 49 {
		t.Fatalf("leases = %d, last %+v", len(ls), ls[len(ls)-1])
	}
}

// TestConcurrentProcesses: 10 OS processes allocating 20 leases each against
// one database get 200 distinct IPs, TAP names, MACs and ports, and none of
// them sees "database is locked".
func TestConcurrentProcesses(t *testing.T) {
	dir := t.TempDir()
	if s, err := Open(context.Background(), dir); err != nil { // create the schema once
		t.Fatal(err)
	} else {
		s.Close()
	}
	type result struct {
		out    []byte
		stderr string
		err    error
	}
	results := make([]result, 10)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "STORE_TEST_WORKER_DIR="+dir, fmt.Sprintf("STORE_TEST_WORKER_NAME=p%d", i))
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			results[i] = result{out, stderr.String(), err}
		}()
	}
	wg.Wait()
	t.Logf("10 processes x 20 allocations in %v", time.Since(start))
	ips, taps, macs, ports := map[string]bool{}, map[string]bool{}, map[string]bool{}, map[int]bool{}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("worker %d: %v: %s", i, r.err, r.stderr)
		}
		if strings.Contains(r.stderr, "locked") {
			t.Fatalf("worker %d saw a lock error: %s", i, r.stderr)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(r.out)), "\n") {
			var a struct {
				IP, TAP, MAC string
				Port         int
			}
			if err := json.Unmarshal([]byte(line), &a); err != nil {
				t.Fatalf("worker %d line %q: %v", i, line, err)
			}
			ips[a.IP], taps[a.TAP], macs[a.MAC], ports[a.Port] = true, true, true, true
		}
	}
	if len(ips) != 200 || len(taps) != 200 || len(macs) != 200 || len(ports) != 200 {
		t.Fatalf("distinct: %d IPs, %d TAPs, %d MACs, %d ports; want 200 each", len(ips), len(taps), len(macs), len(ports))
	}
}

// TestMigrationKeepsRows opens a database written at schema version 1 and
// checks the migration to the current version keeps its rows.
func TestMigrationKeepsRows(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	old := migrations
	migrations = migrations[:1]
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, "INSERT INTO vms (id, status, config, created_at, updated_at) VALUES ('v1', 'stopped', '{}', 1, 1)"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	migrations = old
	s, err = Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v int
	s.db.QueryRow("PRAGMA user_version").Scan(&v)
	if v != len(migrations) {
		t.Fatalf("user_version = %d, want %d", v, len(migrations))
	}
	got, err := s.GetVM(ctx, "v1")
	if err != nil || got.Status != "stopped" || got.VsockCID != 0 {
		t.Fatalf("row after migration: %+v, %v", got, err)
	}
	if _, err := s.UpdateVM(ctx, "v1", func(v *VM) error { v.VsockCID = 9; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, "v1"); got.VsockCID != 9 {
		t.Fatalf("vsock_cid not stored: %+v", got)
	}
}
