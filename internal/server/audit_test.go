package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
)

const (
	auditorKey = "auditor-key-0123456789abcdef" // audit-only
	opsKey     = "ops-key-0123456789abcdef"     // runs code and reads the audit log
)

// auditServer is a server with the audit log on, over the shared dispatcher.
func auditServer(t *testing.T) (*httptest.Server, *audit.Log) {
	t.Helper()
	l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(t.TempDir(), "audit.db"), CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(sb, Config{APIKeys: []string{testKey}, Keys: []APIKey{{Key: auditorKey, AuditOnly: true}, {Key: opsKey, Audit: true}},
		MaxBodyBytes: 1 << 20, Audit: l})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		l.Close()
	})
	return hs, l
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestAuditRecordsEveryRequestOnce runs a scripted workload through the real HTTP server (runs,
// sessions, files, auth failures, scope refusals) while the egress side records decisions and DLP
// findings through Record, and checks that every request appears exactly once, with its fields, in
// a chain that verifies.
func TestAuditRecordsEveryRequestOnce(t *testing.T) {
	hs, l := auditServer(t)
	type step struct {
		c      call
		status int
		types  []string // the events the request must produce, in order
		check  func(t *testing.T, evs []api.AuditEvent, r reply)
	}
	detail := func(t *testing.T, e api.AuditEvent, k string, want any) {
		t.Helper()
		got, _ := json.Marshal(e.Details[k])
		w, _ := json.Marshal(want)
		if string(got) != string(w) {
			t.Errorf("%s: details.%s = %s, want %s", e.Type, k, got, w)
		}
	}
	okCode, badCode := "print('hello')", "1/0"
	var sessionID string
	steps := []step{
		{c: call{method: "POST", path: "/v1/run", body: mustJSON(map[string]any{"code": okCode})}, status: 200, types: []string{"run"},
			check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				e := evs[0]
				detail(t, e, "code_sha256", sha(okCode))
				detail(t, e, "code_size", len(okCode))
				detail(t, e, "outcome", "ok")
				detail(t, e, "exit_code", 0)
				if e.Actor != TenantID(testKey) || e.Tier != "nano" || e.Verdict != "ok" || e.Details["route_reason"] == "" {
					t.Errorf("run event %+v", e)
				}
			}},
		{c: call{method: "POST", path: "/v1/run", body: mustJSON(map[string]any{"code": badCode, "timeout_ms": 5000})}, status: 200, types: []string{"run"},
			check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				detail(t, evs[0], "error_type", "ZeroDivisionError")
				detail(t, evs[0], "outcome", "error")
				detail(t, evs[0], "limits", map[string]any{"timeout_ms": 5000})
			}},
		{c: call{method: "POST", path: "/v1/run", body: mustJSON(map[string]any{"code": "1", "packages": []string{"requests"}, "tier": "nano"})}, status: 400,
			types: []string{"package.install", "run"},
			check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				detail(t, evs[0], "packages", []string{"requests"})
				detail(t, evs[1], "outcome", "refused")
				detail(t, evs[1], "error_type", "invalid_argument")
			}},
		{c: call{method: "POST", path: "/v1/sessions", body: mustJSON(map[string]any{"tier": "nano", "ttl_s": 60})}, status: 201, types: []string{"session.create"},
			check: func(t *testing.T, evs []api.AuditEvent, r reply) {
				sessionID = decodeInto[api.Session](t, r).ID
				if evs[0].Session != sessionID || evs[0].Tier != "nano" {
					t.Errorf("session.create %+v", evs[0])
				}
				detail(t, evs[0], "ttl_s", 60)
			}},
		{c: call{method: "PUT", path: "/v1/sessions/{sid}/files/data/in.csv", body: []byte("a,b\n1,2\n"), contentType: "application/octet-stream"}, status: 201,
			types: []string{"file.upload"}, check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				detail(t, evs[0], "path", "/data/in.csv")
				detail(t, evs[0], "size", 8)
				detail(t, evs[0], "sha256", sha("a,b\n1,2\n"))
			}},
		{c: call{method: "POST", path: "/v1/sessions/{sid}/run", body: mustJSON(map[string]any{"code": "open('/output/o.txt','w').write('xyz')"})}, status: 200,
			types: []string{"run"}, check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				if evs[0].Session != sessionID {
					t.Errorf("session run not tied to its session: %+v", evs[0])
				}
			}},
		{c: call{method: "GET", path: "/v1/sessions/{sid}/files/output/o.txt"}, status: 200, types: []string{"file.download"},
			check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				detail(t, evs[0], "sha256", sha("xyz"))
				detail(t, evs[0], "size", 3)
			}},
		{c: call{method: "DELETE", path: "/v1/sessions/{sid}"}, status: 204, types: []string{"session.close"}},
		{c: call{method: "POST", path: "/v1/run", body: mustJSON(map[string]any{"code": "1"}), key: "wrong-key-0123456789abcdef"}, status: 401, types: []string{"auth.failure"},
			check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				detail(t, evs[0], "path", "/v1/run")
				detail(t, evs[0], "has_key", true)
				if evs[0].Verdict != "deny" || evs[0].Actor != "system" {
					t.Errorf("auth failure %+v", evs[0])
				}
			}},
		{c: call{method: "GET", path: "/v1/sessions", key: "-"}, status: 401, types: []string{"auth.failure"}},
		{c: call{method: "GET", path: "/v1/audit/events"}, status: 403, types: []string{"auth.failure"},
			check: func(t *testing.T, evs []api.AuditEvent, _ reply) {
				if evs[0].Actor != TenantID(testKey) || !strings.Contains(fmt.Sprint(evs[0].Details["reason"]), "audit scope") {
					t.Errorf("scope refusal %+v", evs[0])
				}
			}},
		{c: call{method: "POST", path: "/v1/run", body: mustJSON(map[string]any{"code": "1"}), key: auditorKey}, status: 403, types: []string{"auth.failure"}},
		{c: call{method: "GET", path: "/healthz", key: "-"}, status: 200, types: nil},
	}
	// The egress side's events, through the one entry point it is given.
	egress := []audit.Event{
		{Type: audit.TypeEgressRequest, Actor: TenantID(testKey), Verdict: audit.VerdictAllow, Details: map[string]any{"host": "pypi.org", "method": "GET", "path": "/simple/", "rule": "allow-pypi", "source": "policy"}},
		{Type: audit.TypeEgressRequest, Actor: TenantID(testKey), Verdict: audit.VerdictBlock, Details: map[string]any{"host": "exfil.example", "method": "POST", "path": "/", "rule": "default-deny", "source": "policy"}},
		{Type: audit.TypeEgressDLP, Actor: TenantID(testKey), Verdict: audit.VerdictRedact, Details: map[string]any{"host": "api.example", "detectors": []map[string]any{{"type": "email", "count": 3}}}},
	}
	for i, st := range steps {
		st.c.path = strings.ReplaceAll(st.c.path, "{sid}", sessionID)
		st.c.header = map[string]string{"X-Request-Id": fmt.Sprintf("wl-%02d", i)}
		mode := checkBoth
		if st.c.key == "-" {
			mode = checkResponse // a request without a key breaks the contract on purpose
		}
		if strings.Count(st.c.path, "/") > 5 {
			mode = checkNone // nested file paths are outside the contract's template
		}
		r := doAt(t, hs.URL, st.c, mode)
		if r.status != st.status {
			t.Fatalf("step %d %s %s: status %d, want %d: %s", i, st.c.method, st.c.path, r.status, st.status, r.body)
		}
		if i < len(egress) {
			if err := l.Record(context.Background(), egress[i]); err != nil {
				t.Fatal(err)
			}
		}
		// Committed before the answer: the events are there the moment the request returns.
		res, err := l.Search(context.Background(), audit.Query{Text: fmt.Sprintf(`"wl-%02d"`, i)})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		evs := res.Events
		for j := len(evs) - 1; j >= 0; j-- { // oldest first
			if evs[j].Details["request_id"] != fmt.Sprintf("wl-%02d", i) {
				continue
			}
			got = append(got, evs[j].Type)
		}
		slices := make([]api.AuditEvent, 0, len(evs))
		for j := len(evs) - 1; j >= 0; j-- {
			slices = append(slices, evs[j])
		}
		if strings.Join(got, ",") != strings.Join(st.types, ",") {
			t.Fatalf("step %d %s %s: events %v, want %v", i, st.c.method, st.c.path, got, st.types)
		}
		if st.check != nil {
			t.Run(fmt.Sprintf("step %d %s", i, strings.Join(st.types, "+")), func(t *testing.T) { st.check(t, slices, r) })
		}
	}
	// The whole log: every event once, the egress ones included, no code in clear, chain verified.
	all := doAt(t, hs.URL, call{method: "GET", path: "/v1/audit/events?limit=1000", key: auditorKey}, checkBoth)
	list := decodeInto[api.AuditEventList](t, all)
	want := len(egress)
	for _, st := range steps {
		want += len(st.types)
	}
	if len(list.Events) != want {
		t.Fatalf("%d events in the log, want %d", len(list.Events), want)
	}
	seen := map[string]bool{}
	for _, e := range list.Events {
		if seen[e.ID] {
			t.Fatalf("event %s twice", e.ID)
		}
		seen[e.ID] = true
	}
	if strings.Contains(string(all.body), okCode) || strings.Contains(string(all.body), "a,b") {
		t.Fatal("the log holds code or file content in clear")
	}
	v := decodeInto[api.AuditVerification](t, doAt(t, hs.URL, call{method: "GET", path: "/v1/audit/verify", key: opsKey}, checkBoth))
	if !v.OK || v.Events != int64(want) {
		t.Fatalf("verification %+v", v)
	}
	rep := decodeInto[api.AuditReport](t, doAt(t, hs.URL, call{method: "GET", path: "/v1/audit/reports/daily", key: auditorKey}, checkBoth))
	if rep.Events != int64(want) || rep.AuthFailures != 4 || len(rep.TopBlocked) != 1 || rep.TopBlocked[0].Key != "exfil.example" {
		t.Fatalf("report %+v", rep)
	}
}

func TestAuditEndpoints(t *testing.T) {
	hs, l := auditServer(t)
	for i := range 5 {
		l.Record(context.Background(), audit.Event{Type: audit.TypeEgressRequest, Verdict: audit.VerdictBlock, Details: map[string]any{"host": fmt.Sprintf("h%d.example", i)}})
	}
	cases := []struct {
		name   string
		path   string
		key    string
		status int
		ctype  string
		body   string
	}{
		{"search with filters", "/v1/audit/events?type=egress&verdict=block&q=h3.example&since=1h", auditorKey, 200, "application/json", "h3.example"},
		{"page with cursor", "/v1/audit/events?limit=2", opsKey, 200, "application/json", "next_cursor"},
		{"bad filter", "/v1/audit/events?verdict=maybe", auditorKey, 400, "application/json", "verdict"},
		{"unknown parameter", "/v1/audit/events?host=x", auditorKey, 400, "application/json", "unknown search parameter"},
		{"report json", "/v1/audit/reports/weekly", auditorKey, 200, "application/json", "blocked_per_hour"},
		{"report markdown", "/v1/audit/reports/daily?format=md", auditorKey, 200, "text/markdown", "# agentbox audit report"},
		{"report html", "/v1/audit/reports/daily?format=html&date=" + time.Now().UTC().Format(time.DateOnly), auditorKey, 200, "text/html", "<svg"},
		{"bad period", "/v1/audit/reports/monthly", auditorKey, 400, "application/json", "daily or weekly"},
		{"bad date", "/v1/audit/reports/daily?date=yesterday", auditorKey, 400, "application/json", "YYYY-MM-DD"},
		{"bad format", "/v1/audit/reports/daily?format=pdf", auditorKey, 400, "application/json", "json, md or html"},
		{"verify", "/v1/audit/verify", auditorKey, 200, "application/json", `"ok":true`},
		{"no audit scope", "/v1/audit/verify", testKey, 403, "application/json", "no audit scope"},
		{"verify of another host on a single host", "/v1/audit/verify?host=h1", auditorKey, 404, "application/json", "single host"},
		{"audit-only key may not list sessions", "/v1/sessions", auditorKey, 403, "application/json", "read-only audit"},
		{"audit key may also list sessions", "/v1/sessions", opsKey, 200, "application/json", "sessions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mode := checkBoth
			if c.status == 400 {
				mode = checkResponse
			}
			r := doAt(t, hs.URL, call{method: "GET", path: c.path, key: c.key}, mode)
			if r.status != c.status || !strings.HasPrefix(r.header.Get("Content-Type"), c.ctype) || !strings.Contains(string(r.body), c.body) {
				t.Fatalf("%d %s: %.300s", r.status, r.header.Get("Content-Type"), r.body)
			}
		})
	}
}

func TestAuditOffAnswers404(t *testing.T) {
	r := do(t, call{method: "GET", path: "/v1/audit/events"}, checkResponse)
	// The shared server has no audit log; its key has no audit scope either, which is checked first.
	if r.status != http.StatusForbidden {
		t.Fatalf("%d %s", r.status, r.body)
	}
	srv, err := New(sb, Config{Keys: []APIKey{{Key: opsKey, Audit: true}}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	wantError(t, doAt(t, hs.URL, call{method: "GET", path: "/v1/audit/events", key: opsKey}, checkBoth), 404, "not_found", "--audit-db")
}

// TestMCPRunsAreAudited: run_python over /mcp is recorded like POST /v1/run, for the key that
// opened the MCP connection, and a named session's start as session.create.
func TestMCPRunsAreAudited(t *testing.T) {
	l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := dispatch.New(eng, dispatch.Config{})
	t.Cleanup(d.Close)
	srv, err := New(d, Config{APIKeys: []string{testKey}, MCP: mcpserver.HTTPHandler(AuditMCP(d, l, nil), "test"), Audit: l})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	ctx := context.Background()
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	conn, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: hs.URL + "/mcp", HTTPClient: &http.Client{Transport: bearer(testKey)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, args := range []map[string]any{{"code": "print(6*7)"}, {"code": "x = 1", "session": "main"}} {
		if res, err := conn.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: args}); err != nil || res.IsError {
			t.Fatalf("%v %+v", err, res)
		}
	}
	runs, _ := l.Search(ctx, audit.Query{Type: audit.TypeRun})
	if len(runs.Events) != 1 || runs.Events[0].Actor != TenantID(testKey) || runs.Events[0].Details["source"] != "mcp" ||
		runs.Events[0].Details["code_sha256"] != sha("print(6*7)") {
		t.Fatalf("runs %+v", runs.Events)
	}
	created, _ := l.Search(ctx, audit.Query{Type: audit.TypeSessionCreate})
	if len(created.Events) != 1 || created.Events[0].Actor != TenantID(testKey) || created.Events[0].Session == "" {
		t.Fatalf("sessions %+v", created.Events)
	}
}
