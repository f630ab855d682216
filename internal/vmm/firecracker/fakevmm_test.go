package firecracker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// specFile is the vendored Firecracker API specification.
const specFile = "testdata/firecracker.yaml"

// loadRouter loads Firecracker's Swagger 2.0 specification, converts it to
// OpenAPI 3 and builds a router. Every object schema that lists properties
// is made closed (additionalProperties: false), as Firecracker rejects
// unknown fields, so a misspelt field fails validation too.
func loadRouter(path string) (routers.Router, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(data, &doc2); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", path, err)
	}
	closed := false
	for _, s := range doc3.Components.Schemas {
		if s.Value != nil && len(s.Value.Properties) > 0 && s.Value.AdditionalProperties.Has == nil && s.Value.AdditionalProperties.Schema == nil {
			s.Value.AdditionalProperties.Has = &closed
		}
	}
	// Requests arrive over a Unix socket with any Host header.
	doc3.Servers = nil
	return gorillamux.NewRouter(doc3)
}

// call is one request the fake VMM received.
type call struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
}

// fakeVMM answers Firecracker's API as Firecracker does: every request is
// first validated against the specification (400 with a fault_message when
// it does not conform), then checked against the VM's state and the files
// it names. It records every call.
type fakeVMM struct {
	router  routers.Router
	id      string
	root    string    // the jail root that paths are relative to; "" for none
	console io.Writer // the guest's serial console
	record  string    // file receiving one JSON call per line; "" for none

	mu         sync.Mutex // guards the fields below
	state      string
	configured bool // anything but logger and metrics was configured
	bootSource bool
	calls      []call
	vsock      net.Listener
	stopped    chan struct{} // closed by SendCtrlAltDel
}

func newFakeVMM(router routers.Router, id, root string, console io.Writer, record string) *fakeVMM {
	return &fakeVMM{router: router, id: id, root: root, console: console, record: record,
		state: fcStateNotStarted, stopped: make(chan struct{})}
}

// hostPath maps a path the VMM was given to the host.
func (f *fakeVMM) hostPath(p string) string {
	if f.root == "" {
		return p
	}
	return filepath.Join(f.root, p)
}

func (f *fakeVMM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	status, fault, out := f.handle(r, body)
	c := call{Method: r.Method, Path: r.URL.Path, Status: status, Fault: fault}
	if len(body) > 0 {
		c.Body = json.RawMessage(body)
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	if f.record != "" {
		if fh, err := os.OpenFile(f.record, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			line, _ := json.Marshal(c)
			fh.Write(append(line, '\n'))
			fh.Close()
		}
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case fault != "":
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"fault_message": fault})
	case out != nil:
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(out)
	default:
		w.WriteHeader(status)
	}
	if r.URL.Path == "/actions" && status == http.StatusNoContent && strings.Contains(string(body), actionSendCtrlAltDel) {
		close(f.stopped)
	}
}

// handle validates and applies one request: status, fault message, answer.
func (f *fakeVMM) handle(r *http.Request, body []byte) (int, string, any) {
	route, params, err := f.router.FindRoute(r)
	if err != nil {
		return http.StatusBadRequest, "Invalid request method and/or path: " + err.Error(), nil
	}
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
		// Keep the reason; drop the schema and value dumps that follow it.
		msg, _, _ := strings.Cut(err.Error(), "\nSchema:")
		return http.StatusBadRequest, "validation: " + strings.ReplaceAll(msg, "\n", " "), nil
	}
	var m map[string]any
	if len(body) > 0 {
		json.Unmarshal(body, &m)
	}
	str := func(k string) string { s, _ := m[k].(string); return s }
	f.mu.Lock()
	defer f.mu.Unlock()
	started := f.state != fcStateNotStarted
	preBoot := func() string {
		if started {
			return "The requested operation is not supported after starting the microVM."
		}
		f.configured = true
		return ""
	}
	missing := func(keys ...string) string {
		for _, k := range keys {
			if p := str(k); p != "" {
				if _, err := os.Stat(f.hostPath(p)); err != nil {
					return fmt.Sprintf("%s: %v", k, err)
				}
			}
		}
		return ""
	}
	fail := func(msg string) (int, string, any) {
		if msg != "" {
			return http.StatusBadRequest, msg, nil
		}
		return http.StatusNoContent, "", nil
	}
	p := r.URL.Path
	switch {
	case r.Method == "GET" && p == "/":
		return http.StatusOK, "", instanceInfo{AppName: "Firecracker", ID: f.id, State: f.state, VMMVersion: "1.12.0"}
	case p == "/logger":
		return fail(missing("log_path"))
	case p == "/metrics":
		return fail(missing("metrics_path"))
	case p == "/machine-config", p == "/vsock":
		return fail(preBoot())
	case p == "/boot-source":
		if msg := preBoot(); msg != "" {
			return fail(msg)
		}
		f.bootSource = true
		return fail(missing("kernel_image_path", "initrd_path"))
	case strings.HasPrefix(p, "/drives/"):
		if msg := preBoot(); msg != "" {
			return fail(msg)
		}
		if params["drive_id"] != str("drive_id") {
			return fail("The id from the path does not match the id from the body!")
		}
		return fail(missing("path_on_host"))
	case strings.HasPrefix(p, "/network-interfaces/"):
		if params["iface_id"] != str("iface_id") {
			return fail("The id from the path does not match the id from the body!")
		}
		return fail(preBoot())
	case p == "/actions" && str("action_type") == actionInstanceStart:
		switch {
		case started:
			return fail("The requested operation is not supported after starting the microVM.")
		case !f.bootSource:
			return fail("Cannot start microvm without kernel configuration.")
		}
		f.state = fcStateRunning
		f.listenVsock()
		fmt.Fprintf(f.console, "fake guest console: %s booted\n", f.id)
		return fail("")
	case p == "/actions" && str("action_type") == actionSendCtrlAltDel:
		if f.state != fcStateRunning {
			return fail("The requested operation is not supported before starting the microVM.")
		}
		return fail("")
	case p == "/vm":
		if !started {
			return fail("The requested operation is not supported before starting the microVM.")
		}
		f.state = map[string]string{"Paused": fcStatePaused, "Resumed": fcStateRunning}[str("state")]
		return fail("")
	case p == "/snapshot/create":
		if f.state != fcStatePaused {
			return fail("Cannot create snapshot: the microVM is not paused.")
		}
		for _, k := range []string{"snapshot_path", "mem_file_path"} {
			if err := os.WriteFile(f.hostPath(str(k)), []byte("fake "+k), 0o600); err != nil {
				return fail(err.Error())
			}
		}
		return fail("")
	case p == "/snapshot/load":
		if started || f.configured {
			return fail("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		}
		mb, _ := m["mem_backend"].(map[string]any)
		mem, _ := mb["backend_path"].(string)
		for _, q := range []string{str("snapshot_path"), mem} {
			if _, err := os.Stat(f.hostPath(q)); err != nil {
				return fail("Load snapshot error: " + err.Error())
			}
		}
		f.state = fcStatePaused
		if b, _ := m["resume_vm"].(bool); b {
			f.state = fcStateRunning
		}
		return fail("")
	}
	return fail("fake VMM does not implement " + r.Method + " " + p)
}

// listenVsock binds the hybrid vsock socket, as Firecracker does when the
// guest starts.
func (f *fakeVMM) listenVsock() {
	for _, c := range f.calls {
		if c.Path == "/vsock" && c.Status == http.StatusNoContent {
			var v vsock
			json.Unmarshal(c.Body, &v)
			if l, err := net.Listen("unix", f.hostPath(v.UDSPath)); err == nil {
				f.vsock = l
			}
		}
	}
}

// close releases the vsock socket.
func (f *fakeVMM) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.vsock != nil {
		f.vsock.Close()
	}
}

// readCalls reads the calls a fake process recorded.
func readCalls(path string) ([]call, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []call
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var c call
		if err := json.Unmarshal(line, &c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
