package server

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

func TestMain(m *testing.M) { vmtest.Main(m) }

// TestOpenAPIRoutes fails when a route is served that the document lacks,
// or the reverse.
func TestOpenAPIRoutes(t *testing.T) {
	ts := newTestServer(t, t.TempDir(), Options{NoAuth: true})
	defer ts.close()
	served := ts.Routes()
	sort.Strings(served)
	documented := docRoutes(t)
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("route %q is served but not in openapi.json", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("route %q is in openapi.json but not served", r)
		}
	}
	res := do(t, ts.URL(), call{method: "GET", path: "/openapi.json"})
	if res.status != 200 || !strings.Contains(string(res.body), `"openapi": "3.1.0"`) {
		t.Errorf("GET /openapi.json = %d", res.status)
	}
}

const testKey = "test-key-0123456789abcdef"

// TestAuthAndBadInput checks keys (missing, wrong, revoked, another key's
// sandbox) and bad input: each gets its status and kind, nothing is made.
func TestAuthAndBadInput(t *testing.T) {
	dir := t.TempDir()
	ts := newTestServer(t, dir, Options{StaticKeys: []string{testKey}, MaxBodyBytes: 64 << 10})
	defer ts.close()
	ctx := context.Background()
	keys, err := OpenKeys(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close()
	rec, secret, err := keys.Create(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, KeyPrefix) || len(secret) < 40 {
		t.Errorf("key %q", secret)
	}
	if _, _, err := keys.Create(ctx, "alice"); err == nil {
		t.Error("a second key named alice was made")
	}
	u := ts.URL()

	// Authentication.
	for _, c := range []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"none", nil, 401},
		{"wrong bearer", map[string]string{"Authorization": "Bearer nope"}, 401},
		{"wrong scheme", map[string]string{"Authorization": "Basic " + secret}, 401},
		{"wrong x-api-key", map[string]string{"X-API-Key": "nope"}, 401},
		{"bearer", map[string]string{"Authorization": "Bearer " + secret}, 200},
		{"x-api-key", map[string]string{"X-API-Key": secret}, 200},
		{"static", map[string]string{"X-API-Key": testKey}, 200},
	} {
		req, _ := http.NewRequest("GET", u+"/v1/sandboxes", nil)
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: status %d, want %d", c.name, resp.StatusCode, c.want)
		}
	}
	if res := do(t, u, call{method: "GET", path: "/v1/sandboxes", skipReqCheck: true}); res.status != 401 || res.kind() != "unauthorized" {
		t.Errorf("no key: %d %s", res.status, res.body)
	}
	if res := do(t, u, call{method: "GET", path: "/healthz"}); res.status != 200 {
		t.Errorf("healthz: %d", res.status)
	}
	if res := do(t, u, call{method: "GET", path: "/metrics", key: secret}); res.status != 200 || !strings.Contains(string(res.body), "smolvm_api_requests_total") {
		t.Errorf("metrics: %d", res.status)
	}
	if _, err := keys.Revoke(ctx, rec.Name); err != nil {
		t.Fatal(err)
	}
	if res := do(t, u, call{method: "GET", path: "/v1/sandboxes", key: secret}); res.status != 401 {
		t.Errorf("revoked key: %d", res.status)
	}
	if _, err := keys.Revoke(ctx, "nobody"); err == nil {
		t.Error("revoking an unknown key succeeded")
	}

	huge := `{"image": "minimal", "metadata": {"a": "` + strings.Repeat("x", 100<<10) + `"}}`
	for _, c := range []struct {
		name       string
		c          call
		status     int
		kind, text string
	}{
		{"malformed JSON", call{method: "POST", path: "/v1/sandboxes", raw: []byte(`{"image": `), ctype: "application/json"}, 400, "bad_request", ""},
		{"not JSON", call{method: "POST", path: "/v1/sandboxes", raw: []byte(`hello`), ctype: "application/json"}, 400, "bad_request", ""},
		{"empty body", call{method: "POST", path: "/v1/sandboxes", raw: []byte(``), ctype: "application/json"}, 400, "bad_request", ""},
		{"trailing data", call{method: "POST", path: "/v1/sandboxes", raw: []byte(`{} {}`), ctype: "application/json"}, 400, "bad_request", ""},
		{"unknown field", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"imag": "minimal"}}, 400, "bad_request", "imag"},
		{"wrong type", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"vcpu_count": "two"}}, 400, "bad_request", "vcpu_count"},
		{"huge body", call{method: "POST", path: "/v1/sandboxes", raw: []byte(huge), ctype: "application/json"}, 413, "too_large", ""},
		{"bad vcpus", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "vcpu_count": 99}}, 422, "invalid_config", "vcpu_count"},
		{"cold is decoded (warm templates)", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "cold": true, "vcpu_count": 99}}, 422, "invalid_config", "vcpu_count"},
		{"bad memory", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "mem_size_mib": 1}}, 422, "invalid_config", "mem_size_mib"},
		{"bad id", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "vm_id": "Not Valid"}}, 422, "invalid_config", "vm_id"},
		{"host path", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "kernel_path": "/etc/shadow"}}, 422, "invalid_config", "kernel_path"},
		{"host folder", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "mounts": []map[string]any{{"host_path": "/etc", "guest_path": "/mnt"}}}}, 422, "invalid_config", "mounts"},
		{"host interface", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "attach_interface": "eth0"}}, 422, "invalid_config", "attach_interface"},
		{"shared disk", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "disk_mode": "shared"}}, 422, "invalid_config", "disk_mode"},
		{"bad timeout", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "timeout_seconds": -1}}, 422, "invalid_config", "timeout_seconds"},
		{"bad on_timeout", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "on_timeout": "explode"}}, 422, "invalid_config", "on_timeout"},
		{"bad env key", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"image": "minimal", "env_vars": map[string]string{"A B": "x"}}}, 422, "invalid_config", "env_vars"},
		{"bad state filter", call{method: "GET", path: "/v1/sandboxes?state=dancing"}, 422, "invalid_config", "status"},
		{"unknown filter", call{method: "GET", path: "/v1/sandboxes?colour=red"}, 400, "bad_request", "colour"},
		{"unknown id", call{method: "GET", path: "/v1/sandboxes/vm-00000000"}, 404, "not_found", ""},
		{"invalid id", call{method: "GET", path: "/v1/sandboxes/NOT..valid"}, 422, "invalid_config", "vm_id"},
		{"unknown id delete", call{method: "DELETE", path: "/v1/sandboxes/vm-00000000"}, 404, "not_found", ""},
		{"unknown id exec", call{method: "POST", path: "/v1/sandboxes/vm-00000000/exec", body: map[string]any{"cmd": "true"}}, 404, "not_found", ""},
		{"exec without command", call{method: "POST", path: "/v1/sandboxes/vm-00000000/exec", body: map[string]any{}}, 422, "invalid_config", "cmd"},
		{"exec with both", call{method: "POST", path: "/v1/sandboxes/vm-00000000/exec", body: map[string]any{"cmd": "true", "argv": []string{"true"}}}, 422, "invalid_config", "cmd"},
		{"exec relative cwd", call{method: "POST", path: "/v1/sandboxes/vm-00000000/exec", body: map[string]any{"cmd": "true", "cwd": "tmp"}}, 422, "invalid_config", "cwd"},
		{"exec wrong type", call{method: "POST", path: "/v1/sandboxes/vm-00000000/exec", body: map[string]any{"argv": "true"}, skipReqCheck: true}, 400, "bad_request", "argv"},
		{"traversal", call{method: "GET", path: "/v1/sandboxes/vm-00000000/files?path=/tmp/../etc/shadow"}, 422, "invalid_config", "path"},
		{"relative path", call{method: "GET", path: "/v1/sandboxes/vm-00000000/files?path=etc/passwd"}, 422, "invalid_config", "path"},
		{"dot path", call{method: "PUT", path: "/v1/sandboxes/vm-00000000/files?path=/tmp/./x", raw: []byte("x"), ctype: "application/octet-stream"}, 422, "invalid_config", "path"},
		{"no path", call{method: "GET", path: "/v1/sandboxes/vm-00000000/files", skipReqCheck: true}, 422, "invalid_config", "path"},
		{"bad mode", call{method: "PUT", path: "/v1/sandboxes/vm-00000000/files?path=/tmp/x&mode=rwx", raw: []byte("x"), ctype: "application/octet-stream"}, 422, "invalid_config", "mode"},
		{"bad timeout body", call{method: "POST", path: "/v1/sandboxes/vm-00000000/timeout", body: map[string]any{"timeout_seconds": "soon"}, skipReqCheck: true}, 400, "bad_request", ""},
		{"bad pid", call{method: "POST", path: "/v1/sandboxes/vm-00000000/processes/abc/signal", body: map[string]any{}}, 422, "invalid_config", "pid"},
		{"process unknown field", call{method: "POST", path: "/v1/sandboxes/vm-00000000/processes", body: map[string]any{"cmd": "x", "shell": "y"}}, 400, "bad_request", "shell"},
		{"fs traversal", call{method: "GET", path: "/v1/sandboxes/vm-00000000/fs/stat?path=/a/../../etc"}, 422, "invalid_config", "path"},
		{"fs mkdir relative", call{method: "POST", path: "/v1/sandboxes/vm-00000000/fs/mkdir", body: map[string]any{"path": "a/b"}}, 422, "invalid_config", "path"},
		{"fs move traversal", call{method: "POST", path: "/v1/sandboxes/vm-00000000/fs/move", body: map[string]any{"from": "/a", "to": "/b/../c"}}, 422, "invalid_config", "to"},
		{"pty without upgrade", call{method: "GET", path: "/v1/sandboxes/vm-00000000/pty"}, 400, "bad_request", "WebSocket"},
		{"snapshot of an unknown id", call{method: "POST", path: "/v1/sandboxes/vm-00000000/snapshots", body: map[string]any{"name": "s1"}}, 404, "not_found", ""},
		{"snapshot unknown field", call{method: "POST", path: "/v1/sandboxes/vm-00000000/snapshots", body: map[string]any{"nam": "s1"}}, 400, "bad_request", "nam"},
		{"snapshot malformed JSON", call{method: "POST", path: "/v1/sandboxes/vm-00000000/snapshots", raw: []byte(`{"name"`), ctype: "application/json"}, 400, "bad_request", ""},
		{"restore without snapshot", call{method: "POST", path: "/v1/sandboxes/vm-00000000/restore", body: map[string]any{}}, 422, "invalid_config", "snapshot"},
		{"restore unknown field", call{method: "POST", path: "/v1/sandboxes/vm-00000000/restore", body: map[string]any{"snap": "s1"}}, 400, "bad_request", "snap"},
		{"restore of an unknown id", call{method: "POST", path: "/v1/sandboxes/vm-00000000/restore", body: map[string]any{"snapshot": "s1"}}, 404, "not_found", ""},
		{"unknown snapshot", call{method: "GET", path: "/v1/snapshots/nosuch"}, 404, "not_found", ""},
		{"unknown snapshot delete", call{method: "DELETE", path: "/v1/snapshots/nosuch"}, 404, "not_found", ""},
		{"snapshot list filter", call{method: "GET", path: "/v1/snapshots?vm_id=x"}, 400, "bad_request", "vm_id"},
		{"clone of an unknown snapshot", call{method: "POST", path: "/v1/sandboxes", body: map[string]any{"from_snapshot": "nosuch"}}, 404, "not_found", "nosuch"},
		{"bad guest port", call{method: "POST", path: "/v1/sandboxes/vm-00000000/ports", body: map[string]any{"guest_port": 0}, skipReqCheck: true}, 422, "invalid_config", "guest_port"},
	} {
		c.c.key = testKey
		c.c.skipReqCheck = true // bad on purpose: the responses are checked
		res := do(t, u, c.c)
		if res.status != c.status || res.kind() != c.kind || !strings.Contains(string(res.body), c.text) {
			t.Errorf("%s: %d %s, want %d %s mentioning %q", c.name, res.status, res.body, c.status, c.kind, c.text)
		}
	}
	// Nothing was made: no VM rows, no VM directories.
	st, err := store.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if vms, _ := st.ListVMs(ctx); len(vms) != 0 {
		t.Errorf("bad input left VMs: %v", vms)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "vms")); len(ents) != 0 {
		t.Errorf("bad input left VM directories: %v", ents)
	}
}
