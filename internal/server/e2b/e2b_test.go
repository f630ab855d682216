package e2b

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
)

// fakeBackend keeps sandboxes in memory; it has no VMs, so only what
// happens before a VM is touched can be tested with it.
type fakeBackend struct {
	mu      sync.Mutex
	keys    map[string]string // API key -> key id
	owner   map[string]string // sandbox id -> key id
	created []CreateRequest
	vmCalls int
}

func (f *fakeBackend) Authenticate(_ context.Context, k string) (string, error) {
	if id, ok := f.keys[k]; ok {
		return id, nil
	}
	return "", fmt.Errorf("%w: unknown key", ErrUnauthorized)
}

func (f *fakeBackend) sb(key, id string) (Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.owner[id] != key {
		return Sandbox{}, fmt.Errorf("sandbox %s: %w", id, smolvm.ErrNotFound)
	}
	return Sandbox{ID: id, Template: "default", State: smolvm.StateRunning, Started: time.Unix(1000, 0), VCPUs: 2, MemoryMiB: 512}, nil
}

func (f *fakeBackend) Create(_ context.Context, key string, req CreateRequest) (Sandbox, error) {
	f.mu.Lock()
	id := fmt.Sprintf("sb-%d", len(f.created))
	f.created = append(f.created, req)
	f.owner[id] = key
	f.mu.Unlock()
	return f.sb(key, id)
}
func (f *fakeBackend) Get(_ context.Context, key, id string) (Sandbox, error) { return f.sb(key, id) }
func (f *fakeBackend) List(_ context.Context, key string) ([]Sandbox, error) {
	var out []Sandbox
	for id, k := range f.owner {
		if k == key {
			s, _ := f.sb(key, id)
			out = append(out, s)
		}
	}
	return out, nil
}
func (f *fakeBackend) Delete(_ context.Context, key, id string) error {
	_, err := f.sb(key, id)
	return err
}
func (f *fakeBackend) SetTimeout(_ context.Context, key, id string, _ time.Duration) error {
	_, err := f.sb(key, id)
	return err
}
func (f *fakeBackend) Pause(_ context.Context, key, id string) error {
	_, err := f.sb(key, id)
	return err
}
func (f *fakeBackend) Resume(_ context.Context, key, id string) error {
	_, err := f.sb(key, id)
	return err
}
func (f *fakeBackend) VM(_ context.Context, id string) (*smolvm.VM, error) {
	f.mu.Lock()
	f.vmCalls++
	f.mu.Unlock()
	return nil, fmt.Errorf("no VMs in the fake: %w", smolvm.ErrUnavailable)
}

func newFake(t *testing.T) (*fakeBackend, *Handler, *httptest.Server) {
	f := &fakeBackend{keys: map[string]string{"key-a": "a", "key-b": "b"}, owner: map[string]string{}}
	h, err := New(Config{Backend: f, Secret: []byte(strings.Repeat("s", 32))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return f, h, ts
}

func req(t *testing.T, method, url, body string, hdr map[string]string) (*http.Response, map[string]any) {
	t.Helper()
	r, _ := http.NewRequest(method, url, strings.NewReader(body))
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp, m
}

func TestControlPlaneAuthAndOwnership(t *testing.T) {
	f, h, ts := newFake(t)
	resp, body := req(t, "POST", ts.URL+"/v2/sandboxes", `{"templateID":"minimal","timeout":60,"metadata":{"a":"1"},"envVars":{"K":"V"}}`, map[string]string{"X-API-KEY": "key-a"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %v", resp.StatusCode, body)
	}
	id, _ := body["sandboxID"].(string)
	if id == "" || body["envdVersion"] != EnvdVersion || body["envdAccessToken"] != h.AccessToken(id) {
		t.Fatalf("create body: %v", body)
	}
	if got := f.created[0]; got.Config.Image != "minimal" || got.Timeout != time.Minute || got.Metadata["a"] != "1" || got.Config.EnvVars["K"] != "V" {
		t.Errorf("create request: %+v", got)
	}
	for _, c := range []struct {
		name   string
		method string
		path   string
		key    string
		status int
	}{
		{"no key", "GET", "/sandboxes/" + id, "", 401},
		{"wrong key", "GET", "/sandboxes/" + id, "nope", 401},
		{"owner", "GET", "/sandboxes/" + id, "key-a", 200},
		{"other key get", "GET", "/sandboxes/" + id, "key-b", 404},
		{"other key kill", "DELETE", "/sandboxes/" + id, "key-b", 404},
		{"other key timeout", "POST", "/sandboxes/" + id + "/timeout", "key-b", 404},
		{"other key connect", "POST", "/v2/sandboxes/" + id + "/connect", "key-b", 404},
	} {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.key != "" {
				hdr["X-API-KEY"] = c.key
			}
			body := ""
			if strings.HasSuffix(c.path, "timeout") {
				body = `{"timeout":30}`
			}
			resp, m := req(t, c.method, ts.URL+c.path, body, hdr)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d (%v)", resp.StatusCode, c.status, m)
			}
			if c.status >= 400 && (m["code"] != float64(c.status) || m["message"] == "") {
				t.Errorf("error body %v, want {code: %d, message}", m, c.status)
			}
		})
	}
	resp, _ = req(t, "POST", ts.URL+"/v2/sandboxes", `{"templateID":"snapshot:warm","allow_internet_access":false,"network":{"allowOut":["pypi.org","10.1.2.3"],"denyOut":["1.1.1.1"]}}`, map[string]string{"X-API-KEY": "key-a"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create from a snapshot: %d", resp.StatusCode)
	}
	got := f.created[1].Config
	if got.FromSnapshot != "warm" || got.Image != "" || got.Internet == nil || *got.Internet ||
		strings.Join(got.AllowOut, ",") != "pypi.org,10.1.2.3" || strings.Join(got.DenyOut, ",") != "1.1.1.1" {
		t.Errorf("egress and template mapping: %+v", got)
	}
	resp, _ = req(t, "POST", ts.URL+"/v2/sandboxes", `{"templateID":"x","timeout":-1}`, map[string]string{"X-API-KEY": "key-a"})
	if resp.StatusCode != 400 {
		t.Errorf("negative timeout: %d", resp.StatusCode)
	}
	resp, _ = req(t, "POST", ts.URL+"/v2/sandboxes", `{"templateID":`, map[string]string{"X-API-KEY": "key-a"})
	if resp.StatusCode != 400 {
		t.Errorf("malformed JSON: %d", resp.StatusCode)
	}
}

func TestEnvdNeedsTheSandboxToken(t *testing.T) {
	f, h, ts := newFake(t)
	tokA := h.AccessToken("sb-a")
	if tokA == h.AccessToken("sb-b") || len(tokA) != 64 {
		t.Fatalf("tokens: %q", tokA)
	}
	for _, c := range []struct {
		name string
		hdr  map[string]string
	}{
		{"no sandbox", map[string]string{"X-Access-Token": tokA}},
		{"no token", map[string]string{"E2b-Sandbox-Id": "sb-a"}},
		{"other sandbox's token", map[string]string{"E2b-Sandbox-Id": "sb-a", "X-Access-Token": h.AccessToken("sb-b")}},
		{"API key instead", map[string]string{"E2b-Sandbox-Id": "sb-a", "X-Access-Token": "key-a"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, path := range []string{"/files?path=/etc/passwd", "/process.Process/List", "/filesystem.Filesystem/Stat"} {
				method, body := "GET", ""
				if !strings.HasPrefix(path, "/files") {
					method, body = "POST", "{}"
					c.hdr["Content-Type"] = "application/json"
				}
				resp, _ := req(t, method, ts.URL+path, body, c.hdr)
				if resp.StatusCode != 401 {
					t.Errorf("%s: status %d, want 401", path, resp.StatusCode)
				}
			}
		})
	}
	if f.vmCalls != 0 {
		t.Errorf("a VM was looked up %d times without a valid token", f.vmCalls)
	}
	// With the right token the request gets as far as the VM.
	resp, _ := req(t, "GET", ts.URL+"/files?path=/x", "", map[string]string{"E2b-Sandbox-Id": "sb-a", "X-Access-Token": tokA})
	if resp.StatusCode != 503 || f.vmCalls != 1 {
		t.Errorf("valid token: status %d, VM lookups %d", resp.StatusCode, f.vmCalls)
	}
}

func TestHelpers(t *testing.T) {
	md, err := metadataQuery("suite=e2b-sdk&run=Test%2FX")
	if err != nil || md["suite"] != "e2b-sdk" || md["run"] != "Test/X" || len(md) != 2 {
		t.Errorf("metadataQuery: %v %v", md, err)
	}
	if _, err := metadataQuery("novalue"); err == nil {
		t.Error("metadataQuery accepted a pair without =")
	}
	if !hasUser("root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n", "user") || hasUser("username:x:1:1::/:/bin/sh\n", "user") {
		t.Error("hasUser")
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("root:")))
	if requestUser(r) != "root" {
		t.Error("requestUser")
	}
	ctx := context.WithValue(context.Background(), ctxUser, "user")
	for in, want := range map[string]string{"a.txt": "/home/user/a.txt", "/etc/x": "/etc/x", "~/b": "/home/user/b", "": "/home/user"} {
		if got := resolvePath(ctx, in); got != want {
			t.Errorf("resolvePath(%q) = %q, want %q", in, got, want)
		}
	}
	for _, c := range []struct{ root, p, want string }{{"/tmp/w", "/tmp/w/a/b", "a/b"}, {"/", "/x", "x"}, {"/tmp/w", "/tmp/wx", ""}} {
		if got, _ := relTo(c.root, c.p); got != c.want {
			t.Errorf("relTo(%q, %q) = %q", c.root, c.p, got)
		}
	}
	evs := eventsOf("/w", smolvm.FsEvent{Op: "renamed", Path: "/w/new", OldPath: "/w/old"})
	if len(evs) != 2 || evs[0].Name != "old" || evs[0].Type.String() != "EVENT_TYPE_RENAME" || evs[1].Name != "new" || evs[1].Type.String() != "EVENT_TYPE_CREATE" {
		t.Errorf("eventsOf rename: %v", evs)
	}
	if evs := eventsOf("/w", smolvm.FsEvent{Op: "renamed", Path: "/w/in"}); len(evs) != 1 || evs[0].Type.String() != "EVENT_TYPE_CREATE" {
		t.Errorf("eventsOf rename into the watch: %v", evs)
	}
	if evs := eventsOf("/w", smolvm.FsEvent{Op: "overflow"}); len(evs) != 0 {
		t.Error("overflow became an event")
	}
}
