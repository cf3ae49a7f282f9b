package e2b

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	fspb "github.com/entersandbox/agentbox/internal/e2b/envd/filesystem"
	"github.com/entersandbox/agentbox/internal/e2b/envd/filesystem/filesystemconnect"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/nano"
)

var (
	eng      *nano.Engine
	sessions *dispatch.Dispatcher
)

func TestMain(m *testing.M) {
	ctx := context.Background()
	var err error
	eng, err = nano.New(ctx, nano.Config{MaxConcurrent: 2, MaxQueue: 64})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sessions = dispatch.New(eng, dispatch.Config{})
	code := m.Run()
	sessions.Close()
	eng.Close(ctx)
	os.Exit(code)
}

// Two tenants' keys, as the server's keyring would name them.
const (
	keyAlice = "alice-key"
	keyBob   = "bob-key"
)

func testAuth(r *http.Request) (dispatch.Tenant, error) {
	key := r.Header.Get("X-API-KEY")
	if k, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		key = k
	}
	switch key {
	case keyAlice:
		return dispatch.Tenant{ID: "alice"}, nil
	case keyBob:
		return dispatch.Tenant{ID: "bob"}, nil
	}
	return dispatch.Tenant{}, errdefs.With(errdefs.Unauthenticated, errors.New("missing or wrong API key"))
}

func newServer(t *testing.T, cfg Config) (*Handler, *httptest.Server) {
	t.Helper()
	if cfg.Authenticate == nil {
		cfg.Authenticate = testAuth
	}
	h := New(FromDispatch(sessions), cfg)
	ts := httptest.NewServer(h)
	t.Cleanup(func() { ts.Close(); h.Close() })
	return h, ts
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %q: %v", r.body, err)
	}
}

// e2bError checks an answer is E2B's {code, message} with the status.
func (r response) e2bError(t *testing.T, status int, contains string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	var e errorBody
	r.json(t, &e)
	if e.Code != status || !strings.Contains(e.Message, contains) {
		t.Fatalf("error %+v, want code %d and a message containing %q", e, status, contains)
	}
}

func do(t *testing.T, method, u string, header map[string]string, body any) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
		if header == nil {
			header = map[string]string{}
		}
		if _, ok := header["Content-Type"]; !ok {
			header["Content-Type"] = "application/json"
		}
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, data}
}

func apiKey(key string) map[string]string { return map[string]string{"X-API-KEY": key} }

// created is a sandbox made through the control plane.
type created struct {
	sandboxJSON
	ts *httptest.Server
}

func (c created) headers(port string) map[string]string {
	return map[string]string{"E2b-Sandbox-Id": c.SandboxID, "E2b-Sandbox-Port": port, "X-Access-Token": c.EnvdAccessToken}
}

func (c created) sandboxURL(p string) string { return c.ts.URL + SandboxPrefix + p }

func create(t *testing.T, ts *httptest.Server, key string, body map[string]any) created {
	t.Helper()
	r := do(t, "POST", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(key), body)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var sb sandboxJSON
	r.json(t, &sb)
	return created{sb, ts}
}

func TestCreateAnswersTheFieldsTheSDKsRequire(t *testing.T) {
	_, ts := newServer(t, Config{})
	for _, path := range []string{"/sandboxes", "/v2/sandboxes"} {
		t.Run(path, func(t *testing.T) {
			r := do(t, "POST", ts.URL+APIPrefix+path, apiKey(keyAlice), map[string]any{"templateID": "code-interpreter-v1", "timeout": 60})
			if r.status != http.StatusCreated {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			var raw map[string]any
			r.json(t, &raw)
			for _, f := range []string{"sandboxID", "templateID", "clientID", "envdVersion", "envdAccessToken"} {
				if s, _ := raw[f].(string); s == "" {
					t.Errorf("%s is missing or empty in %s", f, r.body)
				}
			}
			if raw["templateID"] != "code-interpreter-v1" || raw["envdVersion"] != EnvdVersion {
				t.Errorf("answer %s", r.body)
			}
			do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+raw["sandboxID"].(string), apiKey(keyAlice), nil)
		})
	}
}

func TestCreateRefusesWhatItCannotHonour(t *testing.T) {
	_, ts := newServer(t, Config{})
	for _, tc := range []struct {
		name     string
		body     map[string]any
		status   int
		contains string
	}{
		{"unknown template", map[string]any{"templateID": "my-custom"}, 400, `template "my-custom" is not known`},
		{"auto pause", map[string]any{"templateID": "code-interpreter-v1", "autoPause": true}, 501, "autoPause"},
		{"network rules", map[string]any{"templateID": "code-interpreter-v1", "network": map[string]any{"allowOut": []string{"1.1.1.1"}}}, 501, "network rules"},
		{"volume mounts", map[string]any{"templateID": "code-interpreter-v1", "volumeMounts": []any{map[string]string{"name": "v", "path": "/v"}}}, 501, "volume"},
		{"timeout too long", map[string]any{"templateID": "code-interpreter-v1", "timeout": 200000}, 400, "timeout 200000 s"},
		{"timeout zero", map[string]any{"templateID": "code-interpreter-v1", "timeout": 0}, 400, "timeout 0 s"},
		{"bad env name", map[string]any{"templateID": "code-interpreter-v1", "envVars": map[string]string{"A=B": "x"}}, 400, "envVars"},
		{"not JSON", nil, 400, "invalid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body any = tc.body
			if tc.body == nil {
				body = "{nope"
			}
			do(t, "POST", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(keyAlice), body).e2bError(t, tc.status, tc.contains)
		})
	}
}

func TestCreateWithBaseTemplateNeedsHeavy(t *testing.T) {
	// The test dispatcher has no heavy tier: "base" (a shell) is refused saying so.
	_, ts := newServer(t, Config{})
	do(t, "POST", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(keyAlice), map[string]any{"templateID": "base"}).e2bError(t, 400, `tier "heavy" is not available`)
}

func TestControlPlaneAuth(t *testing.T) {
	_, ts := newServer(t, Config{})
	for _, tc := range []struct {
		name   string
		header map[string]string
		status int
	}{
		{"no key", nil, 401},
		{"wrong key", apiKey("nope"), 401},
		{"X-API-KEY", apiKey(keyAlice), 200},
		{"bearer", map[string]string{"Authorization": "Bearer " + keyAlice}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes", tc.header, nil)
			if tc.status != 200 {
				r.e2bError(t, tc.status, "API key")
			} else if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
		})
	}
}

func TestKeylessModeIsOneLocalTenant(t *testing.T) {
	h := New(FromDispatch(sessions), Config{}) // nil Authenticate: a server without keys
	t.Cleanup(h.Close)
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	sb := create(t, ts, "", map[string]any{"templateID": "code-interpreter-v1"})
	// Without a token, a keyless server still serves the sandbox (the contexts calls send none).
	r := do(t, "GET", sb.sandboxURL("/contexts"), map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": PortJupyter}, nil)
	if r.status != 200 {
		t.Fatalf("contexts without a token on a keyless server: %d %s", r.status, r.body)
	}
}

func TestGetListDeleteConnect(t *testing.T) {
	_, ts := newServer(t, Config{})
	a1 := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "metadata": map[string]string{"team": "x", "n": "1"}})
	a2 := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "metadata": map[string]string{"team": "x", "n": "2"}})
	a3 := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "metadata": map[string]string{"team": "y"}})
	b1 := create(t, ts, keyBob, map[string]any{"templateID": "code-interpreter-v1"})

	t.Run("get", func(t *testing.T) {
		r := do(t, "GET", ts.URL+APIPrefix+"/sandboxes/"+a1.SandboxID, apiKey(keyAlice), nil)
		var d detailJSON
		r.json(t, &d)
		if r.status != 200 || d.SandboxID != a1.SandboxID || d.Metadata["team"] != "x" || d.State != "running" || d.StartedAt == "" || d.EndAt == "" {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("another tenant's sandbox is not found", func(t *testing.T) {
		do(t, "GET", ts.URL+APIPrefix+"/sandboxes/"+a1.SandboxID, apiKey(keyBob), nil).e2bError(t, 404, "not found")
		do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+a1.SandboxID, apiKey(keyBob), nil).e2bError(t, 404, "not found")
	})
	ids := func(r response) []string {
		var list []detailJSON
		r.json(t, &list)
		var out []string
		for _, d := range list {
			out = append(out, d.SandboxID)
		}
		return out
	}
	t.Run("list filters by metadata", func(t *testing.T) {
		q := url.Values{"metadata": {"team=x"}}
		got := ids(do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes?"+q.Encode(), apiKey(keyAlice), nil))
		if strings.Join(got, ",") != a1.SandboxID+","+a2.SandboxID {
			t.Fatalf("got %v", got)
		}
		got = ids(do(t, "GET", ts.URL+APIPrefix+"/sandboxes?"+q.Encode(), apiKey(keyAlice), nil))
		if len(got) != 2 {
			t.Fatalf("v1 list got %v", got)
		}
	})
	t.Run("list shows only the tenant's own", func(t *testing.T) {
		got := ids(do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(keyBob), nil))
		if strings.Join(got, ",") != b1.SandboxID {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("list pages with X-Next-Token", func(t *testing.T) {
		r := do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes?limit=2", apiKey(keyAlice), nil)
		first := ids(r)
		next := r.header.Get("X-Next-Token")
		if len(first) != 2 || next == "" {
			t.Fatalf("first page %v, token %q", first, next)
		}
		r = do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes?limit=2&nextToken="+url.QueryEscape(next), apiKey(keyAlice), nil)
		second := ids(r)
		if strings.Join(second, ",") != a3.SandboxID || r.header.Get("X-Next-Token") != "" {
			t.Fatalf("second page %v, token %q", second, r.header.Get("X-Next-Token"))
		}
	})
	t.Run("list orders desc", func(t *testing.T) {
		got := ids(do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes?order=desc", apiKey(keyAlice), nil))
		if len(got) != 3 || got[0] != a3.SandboxID {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("list of paused sandboxes is empty", func(t *testing.T) {
		if got := ids(do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes?state=paused", apiKey(keyAlice), nil)); len(got) != 0 {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("list refuses a bad state", func(t *testing.T) {
		do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes?state=frozen", apiKey(keyAlice), nil).e2bError(t, 400, "state")
	})
	t.Run("connect", func(t *testing.T) {
		for _, p := range []string{"/sandboxes/", "/v2/sandboxes/"} {
			r := do(t, "POST", ts.URL+APIPrefix+p+a2.SandboxID+"/connect", apiKey(keyAlice), map[string]any{"timeout": 120})
			var sb sandboxJSON
			r.json(t, &sb)
			if r.status != 200 || sb.SandboxID != a2.SandboxID || sb.EnvdAccessToken != a2.EnvdAccessToken {
				t.Fatalf("%s: %d %s", p, r.status, r.body)
			}
		}
	})
	t.Run("pause, resume and metrics are not supported", func(t *testing.T) {
		for _, p := range []string{"/sandboxes/" + a2.SandboxID + "/pause", "/sandboxes/" + a2.SandboxID + "/resume"} {
			do(t, "POST", ts.URL+APIPrefix+p, apiKey(keyAlice), map[string]any{}).e2bError(t, 501, "not supported by agentbox")
		}
	})
	t.Run("delete", func(t *testing.T) {
		if r := do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+a1.SandboxID, apiKey(keyAlice), nil); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+a1.SandboxID, apiKey(keyAlice), nil).e2bError(t, 404, "not found")
		if _, err := sessions.Session(context.Background(), a1.SandboxID); err == nil {
			t.Fatal("the session outlived its sandbox")
		}
	})
}

func TestTimeoutIsAnAbsoluteLifetime(t *testing.T) {
	_, ts := newServer(t, Config{})
	gone := func(sb created) bool {
		return do(t, "GET", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID, apiKey(keyAlice), nil).status == 404
	}
	waitGone := func(t *testing.T, sb created, within time.Duration) {
		t.Helper()
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if gone(sb) {
				if _, err := sessions.Session(context.Background(), sb.SandboxID); err == nil {
					t.Fatal("the sandbox is gone but its session is open")
				}
				return
			}
		}
		t.Fatalf("sandbox still there %v after its deadline", within)
	}
	t.Run("killed at the deadline though busy with requests", func(t *testing.T) {
		sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "timeout": 1})
		// Using the sandbox does not extend it (E2B's timeout is not an idle TTL).
		do(t, "POST", sb.sandboxURL("/execute"), sb.headers(PortJupyter), map[string]any{"code": "1"})
		waitGone(t, sb, 10*time.Second)
	})
	t.Run("setTimeout moves the deadline later", func(t *testing.T) {
		sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "timeout": 1})
		if r := do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID+"/timeout", apiKey(keyAlice), map[string]any{"timeout": 60}); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		time.Sleep(2 * time.Second)
		if gone(sb) {
			t.Fatal("killed at the old deadline")
		}
	})
	t.Run("setTimeout moves the deadline earlier", func(t *testing.T) {
		sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "timeout": 600})
		do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID+"/timeout", apiKey(keyAlice), map[string]any{"timeout": 1})
		waitGone(t, sb, 10*time.Second)
	})
	t.Run("refresh extends", func(t *testing.T) {
		sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "timeout": 1})
		if r := do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID+"/refreshes", apiKey(keyAlice), map[string]any{"duration": 60}); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		time.Sleep(2 * time.Second)
		if gone(sb) {
			t.Fatal("killed at the old deadline")
		}
	})
	t.Run("timeout needs a value", func(t *testing.T) {
		sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
		do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID+"/timeout", apiKey(keyAlice), map[string]any{}).e2bError(t, 400, `"timeout"`)
	})
}

func TestSandboxRoutingAndAuth(t *testing.T) {
	_, ts := newServer(t, Config{})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	route := map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": PortJupyter}
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{}
		for k, v := range route {
			h[k] = v
		}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	for _, tc := range []struct {
		name     string
		header   map[string]string
		status   int
		contains string
	}{
		{"the access token", with(map[string]string{"X-Access-Token": sb.EnvdAccessToken}), 200, ""},
		{"a wrong access token", with(map[string]string{"X-Access-Token": "ea_wrong"}), 401, "X-Access-Token"},
		{"no token but the owner's key", with(apiKey(keyAlice)), 200, ""},
		{"no token and another tenant's key", with(apiKey(keyBob)), 502, "sandbox"},
		{"no token and no key", route, 401, "no X-Access-Token"},
		{"no sandbox id", map[string]string{"E2b-Sandbox-Port": PortJupyter}, 400, "E2b-Sandbox-Id"},
		{"an unknown sandbox", map[string]string{"E2b-Sandbox-Id": "ses_nope", "E2b-Sandbox-Port": PortJupyter, "X-Access-Token": "x"}, 502, "unknown id"},
		{"an unknown port", with(map[string]string{"E2b-Sandbox-Port": "8080", "X-Access-Token": sb.EnvdAccessToken}), 404, "E2b-Sandbox-Port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, "GET", sb.sandboxURL("/contexts"), tc.header, nil)
			if tc.status == 200 {
				if r.status != 200 {
					t.Fatalf("%d %s", r.status, r.body)
				}
				return
			}
			r.e2bError(t, tc.status, tc.contains)
		})
	}
}

func TestHealth(t *testing.T) {
	_, ts := newServer(t, Config{})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	if r := do(t, "GET", sb.sandboxURL("/health"), sb.headers(PortEnvd), nil); r.status != 204 {
		t.Fatalf("envd health: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", sb.sandboxURL("/health"), sb.headers(PortJupyter), nil); r.status != 200 {
		t.Fatalf("jupyter health: %d %s", r.status, r.body)
	}
	do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID, apiKey(keyAlice), nil)
	if r := do(t, "GET", sb.sandboxURL("/health"), sb.headers(PortEnvd), nil); r.status != 502 {
		t.Fatalf("health of a killed sandbox: %d %s, want 502", r.status, r.body)
	}
	t.Run("a session closed behind the sandbox's back", func(t *testing.T) {
		sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
		s, err := sessions.Session(dispatch.WithTenant(context.Background(), dispatch.Tenant{ID: "alice"}), sb.SandboxID)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		var list []detailJSON
		do(t, "GET", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(keyAlice), nil).json(t, &list)
		for _, d := range list {
			if d.SandboxID == sb.SandboxID {
				t.Fatal("a sandbox whose session is gone is listed")
			}
		}
		if r := do(t, "GET", sb.sandboxURL("/health"), sb.headers(PortEnvd), nil); r.status != 502 {
			t.Fatalf("%d %s, want 502", r.status, r.body)
		}
		do(t, "GET", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID, apiKey(keyAlice), nil).e2bError(t, 404, "not found")
	})
}

// execLines runs code through POST /execute and returns its NDJSON lines.
func execLines(t *testing.T, sb created, body map[string]any) []map[string]any {
	t.Helper()
	r := do(t, "POST", sb.sandboxURL("/execute"), sb.headers(PortJupyter), body)
	if r.status != 200 {
		t.Fatalf("execute: %d %s", r.status, r.body)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	if len(out) == 0 || out[len(out)-1]["type"] != "end_of_execution" {
		t.Fatalf("the stream does not end with end_of_execution: %s", r.body)
	}
	return out
}

func ofType(lines []map[string]any, typ string) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["type"] == typ {
			out = append(out, l)
		}
	}
	return out
}

func TestExecute(t *testing.T) {
	_, ts := newServer(t, Config{})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "envVars": map[string]string{"FROM_CREATE": "c"}})

	t.Run("the last expression is the main result", func(t *testing.T) {
		lines := execLines(t, sb, map[string]any{"code": "x = 1 + 1\nx"})
		res := ofType(lines, "result")
		if len(res) != 1 || res[0]["text"] != "2" || res[0]["is_main_result"] != true {
			t.Fatalf("results %v", res)
		}
		if n := ofType(lines, "number_of_executions"); len(n) != 1 || n[0]["execution_count"].(float64) < 1 {
			t.Fatalf("number_of_executions %v", n)
		}
	})
	t.Run("state persists between executions", func(t *testing.T) {
		if res := ofType(execLines(t, sb, map[string]any{"code": "x * 2", "language": "python"}), "result"); len(res) != 1 || res[0]["text"] != "4" {
			t.Fatalf("results %v", res)
		}
	})
	t.Run("stdout and stderr carry timestamps", func(t *testing.T) {
		lines := execLines(t, sb, map[string]any{"code": "import sys\nprint('out')\nprint('err', file=sys.stderr)"})
		out, errs := ofType(lines, "stdout"), ofType(lines, "stderr")
		if len(out) != 1 || out[0]["text"] != "out\n" || len(errs) != 1 || errs[0]["text"] != "err\n" {
			t.Fatalf("stdout %v stderr %v", out, errs)
		}
		for _, l := range append(out, errs...) {
			if _, err := time.Parse(time.RFC3339Nano, l["timestamp"].(string)); err != nil {
				t.Fatalf("timestamp %v: %v", l["timestamp"], err)
			}
		}
	})
	t.Run("a string result loses its quotes", func(t *testing.T) {
		if res := ofType(execLines(t, sb, map[string]any{"code": "'abc'"}), "result"); len(res) != 1 || res[0]["text"] != "abc" {
			t.Fatalf("results %v", res)
		}
	})
	t.Run("None gives no result", func(t *testing.T) {
		if res := ofType(execLines(t, sb, map[string]any{"code": "None"}), "result"); len(res) != 0 {
			t.Fatalf("results %v", res)
		}
	})
	t.Run("an exception is an error line", func(t *testing.T) {
		lines := execLines(t, sb, map[string]any{"code": "1/0"})
		e := ofType(lines, "error")
		if len(e) != 1 || e[0]["name"] != "ZeroDivisionError" || !strings.Contains(e[0]["value"].(string), "division by zero") ||
			!strings.Contains(e[0]["traceback"].(string), "ZeroDivisionError") {
			t.Fatalf("error %v", e)
		}
	})
	t.Run("display output keeps its MIME types", func(t *testing.T) {
		code := "class H:\n    def _repr_html_(self): return '<b>hi</b>'\n    def _repr_markdown_(self): return '*hi*'\nH()"
		res := ofType(execLines(t, sb, map[string]any{"code": code}), "result")
		if len(res) != 1 || res[0]["html"] != "<b>hi</b>" || res[0]["markdown"] != "*hi*" {
			t.Fatalf("results %v", res)
		}
	})
	t.Run("create envs reach the code", func(t *testing.T) {
		if res := ofType(execLines(t, sb, map[string]any{"code": "import os\nos.environ['FROM_CREATE']"}), "result"); len(res) != 1 || res[0]["text"] != "c" {
			t.Fatalf("results %v", res)
		}
	})
	t.Run("env_vars apply to one execution", func(t *testing.T) {
		body := map[string]any{"code": "import os\nos.environ['ONCE'] + os.environ['FROM_CREATE']", "env_vars": map[string]string{"ONCE": "1", "FROM_CREATE": "override"}}
		if res := ofType(execLines(t, sb, body), "result"); len(res) != 1 || res[0]["text"] != "1override" {
			t.Fatalf("results %v", res)
		}
		after := ofType(execLines(t, sb, map[string]any{"code": "os.environ.get('ONCE', 'unset') + os.environ['FROM_CREATE']"}), "result")
		if len(after) != 1 || after[0]["text"] != "unsetc" {
			t.Fatalf("after: %v", after)
		}
	})
	t.Run("bad requests", func(t *testing.T) {
		for _, tc := range []struct {
			body     map[string]any
			status   int
			contains string
		}{
			{map[string]any{}, 400, `"code" is required`},
			{map[string]any{"code": "1", "language": "r"}, 400, "Python only"},
			{map[string]any{"code": "1", "language": "python", "context_id": sb.SandboxID}, 400, "not both"},
			{map[string]any{"code": "1", "context_id": "ses_nope"}, 404, "context"},
			{map[string]any{"code": "1", "env_vars": map[string]string{"": "x"}}, 400, "env_vars"},
		} {
			do(t, "POST", sb.sandboxURL("/execute"), sb.headers(PortJupyter), tc.body).e2bError(t, tc.status, tc.contains)
		}
	})
}

func TestExecuteStreamsAsItRunsWithKeepalives(t *testing.T) {
	_, ts := newServer(t, Config{Keepalive: 100 * time.Millisecond})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	body, _ := json.Marshal(map[string]any{"code": "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"})
	req, _ := http.NewRequest("POST", sb.sandboxURL("/execute"), bytes.NewReader(body))
	for k, v := range sb.headers(PortJupyter) {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var types []string
	var firstAt time.Duration
	for sc.Scan() {
		var m map[string]any
		json.Unmarshal(sc.Bytes(), &m)
		types = append(types, m["type"].(string))
		if m["type"] == "stdout" && m["text"] == "first\n" {
			firstAt = time.Since(start)
		}
	}
	// "first" arrived while the cell was still sleeping (well before its 1.5 s), not with the end.
	if firstAt == 0 || firstAt > 1200*time.Millisecond {
		t.Fatalf("first line at %v; lines %v", firstAt, types)
	}
	keepalives := 0
	for _, ty := range types {
		if ty == "keepalive" {
			keepalives++
		}
	}
	if keepalives == 0 || types[len(types)-1] != "end_of_execution" {
		t.Fatalf("lines %v: want keepalives during the sleep and end_of_execution last", types)
	}
}

func TestContexts(t *testing.T) {
	_, ts := newServer(t, Config{})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "envVars": map[string]string{"E": "v"}})
	jh := sb.headers(PortJupyter)
	execLines(t, sb, map[string]any{"code": "y = 'default'"})

	r := do(t, "POST", sb.sandboxURL("/contexts"), jh, map[string]any{"language": "python", "cwd": "/home/user/work"})
	var c contextJSON
	r.json(t, &c)
	if r.status != 200 || c.ID == "" || c.Language != "python" || c.Cwd != "/home/user/work" {
		t.Fatalf("create context: %d %s", r.status, r.body)
	}
	t.Run("a new context has its own state, the sandbox's envs and its cwd", func(t *testing.T) {
		res := ofType(execLines(t, sb, map[string]any{"code": "import os\n(globals().get('y'), os.environ['E'], os.getcwd())", "context_id": c.ID}), "result")
		if len(res) != 1 || res[0]["text"] != "(None, 'v', '/home/user/work')" {
			t.Fatalf("results %v", res)
		}
	})
	t.Run("list has the default and the new one", func(t *testing.T) {
		var list []contextJSON
		do(t, "GET", sb.sandboxURL("/contexts"), jh, nil).json(t, &list)
		if len(list) != 2 || list[0].ID != sb.SandboxID || list[1].ID != c.ID {
			t.Fatalf("list %+v", list)
		}
	})
	t.Run("restart empties the namespace", func(t *testing.T) {
		if r := do(t, "POST", sb.sandboxURL("/contexts/"+sb.SandboxID+"/restart"), jh, nil); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if res := ofType(execLines(t, sb, map[string]any{"code": "globals().get('y', 'gone')"}), "result"); len(res) != 1 || res[0]["text"] != "gone" {
			t.Fatalf("results %v", res)
		}
	})
	t.Run("other languages are refused", func(t *testing.T) {
		do(t, "POST", sb.sandboxURL("/contexts"), jh, map[string]any{"language": "javascript"}).e2bError(t, 400, "Python only")
	})
	t.Run("delete closes the child session", func(t *testing.T) {
		if r := do(t, "DELETE", sb.sandboxURL("/contexts/"+c.ID), jh, nil); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if _, err := sessions.Session(dispatch.WithTenant(context.Background(), dispatch.Tenant{ID: "alice"}), c.ID); err == nil {
			t.Fatal("the context's session is still open")
		}
		do(t, "DELETE", sb.sandboxURL("/contexts/"+c.ID), jh, nil).e2bError(t, 404, "context")
		do(t, "DELETE", sb.sandboxURL("/contexts/"+sb.SandboxID), jh, nil).e2bError(t, 400, "default context")
	})
	t.Run("killing the sandbox closes its contexts", func(t *testing.T) {
		var c2 contextJSON
		do(t, "POST", sb.sandboxURL("/contexts"), jh, map[string]any{}).json(t, &c2)
		do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID, apiKey(keyAlice), nil)
		if _, err := sessions.Session(dispatch.WithTenant(context.Background(), dispatch.Tenant{ID: "alice"}), c2.ID); err == nil {
			t.Fatal("the context outlived its sandbox")
		}
	})
}

func multipartBody(t *testing.T, files map[string]string) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for name, data := range files {
		// The SDKs put the file's whole path in the part's filename.
		h := make(map[string][]string)
		h["Content-Disposition"] = []string{fmt.Sprintf(`form-data; name="file"; filename=%q`, name)}
		h["Content-Type"] = []string{"application/octet-stream"}
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, data)
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

func TestFiles(t *testing.T) {
	_, ts := newServer(t, Config{})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	eh := sb.headers(PortEnvd)
	withType := func(ct string, extra ...string) map[string]string {
		h := map[string]string{"Content-Type": ct}
		for k, v := range eh {
			h[k] = v
		}
		for i := 0; i+1 < len(extra); i += 2 {
			h[extra[i]] = extra[i+1]
		}
		return h
	}
	read := func(p string) response {
		return do(t, "GET", sb.sandboxURL("/files?path="+url.QueryEscape(p)), eh, nil)
	}
	t.Run("multipart with several parts", func(t *testing.T) {
		ct, body := multipartBody(t, map[string]string{"/home/user/d/a.txt": "A", "/tmp/b.txt": "B"})
		r := do(t, "POST", sb.sandboxURL("/files"), withType(ct), body)
		var entries []entryJSON
		r.json(t, &entries)
		if r.status != 200 || len(entries) != 2 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if a, b := read("/home/user/d/a.txt"), read("/tmp/b.txt"); string(a.body) != "A" || string(b.body) != "B" {
			t.Fatalf("read back %q %q", a.body, b.body)
		}
	})
	t.Run("multipart for the path parameter", func(t *testing.T) {
		ct, body := multipartBody(t, map[string]string{"c.txt": "C"})
		r := do(t, "POST", sb.sandboxURL("/files?path=%2Fhome%2Fuser%2Fc.txt"), withType(ct), body)
		if r.status != 200 || !strings.Contains(string(r.body), `"path":"/home/user/c.txt","name":"c.txt","type":"file"`) {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("octet-stream", func(t *testing.T) {
		if r := do(t, "POST", sb.sandboxURL("/files?path=o.bin"), withType("application/octet-stream"), "\x00\x01raw"); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if r := read("/home/user/o.bin"); string(r.body) != "\x00\x01raw" || r.header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("relative path read back %q (%s)", r.body, r.header.Get("Content-Type"))
		}
	})
	t.Run("gzip octet-stream", func(t *testing.T) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write([]byte("zipped"))
		zw.Close()
		if r := do(t, "POST", sb.sandboxURL("/files?path=/home/user/z.txt"), withType("application/octet-stream", "Content-Encoding", "gzip"), buf.Bytes()); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if r := read("/home/user/z.txt"); string(r.body) != "zipped" {
			t.Fatalf("read back %q", r.body)
		}
	})
	t.Run("errors", func(t *testing.T) {
		read("/home/user/missing.txt").e2bError(t, 404, "")
		do(t, "GET", sb.sandboxURL("/files"), eh, nil).e2bError(t, 400, "path is required")
		ct, body := multipartBody(t, map[string]string{})
		do(t, "POST", sb.sandboxURL("/files"), withType(ct), body).e2bError(t, 400, `no "file" part`)
		do(t, "POST", sb.sandboxURL("/files?path=/x"), withType("text/plain"), "x").e2bError(t, 400, "content type")
		do(t, "POST", sb.sandboxURL("/files?path=/x"), withType("application/octet-stream", "Content-Encoding", "gzip"), "not gzip").e2bError(t, 400, "gzip")
	})
}

func TestSignedFileURLs(t *testing.T) {
	_, ts := newServer(t, Config{})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	q := func(p, op, user, exp string) string {
		v := url.Values{"path": {p}, "signature": {signature(p, op, user, sb.EnvdAccessToken, exp)}}
		if user != "" {
			v.Set("username", user)
		}
		if exp != "" {
			v.Set("signature_expiration", exp)
		}
		return ts.URL + "/files?" + v.Encode()
	}
	future := fmt.Sprint(time.Now().Add(time.Minute).Unix())
	t.Run("upload then download", func(t *testing.T) {
		if r := do(t, "POST", q("/home/user/s.txt", "write", "", ""), map[string]string{"Content-Type": "application/octet-stream"}, "signed"); r.status != 200 {
			t.Fatalf("upload: %d %s", r.status, r.body)
		}
		if r := do(t, "GET", q("/home/user/s.txt", "read", "user", future), nil, nil); r.status != 200 || string(r.body) != "signed" {
			t.Fatalf("download: %d %s", r.status, r.body)
		}
	})
	t.Run("refused", func(t *testing.T) {
		do(t, "GET", q("/home/user/s.txt", "write", "", ""), nil, nil).e2bError(t, 401, "signature matches no sandbox")
		do(t, "GET", q("/home/user/other.txt", "read", "", "")[:len(ts.URL)+len("/files?path=%2Fhome%2Fuser%2Fs.txt")]+"&signature=v1_x", nil, nil).e2bError(t, 401, "signature")
		do(t, "GET", q("/home/user/s.txt", "read", "", "100"), nil, nil).e2bError(t, 401, "expired")
		do(t, "GET", ts.URL+"/files?path=/home/user/s.txt", nil, nil).e2bError(t, 401, "signed URLs")
	})
}

// sandboxTransport adds a sandbox's routing headers and token, as the SDKs' connect transport does.
type sandboxTransport struct{ headers map[string]string }

func (s sandboxTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range s.headers {
		r.Header.Set(k, v)
	}
	return http.DefaultTransport.RoundTrip(r)
}

func TestFilesystemRPC(t *testing.T) {
	_, ts := newServer(t, Config{})
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	hc := &http.Client{Transport: sandboxTransport{sb.headers(PortEnvd)}}
	for _, codec := range []struct {
		name string
		opts []connect.ClientOption
	}{{"json", []connect.ClientOption{connect.WithProtoJSON()}}, {"binary", nil}} {
		t.Run(codec.name, func(t *testing.T) {
			ctx := context.Background()
			fs := filesystemconnect.NewFilesystemClient(hc, ts.URL+SandboxPrefix, codec.opts...)
			base := "/home/user/" + codec.name
			code := func(err error) connect.Code { return connect.CodeOf(err) }

			mk, err := fs.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: base + "/sub"}))
			if err != nil || mk.Msg.Entry.Type != fspb.FileType_FILE_TYPE_DIRECTORY || mk.Msg.Entry.Path != base+"/sub" {
				t.Fatalf("MakeDir: %v %v", mk, err)
			}
			if _, err := fs.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: base + "/sub"})); code(err) != connect.CodeAlreadyExists {
				t.Fatalf("MakeDir again: %v, want AlreadyExists", err)
			}
			ct, body := multipartBody(t, map[string]string{base + "/sub/f.txt": "12345", base + "/top.txt": "t"})
			if r := do(t, "POST", sb.sandboxURL("/files"), map[string]string{"Content-Type": ct, "E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": PortEnvd, "X-Access-Token": sb.EnvdAccessToken}, body); r.status != 200 {
				t.Fatalf("upload: %d %s", r.status, r.body)
			}

			st, err := fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: base + "/sub/f.txt"}))
			if err != nil || st.Msg.Entry.Size != 5 || st.Msg.Entry.Name != "f.txt" || st.Msg.Entry.Type != fspb.FileType_FILE_TYPE_FILE {
				t.Fatalf("Stat: %v %v", st, err)
			}
			if _, err := fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: base + "/nope"})); code(err) != connect.CodeNotFound {
				t.Fatalf("Stat of a missing path: %v, want NotFound", err)
			}

			names := func(depth uint32) []string {
				ls, err := fs.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: base, Depth: depth}))
				if err != nil {
					t.Fatalf("ListDir depth %d: %v", depth, err)
				}
				var out []string
				for _, e := range ls.Msg.Entries {
					out = append(out, strings.TrimPrefix(e.Path, base+"/"))
				}
				return out
			}
			if got := strings.Join(names(1), ","); got != "sub,top.txt" {
				t.Fatalf("ListDir depth 1: %s", got)
			}
			if got := strings.Join(names(2), ","); got != "sub,sub/f.txt,top.txt" {
				t.Fatalf("ListDir depth 2: %s", got)
			}

			mv, err := fs.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: base + "/top.txt", Destination: base + "/moved/top2.txt"}))
			if err != nil || mv.Msg.Entry.Path != base+"/moved/top2.txt" {
				t.Fatalf("Move: %v %v", mv, err)
			}
			if _, err := fs.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: base + "/top.txt", Destination: base + "/x"})); code(err) != connect.CodeNotFound {
				t.Fatalf("Move of a missing file: %v, want NotFound", err)
			}
			if _, err := fs.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: base + "/sub"})); err != nil {
				t.Fatalf("Remove a directory: %v", err)
			}
			if got := strings.Join(names(1), ","); got != "moved" {
				t.Fatalf("after Remove: %s", got)
			}
			if _, err := fs.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: base + "/sub"})); code(err) != connect.CodeNotFound {
				t.Fatalf("Remove again: %v, want NotFound", err)
			}
			if _, err := fs.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: base})); code(err) != connect.CodeUnimplemented {
				t.Fatalf("CreateWatcher: %v, want Unimplemented", err)
			}
			stream, err := fs.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: base}))
			if err == nil {
				for stream.Receive() {
				}
				err = stream.Err()
			}
			if code(err) != connect.CodeUnimplemented {
				t.Fatalf("WatchDir: %v, want Unimplemented", err)
			}
		})
	}
	t.Run("a wrong token is refused", func(t *testing.T) {
		bad := &http.Client{Transport: sandboxTransport{map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": PortEnvd, "X-Access-Token": "ea_bad"}}}
		fs := filesystemconnect.NewFilesystemClient(bad, ts.URL+SandboxPrefix, connect.WithProtoJSON())
		if _, err := fs.Stat(context.Background(), connect.NewRequest(&fspb.StatRequest{Path: "/home/user"})); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("%v, want Unauthenticated", err)
		}
	})
}

// refusing answers every session start with err.
type refusing struct {
	Sandboxes
	err error
}

func (r refusing) NewSession(context.Context, api.SessionRequest) (Session, error) { return nil, r.err }

func TestErrorsMapToTheStatusesTheSDKsRead(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		retryAfter bool
	}{
		{"overloaded is 429 with Retry-After (RateLimitError, retried)", errdefs.With(errdefs.Overloaded, errors.New("too many sessions")), 429, true},
		{"unavailable is 503 (ServiceBusyError)", errdefs.With(errdefs.Unavailable, errors.New("shutting down")), 503, true},
		{"forbidden is 403", errdefs.With(errdefs.Forbidden, errors.New("audit-only key")), 403, false},
		{"internal is 500 without its details", errors.New("boom: /secret/path"), 500, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := New(refusing{FromDispatch(sessions), tc.err}, Config{Authenticate: testAuth})
			t.Cleanup(h.Close)
			ts := httptest.NewServer(h)
			t.Cleanup(ts.Close)
			r := do(t, "POST", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(keyAlice), map[string]any{"templateID": "code-interpreter-v1"})
			r.e2bError(t, tc.status, "")
			if strings.Contains(string(r.body), "/secret/path") {
				t.Fatalf("an internal error's details were answered: %s", r.body)
			}
			if got := r.header.Get("Retry-After") != ""; got != tc.retryAfter {
				t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
			}
		})
	}
}
