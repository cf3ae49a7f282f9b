package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/netpolicy/netpolicytest"
)

func serveNetwork(t *testing.T) *audit.Log {
	t.Helper()
	c, err := netpolicy.ParseCeiling("policy.toml", []byte("dlp_min = \"log\"\nallow = [\"pypi.org\", \"files.pythonhosted.org\", \"example.com\"]"))
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(netpolicytest.Engine{Engine: eng, BytesOut: 120, BytesIn: 4096}, dispatch.Config{Ceiling: c})
	t.Cleanup(d.Close)
	l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	serveWith(t, d, Config{APIKeys: []string{testKey, keyB}, Audit: l})
	return l
}

func TestRunNetworkOverHTTP(t *testing.T) {
	serveNetwork(t)
	cases := []struct {
		name    string
		body    string
		status  int
		verdict string // of the probe's event, "" for none
		rule    string
		message string // of an error
	}{
		{"offline by default", `{"code": "print(1)"}`, 200, "", "", ""},
		{"allowed host", `{"code": "print(1)", "network": {"allow": ["pypi.org", {"host": "example.com", "methods": ["GET"], "paths": ["/docs/"]}], "dlp": "redact"}}`, 200, "allowed", "allow:pypi.org", ""},
		{"other host only", `{"code": "print(1)", "network": {"allow": ["example.com"]}}`, 200, "denied", "default:deny", ""},
		{"deny over allow", `{"code": "print(1)", "network": {"allow": ["pypi.org"], "deny": ["pypi.org"]}}`, 200, "denied", "deny:pypi.org", ""},
		{"grant from intent", `{"code": "print(1)", "intent": {"packages": ["requests"]}}`, 200, "allowed", "grant:intent.packages:pypi.org/simple", ""},
		{"grant from the task text", `{"code": "print(1)", "task": "read https://pypi.org/simple/ please"}`, 200, "allowed", "grant:task:url:pypi.org/simple", ""},
		{"outside the ceiling is 403 naming the rule", `{"code": "print(1)", "network": {"allow": ["evil.com"]}}`, 403, "", "", `ceiling:allow: network.allow[0] "evil.com"`},
		{"bad dlp", `{"code": "print(1)", "network": {"allow": ["pypi.org"], "dlp": "loud"}}`, 400, "", "", "network.dlp"},
		{"unknown key in a rule", `{"code": "print(1)", "network": {"allow": [{"host": "pypi.org", "no_inspec": true}]}}`, 400, "", "", "no_inspec"},
		{"a rule that is neither", `{"code": "print(1)", "network": {"allow": [7]}}`, 400, "", "", "host name or an object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mode := checkBoth
			if tc.status == 400 {
				mode = checkResponse
			}
			r := do(t, call{method: "POST", path: "/v1/run", body: []byte(tc.body)}, mode)
			if tc.status != 200 {
				wantError(t, r, tc.status, map[int]string{400: "invalid_argument", 403: "forbidden"}[tc.status], tc.message)
				return
			}
			res := decodeInto[api.RunResponse](t, r)
			if r.status != 200 || res.Stdout != "1\n" {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if tc.verdict == "" {
				if len(res.NetworkEvents) != 0 || strings.Contains(string(r.body), "network_events") {
					t.Fatalf("an offline run has network events: %s", r.body)
				}
				return
			}
			if len(res.NetworkEvents) != 1 {
				t.Fatalf("events %+v", res.NetworkEvents)
			}
			e := res.NetworkEvents[0]
			if e.Verdict != tc.verdict || e.Rule != tc.rule || e.Host != "pypi.org" || e.BytesIn != 4096 || e.Time == "" {
				t.Fatalf("event %+v, want verdict %s rule %s", e, tc.verdict, tc.rule)
			}
		})
	}
}

func TestRunNetworkWithoutCeiling(t *testing.T) {
	r := do(t, call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "network": {"allow": ["pypi.org"]}}`)}, checkBoth)
	wantError(t, r, 403, "forbidden", "no network ceiling")
	r = do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{"intent": {"packages": ["rich"]}}`)}, checkBoth)
	wantError(t, r, 403, "forbidden", "no network ceiling")
}

func TestPatchSessionNetwork(t *testing.T) {
	alog := serveNetwork(t)
	r := do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{"network": {"allow": ["pypi.org"]}}`)}, checkBoth)
	s := decodeInto[api.Session](t, r)
	base := "/v1/sessions/" + s.ID
	cell := func(name, wantVerdict, wantRule string) {
		t.Helper()
		r := do(t, call{method: "POST", path: base + "/run", body: []byte(`{"code": "print(2)"}`)}, checkBoth)
		res := decodeInto[api.Result](t, r)
		if r.status != 200 || len(res.NetworkEvents) != 1 || res.NetworkEvents[0].Verdict != wantVerdict || res.NetworkEvents[0].Rule != wantRule {
			t.Fatalf("%s: %d %s", name, r.status, r.body)
		}
	}
	cell("open", "allowed", "allow:pypi.org")
	cases := []struct {
		name, body string
		status     int
		code, msg  string
	}{
		{"outside the ceiling", `{"allow": ["evil.com"]}`, 403, "forbidden", "ceiling:allow"},
		{"unknown field", `{"allow": ["pypi.org"], "allow_all": true}`, 400, "invalid_argument", "allow_all"},
		{"not JSON", `allow=pypi.org`, 400, "invalid_argument", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, call{method: "PATCH", path: base + "/network", body: []byte(tc.body)}, checkResponse)
			wantError(t, r, tc.status, tc.code, tc.msg)
		})
	}
	cell("a refused change changes nothing", "allowed", "allow:pypi.org")
	r = do(t, call{method: "PATCH", path: base + "/network", body: []byte(`{"allow": ["example.com"]}`)}, checkBoth)
	if r.status != 204 {
		t.Fatalf("PATCH: %d %s", r.status, r.body)
	}
	cell("locked down", "denied", "default:deny")
	r = do(t, call{method: "PATCH", path: "/v1/sessions/ses_nope/network", body: []byte(`{}`)}, checkBoth)
	wantError(t, r, 404, "not_found", "ses_nope")
	// Both the change and the refused one are on the record, with the hosts and never a secret.
	got, err := alog.Search(context.Background(), audit.Query{Type: audit.TypePolicyChange, Session: s.ID})
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]int{}
	for _, e := range got.Events {
		verdicts[e.Verdict]++
	}
	if verdicts[audit.VerdictOK] != 1 || verdicts[audit.VerdictDeny] != 1 || len(got.Events) != 2 {
		t.Fatalf("policy.change events %+v", got.Events)
	}
}
