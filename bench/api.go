package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/server"
)

// APIResult compares commands through `smolvm serve`'s HTTP API with the
// SDK on the same VM, and measures the API's listing throughput.
type APIResult struct {
	Image string `json:"image"`
	// SDKExec and APIExec time `true` (argv) through vm.Exec and through
	// POST /v1/sandboxes/{id}/exec on loopback, interleaved.
	SDKExec Stats `json:"sdk_exec"`
	APIExec Stats `json:"api_exec"`
	// OverheadP50Ms is APIExec.P50 - SDKExec.P50.
	OverheadP50Ms float64 `json:"overhead_p50_ms"`
	// ListPerS is GET /v1/sandboxes requests per second with 8 clients.
	ListPerS float64 `json:"list_requests_per_s"`
}

// benchAPI serves the benchmark's Host on loopback and measures the API.
func (b *bench) benchAPI(ctx context.Context) (*APIResult, error) {
	srv, err := server.New(ctx, server.Options{Host: b.h, NoAuth: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go srv.Serve(sctx, ln, server.ServeOptions{})
	base := "http://" + ln.Addr().String()
	hc := &http.Client{}
	post := func(path string, body any) ([]byte, int, error) {
		data, _ := json.Marshal(body)
		resp, err := hc.Post(base+path, "application/json", bytes.NewReader(data))
		if err != nil {
			return nil, 0, err
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		return out, resp.StatusCode, err
	}
	cfg := b.vmConfig(b.cfg.image)
	out, code, err := post("/v1/sandboxes", map[string]any{"image": cfg.Image, "mem_size_mib": cfg.MemSizeMiB, "vcpu_count": cfg.VCPUCount, "cold": cfg.Cold})
	if err != nil || code != http.StatusCreated {
		return nil, fmt.Errorf("create through the API: %d %s %v", code, out, err)
	}
	var sb struct {
		VMID string `json:"vm_id"`
	}
	json.Unmarshal(out, &sb)
	vm, err := srv.VM(ctx, sb.VMID) // the server's own handle: one agent connection for both
	if err != nil {
		return nil, err
	}
	defer vm.ForceDelete(context.WithoutCancel(ctx))
	n := b.cfg.cmds * 5
	var sdk, api []time.Duration
	for range n {
		t0 := time.Now()
		if _, err := vm.Exec(ctx, smolvm.ExecOptions{Argv: []string{"true"}}); err != nil {
			return nil, fmt.Errorf("SDK exec: %w", err)
		}
		sdk = append(sdk, time.Since(t0))
		t0 = time.Now()
		if out, code, err := post("/v1/sandboxes/"+sb.VMID+"/exec", map[string]any{"argv": []string{"true"}}); err != nil || code != http.StatusOK {
			return nil, fmt.Errorf("API exec: %d %s %v", code, out, err)
		}
		api = append(api, time.Since(t0))
	}
	res := &APIResult{Image: b.cfg.image, SDKExec: summarize(sdk), APIExec: summarize(api)}
	res.OverheadP50Ms = res.APIExec.P50 - res.SDKExec.P50

	var count atomic.Int64
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				resp, err := hc.Get(base + "/v1/sandboxes")
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				count.Add(1)
			}
		})
	}
	wg.Wait()
	res.ListPerS = float64(count.Load()) / 3
	return res, nil
}

// reportAPI prints the API section.
func reportAPI(out io.Writer, w *tabwriter.Writer, header func(string), row func(string, Stats), left func(string, int) string, a *APIResult) {
	n := 24
	header(left("HTTP API vs SDK (`true`), ms", n))
	row(left("vm.Exec", n), a.SDKExec)
	row(left("POST .../exec", n), a.APIExec)
	w.Flush()
	fmt.Fprintf(out, "  API overhead at p50: %+.2f ms (target: at most +2 ms); GET /v1/sandboxes: %.0f requests/s (8 clients)\n", a.OverheadP50Ms, a.ListPerS)
}
