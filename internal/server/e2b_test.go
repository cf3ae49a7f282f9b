package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	fspb "github.com/entersandbox/agentbox/internal/e2b/envd/filesystem"
	"github.com/entersandbox/agentbox/internal/e2b/envd/filesystem/filesystemconnect"
)

// headerTransport adds headers to every request, as the E2B SDKs' connect transport does.
type headerTransport map[string]string

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h {
		r.Header.Set(k, v)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// The E2B surface is mounted under /e2b with the server's keys: X-API-KEY (what the SDKs send) or
// bearer, errors in E2B's {code, message} shape, and sandbox requests authorised by the sandbox's
// access token without an API key.
func TestE2BIsMountedWithTheServersKeys(t *testing.T) {
	const outside = checkNone // the E2B surface is E2B's contract, not openapi.yaml's
	t.Run("no key is E2B's 401", func(t *testing.T) {
		r := do(t, call{method: "GET", path: "/e2b/api/v2/sandboxes", key: "-"}, outside)
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(r.body, &e); err != nil || r.status != 401 || e.Code != 401 || e.Message == "" {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	var sb struct {
		SandboxID       string `json:"sandboxID"`
		EnvdAccessToken string `json:"envdAccessToken"`
	}
	t.Run("X-API-KEY creates a sandbox", func(t *testing.T) {
		r := do(t, call{method: "POST", path: "/e2b/api/v2/sandboxes", key: "-", header: map[string]string{"X-API-KEY": testKey},
			body: mustJSON(map[string]any{"templateID": "code-interpreter-v1"})}, outside)
		if r.status != http.StatusCreated {
			t.Fatalf("%d %s", r.status, r.body)
		}
		sb = decodeInto[struct {
			SandboxID       string `json:"sandboxID"`
			EnvdAccessToken string `json:"envdAccessToken"`
		}](t, r)
	})
	t.Run("the sandbox is a session of the key's tenant", func(t *testing.T) {
		if r := do(t, call{method: "GET", path: "/v1/sessions/" + sb.SandboxID}, checkBoth); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("X-API-KEY works on agentbox's own API too", func(t *testing.T) {
		if r := do(t, call{method: "GET", path: "/v1/sessions", key: "-", header: map[string]string{"X-API-KEY": testKey}}, checkBoth); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("a sandbox request needs only the access token", func(t *testing.T) {
		r := do(t, call{method: "POST", path: "/e2b/sandbox/execute", key: "-", body: mustJSON(map[string]any{"code": "6*7"}),
			header: map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": "49999", "X-Access-Token": sb.EnvdAccessToken}}, outside)
		if r.status != 200 || !strings.Contains(string(r.body), `"text":"42"`) {
			t.Fatalf("no result 42 in %s", r.body)
		}
	})
	t.Run("connect-rpc streams pass the server's middleware", func(t *testing.T) {
		// A server stream needs an http.Flusher; an unsupported one must answer its own error, not
		// an internal one about the writer.
		hc := &http.Client{Transport: headerTransport{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": "49983", "X-Access-Token": sb.EnvdAccessToken}}
		fs := filesystemconnect.NewFilesystemClient(hc, ts.URL+"/e2b/sandbox", connect.WithProtoJSON())
		stream, err := fs.WatchDir(context.Background(), connect.NewRequest(&fspb.WatchDirRequest{Path: "/home/user"}))
		if err == nil {
			for stream.Receive() {
			}
			err = stream.Err()
		}
		if connect.CodeOf(err) != connect.CodeUnimplemented {
			t.Fatalf("WatchDir: %v, want Unimplemented", err)
		}
	})
	t.Run("kill", func(t *testing.T) {
		if r := do(t, call{method: "DELETE", path: "/e2b/api/sandboxes/" + sb.SandboxID, key: "-", header: map[string]string{"X-API-KEY": testKey}}, outside); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if r := do(t, call{method: "GET", path: "/v1/sessions/" + sb.SandboxID}, checkResponse); r.status != 404 {
			t.Fatalf("the session outlived the sandbox: %d", r.status)
		}
	})
}

// What the E2B surface does is in the audit log like the HTTP API's own requests, for the key that
// created the sandbox, also on requests authorised by the sandbox's token alone.
func TestE2BIsAudited(t *testing.T) {
	hs, l := auditServer(t)
	ctx := context.Background()
	key := map[string]string{"X-API-KEY": testKey}
	r := doAt(t, hs.URL, call{method: "POST", path: "/e2b/api/v2/sandboxes", key: "-", header: key, body: mustJSON(map[string]any{"templateID": "code-interpreter-v1"})}, checkNone)
	var sb struct {
		SandboxID       string `json:"sandboxID"`
		EnvdAccessToken string `json:"envdAccessToken"`
	}
	if err := json.Unmarshal(r.body, &sb); err != nil || r.status != 201 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	envd := map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": "49983", "X-Access-Token": sb.EnvdAccessToken}
	jupyter := map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": "49999", "X-Access-Token": sb.EnvdAccessToken}
	doAt(t, hs.URL, call{method: "POST", path: "/e2b/sandbox/execute", key: "-", header: jupyter, body: mustJSON(map[string]any{"code": "6*7"})}, checkNone)
	doAt(t, hs.URL, call{method: "POST", path: "/e2b/sandbox/files?path=/home/user/a.txt", key: "-", header: envd, body: []byte("hi"), contentType: "application/octet-stream"}, checkNone)
	doAt(t, hs.URL, call{method: "GET", path: "/e2b/sandbox/files?path=/home/user/a.txt", key: "-", header: envd}, checkNone)
	doAt(t, hs.URL, call{method: "DELETE", path: "/e2b/api/sandboxes/" + sb.SandboxID, key: "-", header: key}, checkNone)
	for _, tc := range []struct {
		typ   string
		check func(e api.AuditEvent) bool
	}{
		{audit.TypeSessionCreate, func(e api.AuditEvent) bool { return e.Tier == "nano" }},
		{audit.TypeRun, func(e api.AuditEvent) bool { return e.Details["code_sha256"] == sha("6*7") }},
		{audit.TypeFileUpload, func(e api.AuditEvent) bool {
			return e.Details["path"] == "/home/user/a.txt" && e.Details["sha256"] == sha("hi")
		}},
		{audit.TypeFileDownload, func(e api.AuditEvent) bool { return e.Details["path"] == "/home/user/a.txt" }},
		{audit.TypeSessionClose, func(e api.AuditEvent) bool { return true }},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			page, err := l.Search(ctx, audit.Query{Type: tc.typ, Session: sb.SandboxID})
			if err != nil || len(page.Events) != 1 {
				t.Fatalf("%v: %+v", err, page)
			}
			e := page.Events[0]
			if e.Actor != TenantID(testKey) || e.Details["source"] != "e2b" || !tc.check(e) {
				t.Fatalf("%+v", e)
			}
		})
	}
}
