package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/smolvm-go/smolvm/internal/netplan"
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
	s, err := OpenWith(ctx, dir, Options{Claims: netplan.Claims{Dir: os.Getenv("STORE_TEST_CLAIMS")}})
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
		p := netplan.MustFor(a.Lease.Index, a.SSH.HostPort)
		b, _ := json.Marshal(struct {
			IP, TAP, MAC string
			Port         int
		}{p.GuestIP.String(), p.TAP, p.MAC, p.SSHPort})
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

func TestCreateGetUpdateDelete(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	a, err := s.CreateVM(ctx, VM{ID: "a", Status: "created", Config: []byte(`{"x":1}`)}, Alloc{Lease: true, SSHPort: -1})
	if err != nil {
		t.Fatal(err)
	}
	if a.Lease.Index != 0 || a.SSH.HostPort < FirstPort {
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
	if a.Lease.Index != 1 {
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
	t.Run("one data dir", func(t *testing.T) { concurrentProcesses(t, false) })
	t.Run("ten data dirs, one host", func(t *testing.T) { concurrentProcesses(t, true) })
}

// concurrentProcesses runs 10 allocating processes, on one database or on
// one database each sharing the host's lease claims.
func concurrentProcesses(t *testing.T, dirs bool) {
	dir := t.TempDir()
	claims := t.TempDir()
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
			wdir := dir
			if dirs {
				wdir = filepath.Join(dir, strconv.Itoa(i))
			}
			cmd.Env = append(os.Environ(), "STORE_TEST_WORKER_DIR="+wdir, fmt.Sprintf("STORE_TEST_WORKER_NAME=p%d", i), "STORE_TEST_CLAIMS="+claims)
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
	if len(ips) != 200 || len(taps) != 200 || len(macs) != 200 {
		t.Fatalf("distinct: %d IPs, %d TAPs, %d MACs; want 200 each", len(ips), len(taps), len(macs))
	}
	if !dirs && len(ports) != 200 {
		t.Fatalf("distinct ports: %d, want 200", len(ports))
	}
	if ents, _ := os.ReadDir(claims); len(ents) != 200 {
		t.Fatalf("%d host-wide claims, want 200", len(ents))
	}
}

// TestClaimsAcrossDataDirs: two data directories on one host never hold
// the same lease index; deleting a VM releases its claim; the claim of a
// data directory that was removed is taken over.
func TestClaimsAcrossDataDirs(t *testing.T) {
	ctx := context.Background()
	claims := netplan.Claims{Dir: t.TempDir()}
	d1, d2 := t.TempDir(), t.TempDir()
	s1, err := OpenWith(ctx, d1, Options{Claims: claims})
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := OpenWith(ctx, d2, Options{Claims: claims})
	if err != nil {
		t.Fatal(err)
	}
	a1, err := s1.CreateVM(ctx, VM{ID: "a", Status: "created", Config: []byte("{}")}, Alloc{Lease: true})
	if err != nil {
		t.Fatal(err)
	}
	a2, err := s2.CreateVM(ctx, VM{ID: "a", Status: "created", Config: []byte("{}")}, Alloc{Lease: true})
	if err != nil {
		t.Fatal(err)
	}
	if a1.Lease.Index != 0 || a2.Lease.Index != 1 {
		t.Fatalf("indexes %d and %d, want 0 and 1", a1.Lease.Index, a2.Lease.Index)
	}
	if err := s1.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(claims.Dir, "0")); !os.IsNotExist(err) {
		t.Fatalf("claim 0 after delete: %v", err)
	}
	// d2 disappears without deleting its VM: its claim is stale.
	s2.Close()
	os.RemoveAll(d2)
	a3, err := s1.CreateVM(ctx, VM{ID: "b", Status: "created", Config: []byte("{}")}, Alloc{Lease: true})
	if err != nil || a3.Lease.Index != 0 {
		t.Fatalf("after release: %+v, %v", a3.Lease, err)
	}
	a4, err := s1.CreateVM(ctx, VM{ID: "c", Status: "created", Config: []byte("{}")}, Alloc{Lease: true})
	if err != nil || a4.Lease.Index != 1 {
		t.Fatalf("stale claim of a removed data dir not taken over: %+v, %v", a4.Lease, err)
	}
	// A failed create gives its claim back.
	if _, err := s1.CreateVM(ctx, VM{ID: "c", Status: "created", Config: []byte("{}")}, Alloc{Lease: true}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if ents, _ := os.ReadDir(claims.Dir); len(ents) != 2 {
		t.Fatalf("claims after failed create: %d, want 2", len(ents))
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
	if _, err := s.db.ExecContext(ctx, `INSERT INTO vms (id, status, config, created_at, updated_at, error) VALUES ('v1', 'stopped', '{}', 1, 1, 'delete in progress');
		INSERT INTO ip_leases (idx, vm_id, ip, tap, mac) VALUES (7, 'v1', '172.16.0.9', 'smol7', 'AA:FC:00:00:00:08')`); err != nil {
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
	if err != nil || got.Status != "stopped" || got.VsockCID != 0 || got.Op != OpDeleting || got.Error != "" {
		t.Fatalf("row after migration: %+v, %v", got, err)
	}
	if l, err := s.LeaseOf(ctx, "v1"); err != nil || l.Index != 7 {
		t.Fatalf("lease after migration: %+v, %v", l, err)
	}
	if _, err := s.UpdateVM(ctx, "v1", func(v *VM) error { v.VsockCID = 9; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, "v1"); got.VsockCID != 9 {
		t.Fatalf("vsock_cid not stored: %+v", got)
	}
}

// The database and its WAL/SHM are private, even when they existed before
// with a looser mode.
func TestDatabaseFilesPrivate(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, FileName+"-wal"), nil, 0o644)
	os.Chmod(filepath.Join(dir, FileName+"-wal"), 0o644)
	s, err := Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.ListVMs(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{FileName, FileName + "-wal", FileName + "-shm"} {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", n, fi.Mode())
		}
	}
}
