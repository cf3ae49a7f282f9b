package server

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
)

const (
	keyB     = "key-b-0123456789abcdef"
	keyAdmin = "key-admin-0123456789abcdef"
)

// serveWith points do() at a server over d with cfg (testKey is key A) for the rest of the test.
func serveWith(t *testing.T, d *dispatch.Dispatcher, cfg Config) *httptest.Server {
	t.Helper()
	srv, err := New(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := httptest.NewServer(srv.Handler())
	old := ts
	ts = h
	t.Cleanup(func() { ts = old; h.Close() })
	return h
}

// TestTenantsCannotSeeEachOther: each API key sees only the sessions it started; for another key
// they do not exist (404 like an unknown id, never 403), and only an admin key sees them all.
func TestTenantsCannotSeeEachOther(t *testing.T) {
	d := dispatch.New(eng, dispatch.Config{})
	t.Cleanup(d.Close)
	serveWith(t, d, Config{APIKeys: []string{testKey, keyB}, Keys: []APIKey{{Key: keyAdmin, Admin: true}}})
	r := do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{}`)}, checkBoth)
	s := decodeInto[api.Session](t, r)
	base := "/v1/sessions/" + s.ID
	if s.Owner != TenantID(testKey) || strings.Contains(string(r.body), testKey) {
		t.Fatalf("owner %q (want %s, never the key): %s", s.Owner, TenantID(testKey), r.body)
	}
	unknown := decodeInto[api.ErrorBody](t, do(t, call{method: "GET", path: "/v1/sessions/ses_nope", key: keyB}, checkBoth))
	for _, c := range []call{
		{method: "GET", path: base},
		{method: "POST", path: base + "/run", body: mustJSON(api.SessionRunRequest{Code: "print(1)"})},
		{method: "GET", path: base + "/files?dir=/data"},
		{method: "PUT", path: base + "/files/data%2Fx", body: []byte("x"), contentType: "application/octet-stream"},
		{method: "GET", path: base + "/files/data%2Fx"},
		{method: "PATCH", path: base + "/network", body: []byte(`{}`)},
		{method: "DELETE", path: base},
	} {
		t.Run(c.method+" "+strings.TrimPrefix(c.path, base), func(t *testing.T) {
			c.key = keyB
			r := do(t, c, checkBoth)
			wantError(t, r, 404, "not_found", s.ID)
			if got := decodeInto[api.ErrorBody](t, r).Error.Message; strings.ReplaceAll(got, s.ID, "ses_nope") != unknown.Error.Message {
				t.Fatalf("another key's session is told apart from an unknown one: %q vs %q", got, unknown.Error.Message)
			}
		})
	}
	list := func(key string) []api.Session {
		return decodeInto[api.SessionList](t, do(t, call{method: "GET", path: "/v1/sessions", key: key}, checkBoth)).Sessions
	}
	if l := list(keyB); len(l) != 0 {
		t.Fatalf("key B lists %+v", l)
	}
	if l := list(""); len(l) != 1 || l[0].ID != s.ID {
		t.Fatalf("key A lists %+v", l)
	}
	if l := list(keyAdmin); len(l) != 1 || l[0].Owner != TenantID(testKey) {
		t.Fatalf("the admin lists %+v", l)
	}
	if r := do(t, call{method: "POST", path: base + "/run", body: mustJSON(api.SessionRunRequest{Code: "print(1)"})}, checkBoth); r.status != 200 {
		t.Fatalf("the owner's session after key B's attempts: %d %s", r.status, r.body)
	}
	if r := do(t, call{method: "POST", path: base + "/run", key: keyAdmin, body: mustJSON(api.SessionRunRequest{Code: "print(2)"})}, checkBoth); r.status != 200 {
		t.Fatalf("the admin's run: %d %s", r.status, r.body)
	}
	if r := do(t, call{method: "DELETE", path: base, key: keyAdmin}, checkBoth); r.status != 204 {
		t.Fatalf("the admin's delete: %d %s", r.status, r.body)
	}
}

// bearer adds an API key to every request.
type bearer string

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(b))
	return http.DefaultTransport.RoundTrip(r)
}

// TestMCPSessionsAreScopedByKey: sessions the MCP tools start over HTTP belong to the key that opened
// the MCP connection, and another key cannot use that connection's id.
func TestMCPSessionsAreScopedByKey(t *testing.T) {
	d := dispatch.New(eng, dispatch.Config{})
	t.Cleanup(d.Close)
	h := serveWith(t, d, Config{APIKeys: []string{testKey, keyB}, MCP: mcpserver.HTTPHandler(d, "test")})
	ctx := context.Background()
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	conn, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: h.URL + "/mcp", HTTPClient: &http.Client{Transport: bearer(testKey)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	res, err := conn.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"code": "print(6*7)", "session": "main"}})
	if err != nil || res.IsError {
		t.Fatalf("%v %+v", err, res)
	}
	l := decodeInto[api.SessionList](t, do(t, call{method: "GET", path: "/v1/sessions"}, checkBoth)).Sessions
	if len(l) != 1 || l[0].Owner != TenantID(testKey) {
		t.Fatalf("key A lists %+v", l)
	}
	if l := decodeInto[api.SessionList](t, do(t, call{method: "GET", path: "/v1/sessions", key: keyB}, checkBoth)).Sessions; len(l) != 0 {
		t.Fatalf("key B lists %+v", l)
	}
	req, _ := http.NewRequest("POST", h.URL+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"list_files","arguments":{"session":"main","path":"/"}}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Session-Id", conn.ID())
	resp, err := (&http.Client{Transport: bearer(keyB)}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("key B on key A's MCP connection: %d, want 403", resp.StatusCode)
	}
}

// TestMemoryBudget: the API answers 429 with Retry-After and says the memory budget is spent.
func TestMemoryBudget(t *testing.T) {
	d := dispatch.New(eng, dispatch.Config{MemoryBudgetMB: 300})
	t.Cleanup(d.Close)
	serveWith(t, d, Config{APIKeys: []string{testKey}})
	if r := do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{"memory_limit_mb": 256}`)}, checkBoth); r.status != 201 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for _, c := range []call{
		{method: "POST", path: "/v1/sessions", body: []byte(`{"memory_limit_mb": 256}`)},
		{method: "POST", path: "/v1/run", body: []byte(`{"code": "print(1)"}`)},
	} {
		r := do(t, c, checkBoth)
		wantError(t, r, 429, "overloaded", "memory budget is spent")
		if r.header.Get("Retry-After") == "" {
			t.Fatal("no Retry-After")
		}
	}
	if r := do(t, call{method: "POST", path: "/v1/run", body: []byte(`{"code": "print(1)", "memory_limit_mb": 32}`)}, checkBoth); r.status != 200 {
		t.Fatalf("a run that fits: %d %s", r.status, r.body)
	}
}

// TestFairAdmission: one key's burst is refused past its share of the slots and its own queue, while
// another key is still admitted; before, the burst filled the engine's queue and locked the other out.
func TestFairAdmission(t *testing.T) {
	e, err := nano.New(context.Background(), nano.Config{MaxConcurrent: 2, MaxQueue: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	d := dispatch.New(e, dispatch.Config{NanoSlots: 2, TenantLimits: dispatch.TenantLimits{Queue: 2}})
	defer d.Close()
	h := serveWith(t, d, Config{APIKeys: []string{testKey, keyB}})
	post := func(key, body string) (int, string) {
		req, _ := http.NewRequest("POST", h.URL+"/v1/run", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	var mu sync.Mutex
	statuses := map[int]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			code, retry := post(testKey, `{"code": "while True: pass", "timeout_ms": 1000}`)
			mu.Lock()
			defer mu.Unlock()
			if code == 429 && retry == "" {
				t.Error("429 without Retry-After")
			}
			statuses[code]++
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		refused := statuses[429]
		mu.Unlock()
		if refused == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key A's burst of 8 had %d refused in 10 s; want 4 (2 running, 2 queued)", refused)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _ := post(keyB, `{"code": "print(1)"}`); code != 200 {
		t.Fatalf("key B during key A's burst: %d", code)
	}
	wg.Wait()
	if statuses[200] != 4 || statuses[429] != 4 {
		t.Fatalf("key A: %v", statuses)
	}
}

// TestDisconnectCancelsRun: a client that goes away cancels its run (the request's context reaches
// the engine), so its slot frees at once, not when the run's own timeout ends.
func TestDisconnectCancelsRun(t *testing.T) {
	e, err := nano.New(context.Background(), nano.Config{MaxConcurrent: 1, MaxQueue: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	// More places than the engine's one slot, so that a second run reaches the engine, which has
	// no queue and answers 429 while the slot is held.
	d := dispatch.New(e, dispatch.Config{NanoSlots: 2})
	defer d.Close()
	h := serveWith(t, d, Config{})
	run := func(ctx context.Context, code, accept string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", h.URL+"/v1/run", strings.NewReader(`{"code": "`+code+`", "timeout_ms": 120000}`))
		req.Header.Set("Content-Type", "application/json")
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		return http.DefaultClient.Do(req)
	}
	status := func() int {
		resp, err := run(context.Background(), "print(1)", "")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// freed waits until the only slot serves another run; the busy run would hold it for 120 s.
	freed := func(t *testing.T) {
		deadline := time.Now().Add(20 * time.Second)
		for status() != 200 {
			if time.Now().After(deadline) {
				t.Fatal("the disconnected client's run still holds the slot after 20 s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Run("stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := run(ctx, `print('go', flush=True)\nwhile True: pass`, "text/event-stream")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() && !strings.HasPrefix(sc.Text(), "event: stdout") {
		}
		if status() != 429 {
			t.Fatal("the busy run does not hold the slot")
		}
		cancel()
		resp.Body.Close()
		freed(t)
	})
	t.Run("json", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			// A probe below may take the slot first and refuse this run (no queue): try again
			// until it holds the slot, then block until the cancel.
			for {
				resp, err := run(ctx, "while True: pass", "")
				if err != nil {
					return
				}
				code := resp.StatusCode
				resp.Body.Close()
				if code != http.StatusTooManyRequests {
					return
				}
			}
		}()
		deadline := time.Now().Add(10 * time.Second)
		for status() != 429 {
			if time.Now().After(deadline) {
				t.Fatal("the busy run never took the slot")
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		<-done
		freed(t)
	})
}

func TestParseKeyFile(t *testing.T) {
	cases := []struct {
		name string
		file string
		want []APIKey
		err  string
	}{
		{"plain keys, comments, blanks", "# keys\nkey-one-0123456789abcdef\n\n  key-two-0123456789abcdef  \n", []APIKey{{Key: "key-one-0123456789abcdef"}, {Key: "key-two-0123456789abcdef"}}, ""},
		{"roles and limits", "key-one-0123456789abcdef sessions=4 runs=2 queue=0\nkey-ops-0123456789abcdef admin\n",
			[]APIKey{{Key: "key-one-0123456789abcdef", Limits: dispatch.TenantLimits{Sessions: 4, Runs: 2}}, {Key: "key-ops-0123456789abcdef", Admin: true}}, ""},
		{"audit scopes", "key-ops-0123456789abcdef admin audit\nkey-aud-0123456789abcdef audit-only\n",
			[]APIKey{{Key: "key-ops-0123456789abcdef", Admin: true, Audit: true}, {Key: "key-aud-0123456789abcdef", Audit: true, AuditOnly: true}}, ""},
		{"unknown word", "key-one-0123456789abcdef root\n", nil, `line 1: "root"`},
		{"bad number", "# x\nkey-one-0123456789abcdef runs=two\n", nil, `line 2: "runs=two"`},
		{"negative", "key-one-0123456789abcdef sessions=-1\n", nil, "N >= 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKeyFile(tc.file)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "0123456789abcdef") {
					t.Fatalf("want an error with %q that does not show the key, got %v", tc.err, err)
				}
				return
			}
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("%v %+v", err, got)
			}
		})
	}
	if _, err := New(sb, Config{APIKeys: []string{testKey}, Keys: []APIKey{{Key: testKey, Admin: true}}}); err == nil || strings.Contains(err.Error(), testKey) {
		t.Fatalf("a key given twice: %v", err)
	}
	if _, err := New(sb, Config{Keys: []APIKey{{Key: testKey, Admin: true, AuditOnly: true}}}); err == nil || !strings.Contains(err.Error(), "audit-only") {
		t.Fatalf("an admin audit-only key: %v", err)
	}
	if _, err := New(sb, Config{Keys: []APIKey{{Key: "short", Admin: true}}}); err == nil {
		t.Fatal("a short admin key was accepted")
	}
}
