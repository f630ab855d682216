package agent_test

import (
	"fmt"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent"
)

// unixClient returns a client connected over a real Unix socket.
func unixClient(t testing.TB) *agent.Client {
	t.Helper()
	path := startUnixServer(t, newTestEnv(t))
	conn, err := agent.DialUnix(ctxT(t, 10*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, conn)
}

// BenchmarkExecRoundTrip measures one trivial exec (`true`, no shell) over a
// Unix socket: request, fork/exec, wait, response.
func BenchmarkExecRoundTrip(b *testing.B) {
	c := unixClient(b)
	ctx := ctxT(b, time.Hour)
	req := agent.ExecRequest{Argv: []string{"true"}}
	b.ResetTimer()
	for b.Loop() {
		if res, err := c.Exec(ctx, req, nil, nil, nil); err != nil || res.ExitCode != 0 {
			b.Fatalf("Exec = %+v, %v", res, err)
		}
	}
}

// TestExecLatency logs the p50 and p99 latency of 200 trivial execs over a
// Unix socket. It reports numbers only; run with -v to see them.
func TestExecLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("latency report skipped in -short mode")
	}
	c := unixClient(t)
	ctx := ctxT(t, 5*time.Minute)
	req := agent.ExecRequest{Argv: []string{"true"}}
	const runs = 200
	agentLat := measure(t, runs, func() error {
		res, err := c.Exec(ctx, req, nil, nil, nil)
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("exit code %d", res.ExitCode)
		}
		return err
	})
	// Baseline: the same command run directly with os/exec, in this process.
	localLat := measure(t, runs, func() error { return exec.Command("true").Run() })
	t.Logf("exec `true` via agent over a Unix socket, %d runs: p50 %v, p99 %v (min %v, max %v)",
		runs, agentLat[runs/2], agentLat[runs*99/100], agentLat[0], agentLat[runs-1])
	t.Logf("os/exec `true` locally (baseline):      p50 %v, p99 %v; agent/baseline p50 ratio %.2f",
		localLat[runs/2], localLat[runs*99/100], float64(agentLat[runs/2])/float64(localLat[runs/2]))
}

// measure runs f n times and returns the sorted durations.
func measure(t *testing.T, n int, f func() error) []time.Duration {
	t.Helper()
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat
}
