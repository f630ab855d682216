package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/smolvm-go/smolvm"
)

var (
	docOnce   sync.Once
	doc       *openapi3.T
	docRouter routers.Router
	docErr    error
)

// loadDoc loads and validates the embedded OpenAPI document once.
func loadDoc(t testing.TB) (*openapi3.T, routers.Router) {
	t.Helper()
	docOnce.Do(func() {
		openapi3filter.RegisterBodyDecoder(NDJSON, ndjsonDecoder)
		l := openapi3.NewLoader()
		doc, docErr = l.LoadFromData(OpenAPI)
		if docErr != nil {
			return
		}
		if docErr = doc.Validate(context.Background()); docErr != nil {
			return
		}
		docRouter, docErr = gorillamux.NewRouter(doc)
	})
	if docErr != nil {
		t.Fatalf("OpenAPI document: %v", docErr)
	}
	return doc, docRouter
}

// ndjsonDecoder validates every line of an NDJSON body against the
// media type's schema (one event) and returns the last one.
func ndjsonDecoder(r io.Reader, _ http.Header, s *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var last any
	for sc.Scan() {
		var v any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return nil, err
		}
		if err := s.Value.VisitJSON(v); err != nil {
			return nil, fmt.Errorf("event %s: %w", sc.Bytes(), err)
		}
		last = v
	}
	return last, sc.Err()
}

// testServer is a server on a real loopback listener with its Host.
type testServer struct {
	*Server
	h   *smolvm.Host
	ts  *httptest.Server
	dir string
}

func (ts *testServer) URL() string { return ts.ts.URL }

// newTestServer serves dir's Host on loopback with the given static keys.
func newTestServer(t *testing.T, dir string, o Options) *testServer {
	t.Helper()
	h, err := smolvm.Open(context.Background(), smolvm.HostOptions{DataDir: dir, HostDir: filepath.Join(dir, ".host")})
	if err != nil {
		t.Fatal(err)
	}
	o.Host = h
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, h: h, ts: httptest.NewServer(s.Handler()), dir: dir}
	return ts
}

func (ts *testServer) close() {
	ts.ts.Close()
	ts.Server.Close()
	ts.h.Close()
}

// call is one API call checked against the OpenAPI document.
type call struct {
	method, path string
	body         any    // marshalled as JSON unless raw
	raw          []byte // sent as is
	ctype        string
	key          string
	accept       string
	skipReqCheck bool // bad input on purpose
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) kind() string {
	var e errorBody
	json.Unmarshal(r.body, &e)
	return e.Error.Kind
}

func (r response) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// do sends c, validating the request (unless skipReqCheck) and the
// response against the OpenAPI document.
func do(t testing.TB, base string, c call) response {
	t.Helper()
	_, router := loadDoc(t)
	var body []byte
	ctype := c.ctype
	switch {
	case c.raw != nil:
		body = c.raw
	case c.body != nil:
		body, _ = json.Marshal(c.body)
		if ctype == "" {
			ctype = "application/json"
		}
	}
	req, err := http.NewRequest(c.method, base+c.path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body = http.NoBody
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	if c.accept != "" {
		req.Header.Set("Accept", c.accept)
	}
	route, params, err := router.FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s: not in the OpenAPI document: %v", c.method, c.path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if !c.skipReqCheck {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Fatalf("%s %s: request does not match the document: %v", c.method, c.path, err)
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", c.method, c.path, err)
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(rb)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Fatalf("%s %s: response %d %s does not match the document: %v", c.method, c.path, resp.StatusCode, rb, err)
	}
	if resp.StatusCode >= 400 {
		var e errorBody
		if err := json.Unmarshal(rb, &e); err != nil || e.Error.Kind == "" || e.Error.Message == "" {
			t.Fatalf("%s %s: error %d without a JSON error body: %s", c.method, c.path, resp.StatusCode, rb)
		}
	}
	return response{status: resp.StatusCode, header: resp.Header, body: rb}
}

// docRoutes lists the document's operations as "METHOD /path".
func docRoutes(t testing.TB) []string {
	d, _ := loadDoc(t)
	var out []string
	for p, item := range d.Paths.Map() {
		for m := range item.Operations() {
			out = append(out, strings.ToUpper(m)+" "+p)
		}
	}
	sort.Strings(out)
	return out
}
