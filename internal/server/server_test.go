package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
)

const testKey = "test-key-0123456789abcdef"

var (
	eng     *nano.Engine
	sb      *dispatch.Dispatcher
	ts      *httptest.Server
	openapi validator.Validator
)

// fuzzing reports whether this process only fuzzes (the coordinator or a worker): the shared engine
// the tests need is then not built, so that workers start at once.
func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

func TestMain(m *testing.M) {
	flag.Parse()
	if fuzzing() {
		os.Exit(m.Run())
	}
	ctx := context.Background()
	var err error
	eng, err = nano.New(ctx, nano.Config{MaxConcurrent: 2, MaxQueue: 64})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sb = dispatch.New(eng, dispatch.Config{MaxFileBytes: 1 << 10, MaxFilesBytes: 4 << 10})
	srv, err := New(sb, Config{APIKeys: []string{testKey}, MaxBodyBytes: 1 << 20})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ts = httptest.NewServer(srv.Handler())
	doc, err := libopenapi.NewDocument(OpenAPI())
	if err != nil {
		fmt.Fprintln(os.Stderr, "openapi.yaml:", err)
		os.Exit(1)
	}
	var errs []error
	if openapi, errs = validator.NewValidator(doc); len(errs) > 0 {
		fmt.Fprintln(os.Stderr, "openapi.yaml:", errs)
		os.Exit(1)
	}
	code := m.Run()
	ts.Close()
	sb.Close()
	eng.Close(ctx)
	os.Exit(code)
}

type call struct {
	method, path string
	body         []byte
	contentType  string // "" means application/json when there is a body; "-" means none
	key          string // "" means testKey; "-" means none
	accept       string
	header       map[string]string // more request headers
	host         string            // the Host header, when not the server's address
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

// Contract checks a test asks for.
const (
	checkBoth     = 0 // request and answer conform to openapi.yaml
	checkResponse = 1 // the request breaks the contract on purpose; the answer must still conform
	checkNone     = 2 // the path is outside the contract (unknown routes, nested file paths)
)

// do sends a request and checks it and its answer against openapi.yaml as mode says.
func do(t *testing.T, c call, mode int) reply {
	t.Helper()
	return doAt(t, ts.URL, c, mode)
}

// doAt is do against the server at base.
func doAt(t *testing.T, base string, c call, mode int) reply {
	t.Helper()
	if c.contentType == "" && c.body != nil {
		c.contentType = "application/json"
	}
	req, _ := http.NewRequest(c.method, base+c.path, bytes.NewReader(c.body))
	if c.contentType != "" && c.contentType != "-" {
		req.Header.Set("Content-Type", c.contentType)
	}
	if c.accept != "" {
		req.Header.Set("Accept", c.accept)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	if c.host != "" {
		req.Host = c.host
	}
	switch c.key {
	case "":
		req.Header.Set("Authorization", "Bearer "+testKey)
	case "-":
	default:
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	// Validate against the contract, on copies of the bodies.
	vreq, _ := http.NewRequest(c.method, base+c.path, bytes.NewReader(c.body))
	vreq.Header = req.Header.Clone()
	if mode == checkBoth {
		if ok, errs := openapi.ValidateHttpRequest(vreq); !ok {
			t.Errorf("request %s %s does not conform to openapi.yaml: %s", c.method, c.path, describe(errs))
		}
	}
	if mode != checkNone && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		vresp := &http.Response{StatusCode: resp.StatusCode, Header: resp.Header.Clone(), Body: io.NopCloser(bytes.NewReader(body)), Request: vreq}
		vreq2, _ := http.NewRequest(c.method, base+c.path, bytes.NewReader(c.body))
		vreq2.Header = req.Header.Clone()
		if ok, errs := openapi.ValidateHttpResponse(vreq2, vresp); !ok {
			t.Errorf("answer %d to %s %s does not conform to openapi.yaml: %s\nbody: %s", resp.StatusCode, c.method, c.path, describe(errs), body)
		}
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: body}
}

func describe[E error](errs []E) string {
	var parts []string
	for _, e := range errs {
		parts = append(parts, e.Error())
	}
	return strings.Join(parts, "; ")
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func decodeInto[T any](t *testing.T, r reply) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("answer %d is not the expected JSON: %v\n%s", r.status, err, r.body)
	}
	return v
}

func wantError(t *testing.T, r reply, status int, code, msg string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	e := decodeInto[api.ErrorBody](t, r)
	if e.Error.Code != code || !strings.Contains(e.Error.Message, msg) {
		t.Fatalf("error %+v, want code %s with %q", e.Error, code, msg)
	}
}

func TestRunEndpoint(t *testing.T) {
	r := do(t, call{method: "POST", path: "/v1/run", body: mustJSON(api.RunBody{
		Code:  "import os\nprint(open('/data/in.txt').read().upper())\nos.makedirs('/output/sub', exist_ok=True)\nopen('/output/sub/r.txt','w').write('report')\nopen('/output/big.bin','wb').write(b'x'*5000)",
		Files: map[string][]byte{"/data/in.txt": []byte("hello")},
	})}, checkBoth)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	res := decodeInto[api.RunResponse](t, r)
	if res.Stdout != "HELLO\n" || res.Error != nil || res.Tier != api.TierNano {
		t.Fatalf("%+v", res)
	}
	if string(res.Files["/output/sub/r.txt"]) != "report" || len(res.FilesOmitted) != 1 || res.FilesOmitted[0] != "/output/big.bin" {
		t.Fatalf("files %v omitted %v", res.Files, res.FilesOmitted)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Fatal("no X-Request-Id")
	}
}

func TestRunProgramErrorIs200(t *testing.T) {
	r := do(t, call{method: "POST", path: "/v1/run", body: mustJSON(api.RunBody{Code: "while True: pass", Limits: api.Limits{TimeoutMS: 200}})}, checkBoth)
	res := decodeInto[api.RunResponse](t, r)
	if r.status != 200 || !res.TimedOut || res.Error.Type != api.ErrTimeout || res.ExitCode != api.ExitTimeout {
		t.Fatalf("%d %+v", r.status, res)
	}
}

func TestBadRequests(t *testing.T) {
	big := strings.Repeat("x", 2<<20)
	cases := []struct {
		name   string
		c      call
		status int
		code   string
		msg    string
	}{
		{"invalid JSON", call{method: "POST", path: "/v1/run", body: []byte(`{"code": `)}, 400, "invalid_argument", "invalid JSON"},
		{"unknown field", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "cod": 2}`)}, 400, "invalid_argument", "unknown field"},
		{"two values", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1"} {}`)}, 400, "invalid_argument", "more than one"},
		{"empty body", call{method: "POST", path: "/v1/run", body: []byte{}}, 400, "invalid_argument", "empty"},
		{"wrong content type", call{method: "POST", path: "/v1/run", body: []byte(`code=1`), contentType: "application/x-www-form-urlencoded"}, 400, "invalid_argument", "content type"},
		{"limit above maximum", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "memory_limit_mb": 100000}`)}, 400, "invalid_argument", "maximum"},
		{"relative file path", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "files": {"data/x": ""}}`)}, 400, "invalid_argument", "absolute"},
		{"dotdot file path", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "files": {"/data/../../etc/passwd": ""}}`)}, 400, "invalid_argument", ".."},
		{"NUL in path", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "files": {"/data/a\u0000b": ""}}`)}, 400, "invalid_argument", "NUL"},
		{"bad base64", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "files": {"/data/a": "***"}}`)}, 400, "invalid_argument", "invalid JSON"},
		{"unknown tier", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "tier": "mega"}`)}, 400, "invalid_argument", "unknown tier"},
		{"body too large", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "` + big + `"}`)}, 413, "too_large", "larger than"},
		{"no key", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1"}`), key: "-"}, 401, "unauthenticated", "API key"},
		{"wrong key", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1"}`), key: "not-the-key-0123456789"}, 401, "unauthenticated", "API key"},
		{"unknown session", call{method: "GET", path: "/v1/sessions/ses_nope"}, 404, "not_found", "ses_nope"},
		{"negative ttl", call{method: "POST", path: "/v1/sessions", body: []byte(`{"ttl_s": -1}`)}, 400, "invalid_argument", "ttl_s"},
		{"unknown route", call{method: "GET", path: "/v2/everything"}, 404, "not_found", "no route"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mode := checkResponse
			if strings.HasPrefix(tc.c.path, "/v2/") {
				mode = checkNone
			}
			wantError(t, do(t, tc.c, mode), tc.status, tc.code, tc.msg)
		})
	}
}

func TestHealthzNeedsNoKey(t *testing.T) {
	r := do(t, call{method: "GET", path: "/healthz", key: "-"}, checkBoth)
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"status":"ok"`)) {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestSessionLifecycle(t *testing.T) {
	r := do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{"timeout_ms": 5000, "ttl_s": 60}`)}, checkBoth)
	if r.status != 201 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	s := decodeInto[api.Session](t, r)
	base := "/v1/sessions/" + s.ID
	if s.TTLSeconds != 60 || s.Limits.TimeoutMS != 5000 || r.header.Get("Location") != base {
		t.Fatalf("%+v %v", s, r.header)
	}
	run := func(code string) api.Result {
		t.Helper()
		r := do(t, call{method: "POST", path: base + "/run", body: mustJSON(api.SessionRunRequest{Code: code})}, checkBoth)
		if r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		return decodeInto[api.Result](t, r)
	}
	run("import json\ncount = 41")
	// Upload with an escaped slash (one path segment, as OpenAPI sees it) and with plain slashes.
	if r := do(t, call{method: "PUT", path: base + "/files/data%2Fin.json", body: []byte(`{"n": 1}`), contentType: "application/octet-stream"}, checkBoth); r.status != 201 {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	if r := do(t, call{method: "PUT", path: base + "/files/data/deep/x.bin", body: []byte{0, 1, 2}, contentType: "application/octet-stream"}, checkNone); r.status != 201 {
		t.Fatalf("nested upload: %d %s", r.status, r.body)
	}
	res := run("count += json.load(open('/data/in.json'))['n']\nprint(count)\nopen('/output/o.txt','w').write(str(count))")
	if res.Stdout != "42\n" {
		t.Fatalf("%+v", res)
	}
	if r := do(t, call{method: "GET", path: base + "/files/output%2Fo.txt"}, checkBoth); r.status != 200 || string(r.body) != "42" {
		t.Fatalf("download: %d %q", r.status, r.body)
	}
	r = do(t, call{method: "GET", path: base + "/files?dir=/data"}, checkBoth)
	list := decodeInto[api.FileList](t, r)
	if len(list.Files) != 2 || list.Files[0].Name != "deep" || !list.Files[0].IsDir || list.Files[1].Name != "in.json" {
		t.Fatalf("%+v", list)
	}
	for _, bad := range []struct{ path, code string }{
		{base + "/files/output%2Fnone", "not_found"},
		{base + "/files/..%2F..%2Fetc%2Fpasswd", "invalid_argument"},
		{base + "/files/data", "invalid_argument"},
	} {
		r := do(t, call{method: "GET", path: bad.path}, checkResponse)
		if e := decodeInto[api.ErrorBody](t, r); e.Error.Code != bad.code {
			t.Errorf("%s: %d %s", bad.path, r.status, r.body)
		}
	}
	if r := do(t, call{method: "GET", path: base}, checkBoth); decodeInto[api.Session](t, r).Cells != 2 {
		t.Fatalf("%s", r.body)
	}
	listed := false
	for _, other := range decodeInto[api.SessionList](t, do(t, call{method: "GET", path: "/v1/sessions"}, checkBoth)).Sessions {
		listed = listed || other.ID == s.ID && other.Cells == 2
	}
	if !listed {
		t.Fatalf("session %s is not in the list", s.ID)
	}
	if r := do(t, call{method: "DELETE", path: base}, checkBoth); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	for _, other := range decodeInto[api.SessionList](t, do(t, call{method: "GET", path: "/v1/sessions"}, checkBoth)).Sessions {
		if other.ID == s.ID {
			t.Fatalf("deleted session %s is still listed", s.ID)
		}
	}
	wantError(t, do(t, call{method: "POST", path: base + "/run", body: mustJSON(api.SessionRunRequest{Code: "1"})}, checkBoth), 404, "not_found", s.ID)
}

func TestSessionBusyIsConflict(t *testing.T) {
	s := decodeInto[api.Session](t, do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{}`)}, checkBoth))
	base := "/v1/sessions/" + s.ID
	defer do(t, call{method: "DELETE", path: base}, checkBoth)
	started := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		req, _ := http.NewRequest("POST", ts.URL+base+"/run", strings.NewReader(`{"code": "import time\nprint('go', flush=True)\ntime.sleep(1)"}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			close(started)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("the holding run got %d", resp.StatusCode)
			close(started)
			return
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "event: stdout") {
				close(started)
			}
		}
	}()
	<-started
	wantError(t, do(t, call{method: "POST", path: base + "/run", body: mustJSON(api.SessionRunRequest{Code: "1"})}, checkBoth), 409, "conflict", "busy")
	wg.Wait()
}

func TestStreaming(t *testing.T) {
	req, _ := http.NewRequest("POST", ts.URL+"/v1/run", strings.NewReader(`{"code": "import sys, time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.05)\nprint('oops', file=sys.stderr)"}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	var events []string
	var stdout strings.Builder
	var result api.RunResponse
	sc := bufio.NewScanner(resp.Body)
	var event string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = line[7:]
			events = append(events, event)
		case strings.HasPrefix(line, "data: ") && event == "stdout":
			var c struct{ Text string }
			json.Unmarshal([]byte(line[6:]), &c)
			stdout.WriteString(c.Text)
		case strings.HasPrefix(line, "data: ") && event == "result":
			json.Unmarshal([]byte(line[6:]), &result)
		}
	}
	if stdout.String() != "0\n1\n2\n" || result.Stdout != "0\n1\n2\n" || result.Stderr != "oops\n" {
		t.Fatalf("events %v stdout %q result %+v", events, stdout.String(), result)
	}
	if events[len(events)-1] != "result" || events[0] != "stdout" {
		t.Fatalf("event order %v", events)
	}
}

func TestOverloadIs429(t *testing.T) {
	e, err := nano.New(context.Background(), nano.Config{PoolSize: -1, MaxConcurrent: 1, MaxQueue: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	// More places than the engine's one slot, so that the second run reaches the engine's refusal.
	d := dispatch.New(e, dispatch.Config{NanoSlots: 2})
	defer d.Close()
	srv, _ := New(d, Config{})
	h := httptest.NewServer(srv.Handler())
	defer h.Close()
	// Hold the only slot: a streamed run that says when it has started, then is busy (a sleeping one
	// would give the slot up).
	req, _ := http.NewRequest("POST", h.URL+"/v1/run", strings.NewReader(`{"code": "import time\nprint('go', flush=True)\nt = time.time()\nwhile time.time() - t < 1: pass"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	held, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Body.Close()
	sc := bufio.NewScanner(held.Body)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "event: stdout") {
	}
	resp, err := http.Post(h.URL+"/v1/run", "application/json", strings.NewReader(`{"code": "print(1)"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 429 && resp.Header.Get("Retry-After") != "" {
		return
	}
	t.Fatalf("a run while the only slot was busy got %d (Retry-After %q), want 429", resp.StatusCode, resp.Header.Get("Retry-After"))
}

func TestMetrics(t *testing.T) {
	do(t, call{method: "POST", path: "/v1/run", body: []byte(`{"code": "print(1)"}`)}, checkBoth)
	r := do(t, call{method: "GET", path: "/metrics"}, checkBoth)
	for _, want := range []string{`agentbox_runs_total{outcome="ok",tier="nano"}`, "agentbox_run_duration_seconds_bucket", "agentbox_queue_depth", "agentbox_pool_ready", "agentbox_sessions_open", `agentbox_http_requests_total{code="200",route="POST /v1/run"}`} {
		if !bytes.Contains(r.body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestStartupRefusesOpenAddressWithoutKey(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:0": true, "localhost:0": true, "[::1]:0": true, "0.0.0.0:8080": false, ":8080": false, "10.1.2.3:80": false} {
		_, err := New(sb, Config{Addr: addr})
		if (err == nil) != ok {
			t.Errorf("%s: err %v", addr, err)
		}
	}
	if _, err := New(sb, Config{Addr: "0.0.0.0:8080", APIKeys: []string{"short"}}); err == nil {
		t.Error("a short API key was accepted")
	}
}

func TestGracefulShutdown(t *testing.T) {
	e, err := nano.New(context.Background(), nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(e, dispatch.Config{})
	srv, _ := New(d, Config{Addr: "127.0.0.1:0"})
	l, err := newListener()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := http.Post("http://"+l.Addr().String()+"/v1/run", "application/json", strings.NewReader(`{"code": "import time; time.sleep(0.5); print('finished')"}`))
		done <- resp
	}()
	time.Sleep(150 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	resp := <-done
	if resp == nil || resp.StatusCode != 200 {
		t.Fatalf("in-flight request did not finish: %v", resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if !bytes.Contains(body, []byte("finished")) {
		t.Fatalf("%s", body)
	}
	d.Close()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func newListener() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

func TestSlowClientIsCutOff(t *testing.T) {
	srv, _ := New(sb, Config{Addr: "127.0.0.1:0", ReadHeaderTimeout: 200 * time.Millisecond, ReadTimeout: 400 * time.Millisecond})
	l, err := newListener()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())
	for name, send := range map[string]string{
		"headers never finish": "POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\n",
		"body never finishes":  "POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"code\": ",
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write([]byte(send))
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			io.ReadAll(conn) // returns when the server closes the connection
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("server held a stalled client for %v", d)
			}
		})
	}
	// The server still serves.
	resp, err := http.Get("http://" + l.Addr().String() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", err, resp)
	}
	resp.Body.Close()
}
