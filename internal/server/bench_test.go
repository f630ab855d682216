package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestBenchAPI prints API exec latency against SDK exec latency on the same
// VM, and the requests per second of GET /v1/sandboxes. It runs only with
// SMOLVM_BENCH_API=1 (numbers, no assertions on time):
//
//	SMOLVM_BENCH_API=1 go test -run TestBenchAPI -v ./internal/server
func TestBenchAPI(t *testing.T) {
	if os.Getenv("SMOLVM_BENCH_API") == "" {
		t.Skip("set SMOLVM_BENCH_API=1 to run the API benchmark")
	}
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	os.Setenv(smolvm.HostDirEnv, filepath.Join(dir, ".host"))
	ts := newTestServer(t, dir, Options{StaticKeys: []string{testKey}})
	defer ts.close()
	ctx := context.Background()
	defer ts.h.Cleanup(ctx, smolvm.CleanupOptions{All: true})
	res := do(t, ts.URL(), call{method: "POST", path: "/v1/sandboxes", key: testKey, body: sandboxBody(nil)})
	var sb Sandbox
	res.decode(t, &sb)
	if res.status != 201 {
		t.Fatalf("create: %d %s", res.status, res.body)
	}
	// The SDK side uses the server's own handle, so both share one agent connection.
	vm, _, err := ts.sandbox(httptestRequest(sb.VMID), StaticKeyID(testKey))
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	argv := []string{"true"}
	p50 := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	var sdk, api []time.Duration
	body, _ := json.Marshal(map[string]any{"argv": argv})
	url := ts.URL() + "/v1/sandboxes/" + sb.VMID + "/exec"
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := vm.Exec(ctx, smolvm.ExecOptions{Argv: argv}); err != nil {
			t.Fatal(err)
		}
		sdk = append(sdk, time.Since(start))
		start = time.Now()
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		req.Header.Set("X-API-Key", testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		api = append(api, time.Since(start))
	}
	ps, pa := p50(sdk), p50(api)
	t.Logf("exec of `true` (argv), %d each, interleaved: SDK p50 %.2f ms, API p50 %.2f ms, overhead %+.2f ms", n, ms(ps), ms(pa), ms(pa-ps))

	var count atomic.Int64
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest("GET", ts.URL()+"/v1/sandboxes", nil)
				req.Header.Set("X-API-Key", testKey)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("GET /v1/sandboxes (1 sandbox, 8 clients, 3 s): %.0f requests/s", float64(count.Load())/3)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// httptestRequest is a request whose path value "id" is id.
func httptestRequest(id string) *http.Request {
	r, _ := http.NewRequest("GET", "/v1/sandboxes/"+id, nil)
	r.SetPathValue("id", id)
	return r
}
