package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/cluster"
	"github.com/entersandbox/agentbox/internal/dispatch"
)

// runOn runs code on the host labelled name=id, entering at h; the run is audited there.
func runOn(t *testing.T, h *host, id, code string) {
	t.Helper()
	if a := call(t, h, "POST", "/v1/run", userKey, api.RunRequest{Code: code}, cluster.HeaderLabels, "name="+id); a.status != 200 || a.host != id {
		t.Fatalf("run on %s: %d from %s %s", id, a.status, a.host, a.body)
	}
}

func TestFleetAuditSearchAndReports(t *testing.T) {
	f := newFleet(t, 3, hostOpts{audit: true})
	runOn(t, f.hosts[0], "h1", "print('on h1')")
	runOn(t, f.hosts[0], "h2", "print('on h2')")
	runOn(t, f.hosts[1], "h2", "print('on h2 again')")

	t.Run("events made on h1 and h2 are found from h0", func(t *testing.T) {
		a := call(t, f.hosts[0], "GET", "/v1/audit/events?type=run", auditKey, nil)
		if a.status != 200 || a.header.Get(cluster.HeaderHostsMissing) != "" {
			t.Fatalf("search: %d missing=%q %s", a.status, a.header.Get(cluster.HeaderHostsMissing), a.body)
		}
		list := decode[api.AuditEventList](t, a)
		by := map[string]int{}
		for i, ev := range list.Events {
			by[ev.LogHost]++
			if i > 0 {
				prev, _ := time.Parse(time.RFC3339Nano, list.Events[i-1].Time)
				if at, _ := time.Parse(time.RFC3339Nano, ev.Time); at.After(prev) {
					t.Errorf("events not newest first: %s before %s", list.Events[i-1].Time, ev.Time)
				}
			}
		}
		if by["h1"] != 1 || by["h2"] != 2 || by["h0"] != 0 || list.NextCursor != "" {
			t.Fatalf("runs by host %v (next %q), want h1:1 h2:2", by, list.NextCursor)
		}
	})

	t.Run("pages go on across hosts without repeats or gaps", func(t *testing.T) {
		seen := map[string]bool{}
		cursor := ""
		for page := 0; ; page++ {
			if page > 5 {
				t.Fatal("more than 5 pages of one event for 3 runs")
			}
			q := url.Values{"type": {"run"}, "limit": {"1"}}
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			list := decode[api.AuditEventList](t, call(t, f.hosts[2], "GET", "/v1/audit/events?"+q.Encode(), auditKey, nil))
			for _, ev := range list.Events {
				k := ev.LogHost + "/" + ev.ID
				if seen[k] {
					t.Fatalf("event %s shown twice", k)
				}
				seen[k] = true
			}
			if cursor = list.NextCursor; cursor == "" {
				break
			}
		}
		if len(seen) != 3 {
			t.Fatalf("paged through %d runs, want 3: %v", len(seen), seen)
		}
	})

	t.Run("a cursor the fleet did not give is refused", func(t *testing.T) {
		if a := call(t, f.hosts[0], "GET", "/v1/audit/events?cursor=djE6NQ", auditKey, nil); a.status != 400 || !strings.Contains(string(a.body), "not one this fleet gave") {
			t.Fatalf("a host's own cursor: %d %s", a.status, a.body)
		}
	})

	t.Run("a key without the audit scope is refused", func(t *testing.T) {
		if a := call(t, f.hosts[0], "GET", "/v1/audit/events", userKey, nil); a.status != 403 {
			t.Fatalf("user key: %d %s", a.status, a.body)
		}
	})

	t.Run("a report from h0 counts every host and verifies each chain", func(t *testing.T) {
		a := call(t, f.hosts[0], "GET", "/v1/audit/reports/daily", auditKey, nil)
		if a.status != 200 {
			t.Fatalf("report: %d %s", a.status, a.body)
		}
		rep := decode[api.AuditReport](t, a)
		runs := int64(0)
		for _, c := range rep.ByType {
			if c.Key == "run" {
				runs = c.Count
			}
		}
		if runs != 3 || len(rep.Hosts) != 3 || !rep.Verification.OK || len(rep.HostsMissing) != 0 {
			t.Fatalf("report: %d runs, hosts %+v, verification %+v, missing %v", runs, rep.Hosts, rep.Verification, rep.HostsMissing)
		}
		var sum int64
		for _, h := range rep.Hosts {
			if !h.Verification.OK || h.Verification.Events == 0 {
				t.Errorf("host %s's chain: %+v", h.Host, h.Verification)
			}
			sum += h.Events
		}
		if sum != rep.Events {
			t.Fatalf("hosts' events sum to %d, the report says %d", sum, rep.Events)
		}
		md := call(t, f.hosts[0], "GET", "/v1/audit/reports/daily?format=md", auditKey, nil)
		for _, h := range []string{"h0", "h1", "h2"} {
			if !regexp.MustCompile(`- \*\*` + h + `\*\*: \d+ events, chain verified`).Match(md.body) {
				t.Fatalf("markdown report does not give %s's chain:\n%s", h, md.body)
			}
		}
	})

	t.Run("verify names the host whose chain it checked", func(t *testing.T) {
		for _, c := range []struct{ query, host string }{{"", "h0"}, {"?host=h2", "h2"}, {"?host=h0", "h0"}} {
			a := call(t, f.hosts[0], "GET", "/v1/audit/verify"+c.query, auditKey, nil)
			if a.status != 200 || a.header.Get(cluster.HeaderHost) != c.host || !decode[api.AuditVerification](t, a).OK {
				t.Fatalf("verify%s: %d host %q %s", c.query, a.status, a.header.Get(cluster.HeaderHost), a.body)
			}
		}
		if a := call(t, f.hosts[0], "GET", "/v1/audit/verify?host=h7", auditKey, nil); a.status != 404 {
			t.Fatalf("verify of an unknown host: %d %s", a.status, a.body)
		}
	})

	t.Run("the Go SDK pages the fleet's events and verifies one host's chain", func(t *testing.T) {
		c, err := agentbox.New(f.hosts[1].ts.URL, agentbox.WithAPIKey(auditKey))
		if err != nil {
			t.Fatal(err)
		}
		hosts := map[string]int{}
		if err := c.AllAuditEvents(context.Background(), agentbox.AuditQuery{Type: "run", Limit: 1}, func(ev agentbox.AuditEvent) bool {
			hosts[ev.LogHost]++
			return true
		}); err != nil || hosts["h1"] != 1 || hosts["h2"] != 2 {
			t.Fatalf("AllAuditEvents: %v %v", hosts, err)
		}
		if v, err := c.AuditVerifyHost(context.Background(), "h2"); err != nil || !v.OK {
			t.Fatalf("AuditVerifyHost(h2): %+v %v", v, err)
		}
		if _, err := c.AuditVerifyHost(context.Background(), "h7"); !errors.Is(err, agentbox.ErrNotFound) {
			t.Fatalf("AuditVerifyHost(h7): %v", err)
		}
	})

	t.Run("a dead host is reported as missing", func(t *testing.T) {
		f.hosts[2].kill()
		check := func(when string) {
			a := call(t, f.hosts[0], "GET", "/v1/audit/events?type=run", auditKey, nil)
			list := decode[api.AuditEventList](t, a)
			if a.status != 200 || a.header.Get(cluster.HeaderHostsMissing) != "h2" || strings.Join(list.HostsMissing, ",") != "h2" || len(list.Events) != 1 {
				t.Fatalf("search %s: %d missing %q/%v, %d events", when, a.status, a.header.Get(cluster.HeaderHostsMissing), list.HostsMissing, len(list.Events))
			}
			r := call(t, f.hosts[0], "GET", "/v1/audit/reports/daily", auditKey, nil)
			rep := decode[api.AuditReport](t, r)
			if r.header.Get(cluster.HeaderHostsMissing) != "h2" || strings.Join(rep.HostsMissing, ",") != "h2" || rep.Verification.OK || !strings.Contains(rep.Verification.Problem, "h2 did not answer") {
				t.Fatalf("report %s: missing %v, verification %+v", when, rep.HostsMissing, rep.Verification)
			}
		}
		check("right after the kill")
		waitFor(t, 10*time.Second, "h0 to see h2 gone", func() bool { return len(f.hosts[0].node.Hosts(context.Background()).Hosts) == 2 })
		check("once its record expired")
	})
}

func TestFleetSessionRecords(t *testing.T) {
	f := newFleet(t, 2, hostOpts{ttl: time.Second})
	nc, err := nats.Connect(f.urls[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.SessionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	has := func(id string) bool {
		_, err := kv.Get(ctx, id)
		return err == nil
	}

	t.Run("a session that idles past its TTL loses its record", func(t *testing.T) {
		a := call(t, f.hosts[0], "POST", "/v1/sessions", userKey, api.SessionRequest{}, cluster.HeaderLabels, "name=h1")
		id := decode[api.Session](t, a).ID
		if !has(id) {
			t.Fatalf("session %s has no record", id)
		}
		waitFor(t, 10*time.Second, "the expired session's record to go", func() bool { return !has(id) })
		if g := call(t, f.hosts[0], "GET", "/v1/sessions/"+id, userKey, nil); g.status != 404 {
			t.Fatalf("the expired session: %d %s", g.status, g.body)
		}
	})

	t.Run("a session whose sandbox died loses its record", func(t *testing.T) {
		a := call(t, f.hosts[1], "POST", "/v1/sessions", userKey, api.SessionRequest{TTLSeconds: 600, Limits: api.Limits{TimeoutMS: 300}}, cluster.HeaderLabels, "name=h0")
		id := decode[api.Session](t, a).ID
		// A run past the session's time limit kills its interpreter: the session ends with it.
		call(t, f.hosts[1], "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: "while True: pass"})
		waitFor(t, 10*time.Second, "the dead session's record to go", func() bool { return !has(id) })
	})

	t.Run("a start-up sweep removes this host's stale records only", func(t *testing.T) {
		put := func(id, host string) {
			b, _ := json.Marshal(map[string]string{"host": host, "created_at": time.Now().UTC().Format(time.RFC3339Nano)})
			if _, err := kv.Put(ctx, id, b); err != nil {
				t.Fatal(err)
			}
		}
		put("ses_stale1", "h9")
		put("ses_stale2", "h9")
		put("ses_kept", "h9")
		put("ses_other", "h0")
		d := dispatch.New(eng, dispatch.Config{})
		defer d.Close()
		node, err := cluster.Start(ctx, cluster.Config{NATS: f.urls[1:2], HostID: "h9", URL: "http://127.0.0.1:1", Replicas: 3, Stats: d.Stats,
			Heartbeat: 200 * time.Millisecond, HostTTL: 2 * time.Second, Logger: testLogger})
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close(context.Background())
		if n, err := node.SweepSessionRecords(ctx, func(id string) bool { return id == "ses_kept" }); err != nil || n != 2 {
			t.Fatalf("the sweep removed %d records: %v", n, err)
		}
		// A KV get may be answered by a replica a moment behind: the deletions are waited for.
		for _, id := range []string{"ses_stale1", "ses_stale2"} {
			waitFor(t, 2*time.Second, "the sweep to remove "+id, func() bool { return !has(id) })
		}
		for _, id := range []string{"ses_kept", "ses_other"} {
			if !has(id) {
				t.Errorf("the sweep removed %s", id)
			}
		}
	})
}

// steer sends each request to the host target names (as a load balancer would), with the key and
// labels, and keeps the host that served each answer.
type steer struct {
	mu     sync.Mutex
	target *host    // guarded by mu
	served []string // X-Agentbox-Host of each answer, or the target's id; guarded by mu
	labels string
}

func (s *steer) to(h *host) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.target = h
}

func (s *steer) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	h := s.target
	s.mu.Unlock()
	u, _ := url.Parse(h.ts.URL)
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = u.Scheme, u.Host, u.Host
	r.Header.Set("Authorization", "Bearer "+userKey)
	r.Header.Set(cluster.HeaderLabels, s.labels)
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		served := resp.Header.Get(cluster.HeaderHost)
		if served == "" {
			served = h.id
		}
		s.mu.Lock()
		s.served = append(s.served, served)
		s.mu.Unlock()
	}
	return resp, err
}

func (s *steer) lastServed() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served[len(s.served)-1]
}

func mcpText(res *mcp.CallToolResult) string {
	var parts []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

func TestFleetMCPAnswersFromAnyHost(t *testing.T) {
	f := newFleet(t, 3, hostOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lb := &steer{target: f.hosts[0], labels: "name=h1"}
	client := mcp.NewClient(&mcp.Implementation{Name: "fleet-test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: f.hosts[0].ts.URL + "/mcp", HTTPClient: &http.Client{Transport: lb}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	run := func(code string) string {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"session": "s", "code": code}})
		if err != nil {
			t.Fatalf("run_python %q: %v", code, err)
		}
		return mcpText(res)
	}

	t.Run("a session made via MCP on h0 is placed on h1", func(t *testing.T) {
		run("x = 41")
		if got := lb.lastServed(); got != "h1" {
			t.Fatalf("the cell entering at h0 was served by %s", got)
		}
		if n := len(f.hosts[1].d.Sessions(dispatch.WithTenant(ctx, dispatch.Tenant{Admin: true}))); n != 1 {
			t.Fatalf("h1 has %d sessions", n)
		}
	})

	t.Run("its next cell via MCP on h2 runs in it", func(t *testing.T) {
		lb.to(f.hosts[2])
		if out := run("print(x + 1)"); !strings.Contains(out, "42") || lb.lastServed() != "h1" {
			t.Fatalf("cell via h2: %q, served by %s", out, lb.lastServed())
		}
		if n := len(f.hosts[2].d.Sessions(dispatch.WithTenant(ctx, dispatch.Tenant{Admin: true}))); n != 0 {
			t.Fatalf("h2 started %d sessions of its own", n)
		}
	})

	t.Run("another key does not reach the MCP connection", func(t *testing.T) {
		// As on one host, the MCP connection is its key's: another key's request with its id is
		// refused (403 by the connection's host, or 404 where the fleet's record is not its own).
		req, _ := http.NewRequest("POST", f.hosts[2].ts.URL+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":9,"method":"tools/list"}`))
		req.Header.Set("Authorization", "Bearer "+auditKey)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Mcp-Session-Id", cs.ID())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 && resp.StatusCode != 404 {
			t.Fatalf("another key's request on the connection: %d via %q", resp.StatusCode, resp.Header.Get(cluster.HeaderHost))
		}
	})

	t.Run("the connection's host killed answers 404 with the reason", func(t *testing.T) {
		f.hosts[1].kill()
		waitFor(t, 10*time.Second, "h2 to see h1 gone", func() bool { return len(f.hosts[2].node.Hosts(context.Background()).Hosts) == 2 })
		req, _ := http.NewRequest("POST", f.hosts[2].ts.URL+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":9,"method":"tools/list"}`))
		req.Header.Set("Authorization", "Bearer "+userKey)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Mcp-Session-Id", cs.ID())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 404 || !strings.Contains(string(b), "its host h1 left the fleet") {
			t.Fatalf("a request of the dead host's MCP connection: %d %s", resp.StatusCode, b)
		}
	})
}

// BenchmarkAuditSearch is one page (100 events) of audit search from h0 of a fleet of 3 (every
// host asked, pages merged) against the same search answered by h0's own log alone (the forwarded
// form another host's fleet search sends).
func BenchmarkAuditSearch(b *testing.B) {
	f := newFleet(b, 3, hostOpts{audit: true})
	for i := range 150 {
		h := fmt.Sprintf("h%d", i%3)
		if a := call(b, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"}, cluster.HeaderLabels, "name="+h); a.status != 200 {
			b.Fatalf("run: %d %s", a.status, a.body)
		}
	}
	search := func(b *testing.B, hdr ...string) {
		for b.Loop() {
			req, _ := http.NewRequest("GET", f.hosts[0].ts.URL+"/v1/audit/events?type=run&limit=100", nil)
			req.Header.Set("Authorization", "Bearer "+auditKey)
			for i := 0; i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("search: %s", resp.Status)
			}
		}
	}
	b.Run("fleet of 3", func(b *testing.B) { search(b) })
	b.Run("one host's log", func(b *testing.B) { search(b, cluster.HeaderForwarded, "bench") })
}
