package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/limits"
)

// keyless starts a server without API keys on loopback, as `agentbox serve` runs by default.
func keyless(t *testing.T, sbx Sandboxes, log *slog.Logger) string {
	t.Helper()
	srv, err := New(sbx, Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h := httptest.NewServer(srv.Handler())
	t.Cleanup(h.Close)
	return h.URL
}

func TestCrossOriginRefused(t *testing.T) {
	base := keyless(t, sb, nil)
	run := []byte(`{"code": "print(1)"}`)
	cases := []struct {
		name   string
		c      call
		status int
	}{
		// What fetch(url, {method: "POST", mode: "no-cors", body}) sends from another site.
		{"no-cors POST from another site", call{method: "POST", path: "/v1/run", body: []byte(`{"code": "print(1)"}`), contentType: "text/plain;charset=UTF-8",
			header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Origin": "https://evil.example"}}, 403},
		{"JSON POST from another site", call{method: "POST", path: "/v1/run", body: run,
			header: map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}}, 403},
		{"older browser: Origin only", call{method: "POST", path: "/v1/run", body: run,
			header: map[string]string{"Origin": "https://evil.example"}}, 403},
		{"PUT a file from another site", call{method: "PUT", path: "/v1/sessions/x/files/data%2Fa", body: []byte("x"), contentType: "application/octet-stream",
			header: map[string]string{"Sec-Fetch-Site": "same-site"}}, 403},
		{"same origin", call{method: "POST", path: "/v1/run", body: run,
			header: map[string]string{"Sec-Fetch-Site": "same-origin"}}, 200},
		{"not a browser", call{method: "POST", path: "/v1/run", body: run}, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.key = "-"
			r := doAt(t, base, tc.c, checkResponse)
			if tc.status == 200 {
				if r.status != 200 {
					t.Fatalf("%d %s", r.status, r.body)
				}
				return
			}
			wantError(t, r, tc.status, "forbidden", "cross-origin")
		})
	}
	// The keyed server refuses cross-origin writes too (browsers get no CORS answers from it anyway).
	wantError(t, do(t, call{method: "POST", path: "/v1/run", body: run, header: map[string]string{"Sec-Fetch-Site": "cross-site"}}, checkResponse),
		403, "forbidden", "cross-origin")
}

func TestDNSRebindingHostRefused(t *testing.T) {
	base := keyless(t, sb, nil)
	port := base[strings.LastIndex(base, ":")+1:]
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"127.0.0.1:" + port, true},
		{"localhost:" + port, true},
		{"LOCALHOST", true},
		{"127.1.2.3:" + port, true},
		{"[::1]:" + port, true},
		{"evil.example:" + port, false},
		{"evil.example", false},
		{"127.0.0.1.evil.example:" + port, false},
		{"localhost.evil.example", false},
	} {
		t.Run(tc.host, func(t *testing.T) {
			for _, c := range []call{
				{method: "GET", path: "/v1/sessions"}, // a rebinding page could read answers
				{method: "POST", path: "/v1/run", body: []byte(`{"code": "print(1)"}`)},
			} {
				c.key, c.host = "-", tc.host
				r := doAt(t, base, c, checkResponse)
				if tc.ok {
					if r.status != 200 {
						t.Fatalf("%s %s: %d %s", c.method, c.path, r.status, r.body)
					}
					continue
				}
				wantError(t, r, 403, "forbidden", "DNS rebinding")
			}
		})
	}
	// With API keys the server may be reached under any name.
	if r := do(t, call{method: "GET", path: "/v1/sessions", host: "sandbox.internal.example"}, checkBoth); r.status != 200 {
		t.Fatalf("keyed server refused a Host: %d %s", r.status, r.body)
	}
}

func TestJSONContentTypeRequired(t *testing.T) {
	s := decodeInto[api.Session](t, do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{}`)}, checkBoth))
	defer do(t, call{method: "DELETE", path: "/v1/sessions/" + s.ID}, checkBoth)
	for _, path := range []string{"/v1/run", "/v1/sessions", "/v1/sessions/" + s.ID + "/run"} {
		body := []byte(`{"code": "print(1)"}`)
		if path == "/v1/sessions" {
			body = []byte(`{}`)
		}
		for _, tc := range []struct {
			name, contentType string
			status            int
			msg               string
		}{
			{"none", "-", 400, "-H 'Content-Type: application/json'"},
			{"curl -d", "application/x-www-form-urlencoded", 400, "with curl -d, add -H 'Content-Type: application/json'"},
			{"text/plain", "text/plain", 400, "Content-Type: application/json"},
			{"a prefix only", "application/jsonp", 400, "Content-Type: application/json"},
			{"garbage", ";;;", 400, "Content-Type: application/json"},
			{"with charset", "application/json; charset=utf-8", 0, ""},
			{"JSON", "application/json", 0, ""},
		} {
			t.Run(path+"/"+tc.name, func(t *testing.T) {
				r := do(t, call{method: "POST", path: path, body: body, contentType: tc.contentType}, checkResponse)
				if tc.status == 0 {
					if r.status >= 300 {
						t.Fatalf("%d %s", r.status, r.body)
					}
					if path == "/v1/sessions" {
						do(t, call{method: "DELETE", path: "/v1/sessions/" + decodeInto[api.Session](t, r).ID}, checkBoth)
					}
					return
				}
				wantError(t, r, tc.status, "invalid_argument", tc.msg)
			})
		}
	}
}

func TestNullBodyRefused(t *testing.T) {
	s := decodeInto[api.Session](t, do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{}`)}, checkBoth))
	cell := "/v1/sessions/" + s.ID + "/run"
	defer do(t, call{method: "DELETE", path: "/v1/sessions/" + s.ID}, checkBoth)
	for _, tc := range []struct {
		path, body, msg string
	}{
		{"/v1/run", `null`, "JSON object"},
		{"/v1/run", ` {}`, `"code" is required`},
		{"/v1/run", `{"tier": "nano"}`, `"code" is required`},
		{"/v1/run", `[]`, "JSON object"},
		{"/v1/run", `"print(1)"`, "JSON object"},
		{"/v1/run", `{"code": null}`, `"code" is required`},
		{"/v1/sessions", `null`, "JSON object"},
		{"/v1/sessions", `7`, "JSON object"},
		{cell, `null`, "JSON object"},
		{cell, `{}`, `"code" is required`},
	} {
		t.Run(tc.path+" "+tc.body, func(t *testing.T) {
			wantError(t, do(t, call{method: "POST", path: tc.path, body: []byte(tc.body)}, checkResponse), 400, "invalid_argument", tc.msg)
		})
	}
	// The contract allows an empty program, on both endpoints.
	for _, path := range []string{"/v1/run", cell} {
		if r := do(t, call{method: "POST", path: path, body: []byte(`{"code": ""}`)}, checkBoth); r.status != 200 {
			t.Fatalf("%s with an empty program: %d %s", path, r.status, r.body)
		}
	}
}

func TestEmptyOutputFileIsEmptyString(t *testing.T) {
	r := do(t, call{method: "POST", path: "/v1/run", body: mustJSON(api.RunBody{
		Code: "open('/output/empty.txt', 'w').close()\nopen('/output/one.txt', 'w').write('1')"})}, checkBoth)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var raw struct {
		Files map[string]json.RawMessage `json:"files"`
	}
	if err := json.Unmarshal(r.body, &raw); err != nil {
		t.Fatal(err)
	}
	if got := string(raw.Files["/output/empty.txt"]); got != `""` {
		t.Fatalf("an empty /output file came back as %s, want \"\": %s", got, r.body)
	}
	if got := string(raw.Files["/output/one.txt"]); got != `"MQ=="` {
		t.Fatalf("/output/one.txt came back as %s", got)
	}
}

// failing is a dispatcher whose runs fail with an internal error carrying a guest-sized message.
type failing struct {
	*dispatch.Dispatcher
	err error
}

func (f failing) Run(context.Context, api.RunRequest, dispatch.Output) (*api.RunResponse, error) {
	return nil, f.err
}

// syncBuffer is a log destination the server's goroutines may share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestInternalErrorsMaskedAndCapped(t *testing.T) {
	secret := "protocol line " + strings.Repeat("G", 4<<20) // what a guest could make a tier quote
	var logs syncBuffer
	base := keyless(t, failing{sb, errors.New(secret)}, slog.New(slog.NewTextHandler(&logs, nil)))
	body := []byte(`{"code": "print(1)"}`)

	r := doAt(t, base, call{method: "POST", path: "/v1/run", body: body, key: "-"}, checkResponse)
	wantError(t, r, 500, "internal", "internal error (request "+r.header.Get("X-Request-Id")+")")
	if bytes.Contains(r.body, []byte("GGGG")) {
		t.Fatal("the answer quotes the internal error")
	}

	// The stream's error event follows the same rule.
	req, _ := http.NewRequest("POST", base+"/v1/run", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("X-Request-Id", "stream-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	var event, data string
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			event = v
		} else if v, ok := strings.CutPrefix(sc.Text(), "data: "); ok && event == "error" {
			data = v
		}
	}
	var e api.ErrorBody
	if err := json.Unmarshal([]byte(data), &e); err != nil {
		t.Fatalf("error event %q: %v", limits.Text(data, 200), err)
	}
	if e.Error.Code != "internal" || e.Error.Message != "internal error (request stream-1)" {
		t.Fatalf("error event %s", limits.Text(data, 200))
	}

	// Both were logged, each capped.
	out := logs.String()
	if n := strings.Count(out, "internal error"); n != 2 {
		t.Fatalf("%d internal errors logged, want 2", n)
	}
	if len(out) > 2*maxLoggedError+4096 || !strings.Contains(out, "more bytes]") {
		t.Fatalf("the log holds %d bytes for two internal errors", len(out))
	}
	if !strings.Contains(out, "id=stream-1") {
		t.Fatal("the streamed error was not logged with its request id")
	}

	// Nor does a client's long path become a long answer or log line (logged before auth).
	before := len(logs.String())
	long := "/" + strings.Repeat("p", 512<<10)
	r = doAt(t, base, call{method: "GET", path: long, key: "-"}, checkNone)
	if r.status != 404 || len(r.body) > maxErrorMessage+256 {
		t.Fatalf("a long path got %d with %d bytes", r.status, len(r.body))
	}
	if grown := len(logs.String()) - before; grown > 4096 {
		t.Fatalf("one request with a long path logged %d bytes", grown)
	}
}
