package server

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

// The web console (internal/console) is mounted at /ui/ and is a client of this API: these tests run
// it against the real server and nano tier. /ui/ is outside the OpenAPI contract (HTML, not JSON).

func TestConsolePagesNeedNoKeyButItsFragmentsDo(t *testing.T) {
	for _, tc := range []struct {
		path, key string
		want      int
	}{
		{"/ui/", "-", 200},
		{"/ui/static/app.js", "-", 200},
		{"/ui/f/sessions", "-", 401},
		{"/ui/f/sessions", "wrong-key-0123456789abc", 401},
		{"/ui/f/sessions", "", 200},
	} {
		t.Run(tc.path+"/"+tc.key, func(t *testing.T) {
			r := do(t, call{method: "GET", path: tc.path, key: tc.key}, checkNone)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.body)
			}
		})
	}
	if r := do(t, call{method: "GET", path: "/ui", key: "-"}, checkNone); r.status != 200 {
		t.Errorf("/ui: status %d (want a redirect to /ui/, followed)", r.status)
	}
}

func TestConsoleRunsACellThroughTheAPIWithTheCallersKey(t *testing.T) {
	r := do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{"tier":"nano"}`)}, checkBoth)
	var s api.Session
	json.Unmarshal(r.body, &s)
	defer do(t, call{method: "DELETE", path: "/v1/sessions/" + s.ID}, checkBoth)

	list := do(t, call{method: "GET", path: "/ui/f/sessions"}, checkNone)
	if !bytes.Contains(list.body, []byte(`href="/ui/s/`+s.ID+`"`)) {
		t.Errorf("the session list lacks %s:\n%s", s.ID, list.body)
	}
	form := url.Values{"code": {"x = 6 * 7\nprint('<hello>', x)"}}.Encode()
	run := do(t, call{method: "POST", path: "/ui/f/sessions/" + s.ID + "/run", body: []byte(form), contentType: "application/x-www-form-urlencoded",
		accept: "text/event-stream", header: map[string]string{"X-Agentbox-Console": "1"}}, checkNone)
	if run.status != 200 || !strings.Contains(string(run.body), "event: stdout") || !strings.Contains(string(run.body), "event: result") {
		t.Fatalf("run: status %d:\n%s", run.status, run.body)
	}
	_, data, _ := strings.Cut(string(run.body), "event: result\ndata: ")
	var result struct{ HTML string }
	if err := json.Unmarshal([]byte(strings.TrimSpace(data)), &result); err != nil || !strings.Contains(result.HTML, `<pre class="stdout">&lt;hello&gt; 42`) {
		t.Errorf("the rendered result lacks the escaped stdout (%v):\n%s", err, run.body)
	}
	info := do(t, call{method: "GET", path: "/v1/sessions/" + s.ID}, checkBoth)
	var after api.Session
	json.Unmarshal(info.body, &after)
	if after.Cells != 1 {
		t.Errorf("%d cells after the console's run, want 1", after.Cells)
	}
	files := do(t, call{method: "GET", path: "/ui/f/sessions/" + s.ID + "/files?dir=/"}, checkNone)
	if files.status != 200 {
		t.Errorf("files: %d %s", files.status, files.body)
	}
}

func TestConsoleRefusesCrossSiteWrites(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string]string
	}{
		{"a form of another site (no console header)", map[string]string{"Origin": "http://evil.example"}},
		{"a script of another site", map[string]string{"Origin": "http://evil.example", "X-Agentbox-Console": "1", "Sec-Fetch-Site": "cross-site"}},
		{"no console header", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, call{method: "POST", path: "/ui/f/sessions", body: []byte("tier=nano"), contentType: "application/x-www-form-urlencoded", header: tc.header}, checkNone)
			if r.status != 403 {
				t.Fatalf("status %d, want 403: %s", r.status, r.body)
			}
		})
	}
}

func TestKeylessConsoleRefusesRebindingHosts(t *testing.T) {
	base := keyless(t, sb, nil)
	for _, tc := range []struct {
		host string
		want int
	}{
		{"localhost", 200},
		{"127.0.0.1", 200},
		{"rebind.evil.example", 403},
	} {
		t.Run(tc.host, func(t *testing.T) {
			r := doAt(t, base, call{method: "GET", path: "/ui/f/sessions", key: "-", host: tc.host}, checkNone)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.body)
			}
		})
	}
}

func TestConsoleAppliesTheKeysScopes(t *testing.T) {
	hs, _ := auditServer(t)
	for _, tc := range []struct {
		name, key, path string
		want            int
	}{
		{"an audit-only key reads the audit page", auditorKey, "/ui/f/audit", 200},
		{"an audit-only key has no sessions", auditorKey, "/ui/f/sessions", 403},
		{"a key without the audit scope gets no audit log", testKey, "/ui/f/audit/report?period=daily", 403},
		{"a key with the audit scope gets the report", opsKey, "/ui/f/audit/report?period=daily", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := doAt(t, hs.URL, call{method: "GET", path: tc.path, key: tc.key}, checkNone)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.body)
			}
		})
	}
}
