package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/vmtest"
)

// TestServeTLS serves over TLS with a self-signed certificate.
func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)

	ts := newTestServer(t, filepath.Join(dir, "data"), Options{StaticKeys: []string{testKey}})
	defer ts.close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.Serve(ctx, ln, ServeOptions{TLSCert: certFile, TLSKey: keyFile}) }()
	pool := x509.NewCertPool()
	pool.AddCert(must(x509.ParseCertificate(der)))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get("https://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Errorf("healthz over TLS: %d", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Error("plain HTTP answered on a TLS listener")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after shutdown: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestServeCommand checks the binary's refusals and the apikey commands.
func TestServeCommand(t *testing.T) {
	vmtest.Require(t)
	bin := filepath.Join(vmtest.Binaries(t), "smolvm")
	dir := t.TempDir()
	run := func(env []string, argv ...string) (string, string, int) {
		cmd := exec.Command(bin, append([]string{"--data-dir", dir}, argv...)...)
		cmd.Env = append(os.Environ(), "SMOLVM_API_KEY=", "SMOLVM_HOST=")
		cmd.Env = append(cmd.Env, env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), errb.String(), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), 0
	}
	if _, e, code := run(nil, "serve", "--listen", "127.0.0.1:0"); code != 2 || !strings.Contains(e, "no API key") {
		t.Errorf("serve without a key: %d %s", code, e)
	}
	if _, e, code := run(nil, "serve", "--listen", "0.0.0.0:0", "--insecure-no-auth"); code != 2 || !strings.Contains(e, "loopback") {
		t.Errorf("serve --insecure-no-auth beyond loopback: %d %s", code, e)
	}
	if _, e, code := run(nil, "serve", "--tls-cert", "x"); code != 2 {
		t.Errorf("serve --tls-cert without --tls-key: %d %s", code, e)
	}
	out, _, code := run(nil, "apikey", "create", "--name", "ci", "--json")
	var created struct{ ID, Name, Key string }
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil || !strings.HasPrefix(created.Key, KeyPrefix) || created.Name != "ci" {
		t.Fatalf("apikey create: %d %s", code, out)
	}
	if _, _, code := run(nil, "apikey", "create", "--name", "ci"); code != 2 && code != 1 {
		t.Errorf("duplicate name: %d", code)
	}
	out, _, _ = run(nil, "apikey", "list", "--json")
	if strings.Contains(out, created.Key) || !strings.Contains(out, created.ID) {
		t.Errorf("apikey list --json shows the key or lacks its id: %s", out)
	}
	if out, _, code := run(nil, "apikey", "revoke", "ci"); code != 0 || !strings.Contains(out, created.ID) {
		t.Errorf("revoke: %d %s", code, out)
	}
	if _, _, code := run(nil, "apikey", "revoke", "nobody"); code != 3 {
		t.Errorf("revoke of an unknown key: exit %d, want 3", code)
	}
	out, _, _ = run(nil, "apikey", "list")
	if !strings.Contains(out, "revoked") {
		t.Errorf("apikey list: %s", out)
	}
	// With only a revoked key, the server still refuses to start.
	if _, e, code := run(nil, "serve", "--listen", "127.0.0.1:0"); code != 2 {
		t.Errorf("serve with only a revoked key: %d %s", code, e)
	}
}

// TestLimitPerKey refuses a key's sandbox over its limit, and only that key's.
func TestLimitPerKey(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	dir := t.TempDir()
	ts := newTestServer(t, dir, Options{StaticKeys: []string{testKey, otherKey}, MaxRunningPerKey: 1})
	defer ts.close()
	u := ts.URL()
	// Three at once: exactly one gets the key's only slot.
	var sb Sandbox
	results := make(chan response, 3)
	for i := 0; i < 3; i++ {
		go func() {
			results <- do(t, u, call{method: "POST", path: "/v1/sandboxes", key: testKey, body: sandboxBody(map[string]any{"start": false})})
		}()
	}
	created := 0
	for i := 0; i < 3; i++ {
		res := <-results
		switch {
		case res.status == 201:
			created++
			res.decode(t, &sb)
		case res.status != 429 || res.kind() != "limit_exceeded":
			t.Errorf("concurrent create: %d %s", res.status, res.body)
		}
	}
	if created != 1 {
		t.Fatalf("%d concurrent creates passed a limit of 1", created)
	}
	if res := do(t, u, call{method: "POST", path: "/v1/sandboxes", key: testKey, body: sandboxBody(map[string]any{"start": false})}); res.status != 429 || res.kind() != "limit_exceeded" {
		t.Errorf("second: %d %s", res.status, res.body)
	}
	var other Sandbox
	res := do(t, u, call{method: "POST", path: "/v1/sandboxes", key: otherKey, body: sandboxBody(map[string]any{"start": false})})
	if res.status != 201 {
		t.Errorf("other key: %d %s", res.status, res.body)
	}
	res.decode(t, &other)
	for _, c := range []struct{ key, id string }{{testKey, sb.VMID}, {otherKey, other.VMID}} {
		if res := do(t, u, call{method: "DELETE", path: "/v1/sandboxes/" + c.id, key: c.key}); res.status != 204 {
			t.Errorf("delete %s: %d %s", c.id, res.status, res.body)
		}
	}
}

// TestTimeoutSave: on_timeout "save" suspends a running sandbox when it
// times out (memory saved, "saved": true, timeout cleared) instead of
// deleting it, and a start resumes it where it was: a tmpfs keeps its
// content.
func TestTimeoutSave(t *testing.T) {
	vmtest.Require(t)
	vmtest.Setup(t)
	// The reaper's errors are shown: they are this test's diagnosis.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ts := newTestServer(t, t.TempDir(), Options{StaticKeys: []string{testKey}, ReapInterval: 100 * time.Millisecond, Logger: logger})
	defer ts.close()
	u := ts.URL()
	var sb Sandbox
	// No timeout while it boots (a boot under load can be slow); set after.
	res := do(t, u, call{method: "POST", path: "/v1/sandboxes", key: testKey, body: sandboxBody(map[string]any{"on_timeout": "save"})})
	if res.status != 201 {
		t.Fatalf("create: %d %s", res.status, res.body)
	}
	res.decode(t, &sb)
	sp := "/v1/sandboxes/" + sb.VMID
	defer do(t, u, call{method: "DELETE", path: sp + "?force=true", key: testKey})
	if sb.OnTimeout != "save" || sb.ExpiresAt != nil || sb.Status != smolvm.StateRunning {
		t.Fatalf("created: %+v", sb)
	}
	run := func(cmd string) ExecResult {
		t.Helper()
		var r ExecResult
		res := do(t, u, call{method: "POST", path: sp + "/exec", key: testKey, body: map[string]any{"cmd": cmd}})
		if res.status != 200 {
			t.Fatalf("exec %q: %d %s", cmd, res.status, res.body)
		}
		res.decode(t, &r)
		return r
	}
	if r := run("mkdir -p /mnt/mem && mount -t tmpfs none /mnt/mem && echo kept > /mnt/mem/m"); r.ExitCode != 0 {
		t.Fatalf("tmpfs: %+v", r)
	}
	if res := do(t, u, call{method: "POST", path: sp + "/timeout", key: testKey, body: map[string]any{"timeout_seconds": 1}}); res.status != 200 {
		t.Fatalf("timeout: %d %s", res.status, res.body)
	}
	deadline := time.Now().Add(90 * time.Second)
	var got Sandbox
	for {
		res := do(t, u, call{method: "GET", path: sp, key: testKey})
		if res.status != 200 {
			t.Fatalf("saved sandbox: %d %s", res.status, res.body)
		}
		got = Sandbox{} // decode keeps fields the JSON lacks
		res.decode(t, &got)
		if got.ExpiresAt == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("timeout never handled")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !got.Saved || got.Status != smolvm.StateStopped {
		t.Fatalf("after the timeout: status %s, saved %v; want stopped and saved", got.Status, got.Saved)
	}
	res = do(t, u, call{method: "POST", path: sp + "/start", key: testKey})
	if res.status != 200 {
		t.Fatalf("start: %d %s", res.status, res.body)
	}
	res.decode(t, &got)
	if got.Status != smolvm.StateRunning || got.Saved {
		t.Errorf("resumed: status %s, saved %v", got.Status, got.Saved)
	}
	if r := run("cat /mnt/mem/m"); r.Stdout != "kept\n" {
		t.Errorf("tmpfs after the resume: %+v", r)
	}
}
