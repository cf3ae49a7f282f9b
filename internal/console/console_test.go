package console

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/entersandbox/agentbox/api"
)

func mustContain(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("answer lacks %q:\n%s", w, body)
		}
	}
}

func mustNotContain(t *testing.T, body string, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if strings.Contains(body, b) {
			t.Errorf("answer has %q:\n%s", b, body)
		}
	}
}

func TestPagesAreShellsThatNeedNoKeyAndCarryNoData(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ path, fragment string }{
		{"/ui/", `hx-get="/ui/f/sessions"`},
		{"/ui/s/sess_nano1", `hx-get="/ui/f/sessions/sess_nano1"`},
		{"/ui/audit", `hx-get="/ui/f/audit"`},
	} {
		t.Run(tc.path, func(t *testing.T) {
			status, hdr, body := h.do(req{path: tc.path, key: "-"})
			if status != 200 {
				t.Fatalf("status %d: %s", status, body)
			}
			mustContain(t, body, tc.fragment, `id="key-dialog"`, "/ui/static/vendor/htmx.min.js")
			csp := hdr.Get("Content-Security-Policy")
			mustContain(t, csp, "script-src 'self'", "frame-ancestors 'none'")
			if hdr.Get("X-Frame-Options") != "DENY" {
				t.Errorf("X-Frame-Options %q", hdr.Get("X-Frame-Options"))
			}
		})
	}
	if calls := h.api.called(""); len(calls) != 0 {
		t.Errorf("a page called the API: %v", calls)
	}
}

func TestStaticFilesAreServedAndTheChartFrameIsolated(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{"/ui/static/app.js", "/ui/static/app.css", "/ui/static/vendor/htmx.min.js", "/ui/static/vendor/xterm.js", "/ui/static/vendor/plotly.min.js", "/ui/static/vendor/vega-embed.min.js"} {
		if status, _, _ := h.do(req{path: p, key: "-"}); status != 200 {
			t.Errorf("%s: status %d", p, status)
		}
	}
	_, hdr, body := h.do(req{path: "/ui/static/chart.html", key: "-"})
	mustContain(t, body, `src="chart.js"`)
	mustContain(t, hdr.Get("Content-Security-Policy"), "default-src 'none'", "frame-ancestors 'self'")
	mustNotContain(t, hdr.Get("Content-Security-Policy"), "connect-src")
}

func TestFragmentsAreRefusedWithoutTheKey(t *testing.T) {
	h := newHarness(t)
	paths := []string{"/ui/f/sessions", "/ui/f/sessions/sess_nano1", "/ui/f/sessions/sess_nano1/timeline", "/ui/f/sessions/sess_nano1/steps/2",
		"/ui/f/sessions/sess_nano1/files?dir=/", "/ui/f/sessions/sess_nano1/file?path=/home/user/notes.txt",
		"/ui/f/sessions/sess_nano1/download?path=/home/user/notes.txt", "/ui/f/audit", "/ui/f/audit/report?period=daily"}
	for _, p := range paths {
		for _, tc := range []struct {
			name, key string
			want      int
		}{{"no key", "-", 401}, {"wrong key", "wrong-key-0123456789", 401}, {"key", "", 200}} {
			t.Run(p+"/"+tc.name, func(t *testing.T) {
				status, hdr, body := h.do(req{path: p, key: tc.key})
				if status != tc.want {
					t.Fatalf("status %d, want %d: %s", status, tc.want, body)
				}
				if tc.want == 401 {
					mustContain(t, body, `class="error-box"`, `data-status="401"`)
					if hdr.Get("WWW-Authenticate") == "" {
						t.Error("401 without WWW-Authenticate")
					}
				}
			})
		}
	}
}

func TestChangesAreRefusedWithoutTheKey(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/ui/f/sessions", "tier=nano"},
		{"DELETE", "/ui/f/sessions/sess_nano1", ""},
		{"POST", "/ui/f/sessions/sess_nano1/run", "code=1"},
		{"POST", "/ui/f/sessions/sess_nano1/rewind", "step=2"},
		{"POST", "/ui/f/sessions/sess_nano1/fork", "step=2"},
		{"POST", "/ui/f/sessions/sess_nano1/steps/2/pin", "pinned=true"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			status, _, body := h.do(req{method: tc.method, path: tc.path, body: tc.body, key: "-"})
			if status != 401 {
				t.Fatalf("status %d, want 401: %s", status, body)
			}
			mustContain(t, body, `data-status="401"`)
		})
	}
	if h.api.forks != 0 || len(h.api.cells) != 0 {
		t.Errorf("the API acted without the key: %v", h.api.called(""))
	}
}

func TestStateChangingRequestsNeedTheConsoleHeaderAndSameOrigin(t *testing.T) {
	h := newHarness(t)
	host := strings.TrimPrefix(h.srv.URL, "http://")
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"console header, same origin", map[string]string{"Origin": "http://" + host, "Sec-Fetch-Site": "same-origin"}, 204},
		{"console header, no browser headers (a script or curl)", nil, 204},
		{"no console header (a form a page posts)", map[string]string{consoleHeader: ""}, 403},
		{"cross-site fetch metadata", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"same-site but not same-origin", map[string]string{"Sec-Fetch-Site": "same-site"}, 403},
		{"origin of another site", map[string]string{"Origin": "http://evil.example"}, 403},
		{"origin of a rebinding name", map[string]string{"Origin": "http://rebind.example:" + strings.Split(host, ":")[1]}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := h.do(req{method: "POST", path: "/ui/f/sessions", body: "tier=nano", header: tc.header})
			if status != tc.want {
				t.Fatalf("status %d, want %d: %s", status, tc.want, body)
			}
		})
	}
	if n := len(h.api.called("POST /v1/sessions")); n != 2 {
		t.Errorf("%d sessions created, want 2 (the refused requests must not reach the API)", n)
	}
}

func TestCreatingASessionRedirectsToIt(t *testing.T) {
	h := newHarness(t)
	status, hdr, _ := h.do(req{method: "POST", path: "/ui/f/sessions", body: "tier=heavy"})
	if status != 204 || hdr.Get("HX-Redirect") != "/ui/s/sess_new" {
		t.Fatalf("status %d, HX-Redirect %q", status, hdr.Get("HX-Redirect"))
	}
	mustContain(t, strings.Join(h.api.called("POST /v1/sessions"), "\n"), `"tier":"heavy"`)
	status, _, body := h.do(req{method: "POST", path: "/ui/f/sessions", body: "tier=gpu"})
	if status != 400 {
		t.Fatalf("tier gpu: status %d", status)
	}
	mustContain(t, body, "want nano, heavy or auto")
}

func TestSessionListFiltersAndSearches(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		query      string
		want, miss []string
	}{
		{"", []string{"sess_nano1", "sess_heavy2", `href="/ui/s/sess_nano1"`, "<td>7</td>"}, nil},
		{"?tier=heavy", []string{"sess_heavy2"}, []string{"sess_nano1"}},
		{"?q=NANO1", []string{"sess_nano1"}, []string{"sess_heavy2"}},
		{"?q=nothing-like-it", []string{"No session matches."}, []string{"sess_nano1"}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			_, _, body := h.do(req{path: "/ui/f/sessions" + tc.query})
			mustContain(t, body, tc.want...)
			mustNotContain(t, body, tc.miss...)
		})
	}
	_, _, rows := h.do(req{path: "/ui/f/sessions?tier=nano", header: map[string]string{"HX-Target": "session-rows"}})
	mustNotContain(t, rows, "<table")
	mustContain(t, rows, "<tr>")
}

func TestSessionViewLoadsItsPanels(t *testing.T) {
	h := newHarness(t)
	_, _, body := h.do(req{path: "/ui/f/sessions/sess_nano1"})
	mustContain(t, body, `hx-get="/ui/f/sessions/sess_nano1/timeline"`, `id="run-form"`, `hx-get="/ui/f/sessions/sess_nano1/files?dir=%2F"`,
		`hx-post="/ui/f/sessions/sess_nano1/upload"`, `/ui/f/sessions/sess_nano1/network`)
	status, _, body := h.do(req{path: "/ui/f/sessions/nope"})
	if status != 404 {
		t.Fatalf("unknown session: status %d", status)
	}
	mustContain(t, body, "no session nope")
}

func TestLanesPutTheLiveLineFirstAndBranchesBeside(t *testing.T) {
	for _, tc := range []struct {
		name  string
		list  api.StepList
		lanes map[int]int
	}{
		{"linear", api.StepList{Current: 2, Steps: []api.Step{{N: 0, Parent: -1}, {N: 1, Parent: 0}, {N: 2, Parent: 1}}}, map[int]int{0: 0, 1: 0, 2: 0}},
		{"rewind abandons a branch", testSteps(), map[int]int{0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0}},
		{"two rewinds, two branches", api.StepList{Current: 5, Steps: []api.Step{
			{N: 0, Parent: -1}, {N: 1, Parent: 0, Abandoned: true}, {N: 2, Parent: 0, Kind: api.StepRewind}, {N: 3, Parent: 2, Abandoned: true},
			{N: 4, Parent: 2, Kind: api.StepRewind}, {N: 5, Parent: 4}}}, map[int]int{0: 0, 1: 1, 2: 0, 3: 2, 4: 0, 5: 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, row := range lanes(tc.list) {
				if row.Lane != tc.lanes[row.N] {
					t.Errorf("step %d on lane %d, want %d", row.N, row.Lane, tc.lanes[row.N])
				}
				if row.Current != (row.N == tc.list.Current) {
					t.Errorf("step %d current=%v", row.N, row.Current)
				}
			}
		})
	}
}

func TestTimelineShowsStepsBranchesOutcomesAndHighlightedCode(t *testing.T) {
	h := newHarness(t)
	_, _, body := h.do(req{path: "/ui/f/sessions/sess_nano1/timeline"})
	if n := strings.Count(body, `role="option"`); n != 8 {
		t.Errorf("%d rows, want 8", n)
	}
	mustContain(t, body, `role="listbox"`, `id="step-3" class="step outcome-error abandoned"`, `id="step-7" class="step outcome-ok current"`, `<code class="sh">$ ls -l /tmp # not python</code>`,
		"rewound to step 2", `<span class="kw">import</span>`, `<span class="bi">print</span>(<span class="str">&#39;&lt;b&gt;&#39;</span>)`,
		`hx-get="/ui/f/sessions/sess_nano1/steps/2"`, `data-lane="1"`, "--lanes:2", `forked as <a href="/ui/s/sess_fork9">sess_fork9</a>`)
	if strings.Count(body, "forked as") != 1 {
		t.Errorf("one fork expected, under step 2:\n%s", body)
	}
	mustNotContain(t, body, "print('<b>')")
}

func TestTimelineMarksTierMoves(t *testing.T) {
	rows := lanes(api.StepList{Current: 3, Steps: []api.Step{{N: 0, Parent: -1, Tier: api.TierNano}, {N: 1, Parent: 0, Tier: api.TierNano},
		{N: 2, Parent: 1, Tier: api.TierHeavy}, {N: 3, Parent: 2, Tier: api.TierHeavy}}})
	for _, r := range rows {
		want := api.Tier("")
		if r.N == 2 {
			want = api.TierNano
		}
		if r.MovedFrom != want {
			t.Errorf("step %d moved from %q, want %q", r.N, r.MovedFrom, want)
		}
	}
}

func TestTimelineSaysSoWithoutTimeTravel(t *testing.T) {
	h := newHarness(t)
	h.api.noTimeTravel = true
	status, _, body := h.do(req{path: "/ui/f/sessions/sess_nano1/timeline"})
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	mustContain(t, body, "This server has no time travel")
}

func TestInspectorShowsOutputErrorVariablesAndFiles(t *testing.T) {
	h := newHarness(t)
	_, _, body := h.do(req{path: "/ui/f/sessions/sess_nano1/steps/3"})
	mustContain(t, body, "Step 3", "out of step &lt;3&gt;", "ZeroDivisionError", "Traceback (most recent call last)",
		`<code>rows</code>`, "list", "[1, 2]", "72 B", `class="json-tree"`,
		`hx-get="/ui/f/sessions/sess_nano1/file?path=%2Fhome%2Fuser%2Fnotes.txt&amp;step=3"`,
		`data-shell-step="3"`, `hx-post="/ui/f/sessions/sess_nano1/rewind"`, `hx-post="/ui/f/sessions/sess_nano1/fork"`)
	status, _, _ := h.do(req{path: "/ui/f/sessions/sess_nano1/steps/x"})
	if status != 400 {
		t.Errorf("step x: status %d", status)
	}
}

func TestRewindForkAndPinCallTheAPI(t *testing.T) {
	h := newHarness(t)
	status, hdr, body := h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/rewind", body: "step=2"})
	if status != 200 || hdr.Get("HX-Trigger") != "session-changed" {
		t.Fatalf("rewind: %d %v", status, hdr)
	}
	mustContain(t, body, `role="listbox"`)
	mustContain(t, strings.Join(h.api.called("POST /v1/sessions/sess_nano1/rewind"), ""), `{"step":2}`)

	status, hdr, _ = h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/fork", body: "step=2"})
	if status != 204 || hdr.Get("HX-Redirect") != "/ui/s/sess_fork1" {
		t.Fatalf("fork: %d %q", status, hdr.Get("HX-Redirect"))
	}
	mustContain(t, strings.Join(h.api.called("POST /v1/sessions/sess_nano1/fork"), ""), `"step":2`)

	h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/steps/2/pin", body: "pinned=true"})
	h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/steps/2/pin", body: "pinned=false"})
	if len(h.api.called("POST /v1/sessions/sess_nano1/steps/2/pin")) != 1 || len(h.api.called("DELETE /v1/sessions/sess_nano1/steps/2/pin")) != 1 {
		t.Errorf("pin calls: %v", h.api.called(""))
	}
	status, _, body = h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/rewind", body: "step=-1"})
	if status != 400 {
		t.Errorf("rewind -1: %d %s", status, body)
	}
}

func TestRunStreamsOutputAndRendersTheResult(t *testing.T) {
	h := newHarness(t)
	status, hdr, body := h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/run", body: "code=print(1)", header: map[string]string{"Accept": "text/event-stream"}})
	if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d %q: %s", status, hdr.Get("Content-Type"), body)
	}
	events := regexp.MustCompile(`event: (\w+)`).FindAllStringSubmatch(body, -1)
	var names []string
	for _, e := range events {
		names = append(names, e[1])
	}
	if strings.Join(names, ",") != "stdout,html,result" {
		t.Fatalf("events %v:\n%s", names, body)
	}
	mustContain(t, body, `"text":"streamed \u003cb\u003etext\u003c/b\u003e\n"`, `data:image/svg+xml;base64,`, `ran: print(1)`)
	mustContain(t, strings.Join(h.api.called("POST /v1/sessions/sess_nano1/run"), ""), `{"code":"print(1)"}`)

	status, _, body = h.do(req{method: "POST", path: "/ui/f/sessions/gone/run", body: "code=1", key: "-"})
	if status != 401 {
		t.Fatalf("no key: %d %s", status, body)
	}
}

func TestFileViewerShowsTextCSVImagesAndBinary(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		path       string
		want, miss []string
	}{
		{"/home/user/notes.txt", []string{`<pre class="file-text">hello &lt;notes&gt;</pre>`}, []string{"<notes>"}},
		{"/home/user/data.csv", []string{`<table class="data csv">`, "<th>a</th>", "<td>&lt;x&gt;</td>"}, nil},
		{"/home/user/p.png", []string{`src="data:image/png;base64,iVBORw=="`}, nil},
		{"/home/user/blob.bin", []string{"A binary file"}, nil},
	} {
		t.Run(tc.path, func(t *testing.T) {
			_, _, body := h.do(req{path: "/ui/f/sessions/sess_nano1/file?path=" + tc.path})
			mustContain(t, body, tc.want...)
			mustNotContain(t, body, tc.miss...)
		})
	}
	_, _, body := h.do(req{path: "/ui/f/sessions/sess_nano1/file?path=/home/user/notes.txt&step=3"})
	mustContain(t, body, "at step 3: /home/user/notes.txt")
	status, hdr, body := h.do(req{path: "/ui/f/sessions/sess_nano1/download?path=/home/user/notes.txt"})
	if status != 200 || body != "hello <notes>" || !strings.Contains(hdr.Get("Content-Disposition"), `filename="notes.txt"`) {
		t.Errorf("download: %d %q %v", status, body, hdr)
	}
	for _, bad := range []string{"relative.txt", "/home/user/missing"} {
		if status, _, _ := h.do(req{path: "/ui/f/sessions/sess_nano1/file?path=" + bad}); status != 400 && status != 404 {
			t.Errorf("%s: status %d", bad, status)
		}
	}
}

func TestUploadWritesTheFileIntoTheSession(t *testing.T) {
	h := newHarness(t)
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("dir", "/data")
	fw, _ := mw.CreateFormFile("file", `C:\Users\me\input.csv`)
	fw.Write([]byte("a,b\n"))
	mw.Close()
	status, hdr, body := h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/upload", body: buf.String(), ctype: mw.FormDataContentType()})
	if status != 200 || hdr.Get("HX-Trigger") != "steps-changed" {
		t.Fatalf("status %d: %s", status, body)
	}
	mustContain(t, body, `id="files"`, `hx-get="/ui/f/sessions/sess_nano1/files?dir=%2Fdata"`)
	if got := h.api.called("PUT "); len(got) != 1 || got[0] != "PUT /v1/sessions/sess_nano1/files/data/input.csv a,b" {
		t.Errorf("PUT calls %q", got)
	}
	status, _, body = h.do(req{method: "POST", path: "/ui/f/sessions/sess_nano1/upload", body: "x=1"})
	if status != 400 {
		t.Errorf("no multipart: %d %s", status, body)
	}
}

func TestNetworkAndAuditViews(t *testing.T) {
	h := newHarness(t)
	_, _, body := h.do(req{path: "/ui/f/sessions/sess_nano1/network"})
	mustContain(t, body, "Requests", "DLP findings", "evil.example", "verdict-block")
	if got := h.api.called("GET /v1/audit/events"); len(got) != 2 || !strings.Contains(got[0], "session=sess_nano1") || !strings.Contains(got[1], "type=egress.dlp") {
		t.Errorf("audit calls %q", got)
	}
	_, _, body = h.do(req{path: "/ui/f/audit?type=run&actor=key_x&bogus=1"})
	mustContain(t, body, `<form class="filters"`, "key_x", `hx-get="/ui/f/audit?actor=key_x&amp;cursor=c2&amp;type=run"`)
	_, _, body = h.do(req{path: "/ui/f/audit?type=bogus"})
	mustContain(t, body, `unknown event type &#34;bogus&#34;`, `<form class="filters"`)
	_, _, body = h.do(req{path: "/ui/f/audit?type=run", header: map[string]string{"HX-Target": "audit-results"}})
	mustNotContain(t, body, "<form")
	_, _, body = h.do(req{path: "/ui/f/audit/report?period=weekly&date=2026-12-01"})
	mustContain(t, body, "weekly report", "aws_access_key", "verified")
	mustContain(t, strings.Join(h.api.called("GET /v1/audit/reports/"), ""), "/v1/audit/reports/weekly?date=2026-12-01")
}

// dialShell opens the shell websocket as the console's page would.
func dialShell(t *testing.T, h *harness, path, origin string) (*websocket.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hdr := http.Header{}
	if origin != "" {
		hdr.Set("Origin", origin)
	}
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.srv.URL, "http")+path, &websocket.DialOptions{HTTPHeader: hdr})
	return c, err
}

func readUntil(t *testing.T, c *websocket.Conn, typ string) []shellMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []shellMsg
	for {
		var m shellMsg
		if err := wsjson.Read(ctx, c, &m); err != nil {
			t.Fatalf("reading the shell (waiting for %s, got %v): %v", typ, got, err)
		}
		got = append(got, m)
		if m.Type == typ {
			return got
		}
	}
}

func send(t *testing.T, c *websocket.Conn, m shellMsg) {
	t.Helper()
	if err := wsjson.Write(context.Background(), c, m); err != nil {
		t.Fatal(err)
	}
}

func TestShellWebsocketRefusesOtherOrigins(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name, origin string
		ok           bool
	}{
		{"same origin", h.srv.URL, true},
		{"no origin", "", false},
		{"other site", "http://evil.example", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialShell(t, h, "/ui/ws/sessions/sess_nano1/shell?step=2", tc.origin)
			if tc.ok != (err == nil) {
				t.Fatalf("dial error %v, want ok=%v", err, tc.ok)
			}
			if c != nil {
				c.Close(websocket.StatusNormalClosure, "")
			}
		})
	}
}

func TestShellWithoutTheKeyIsRefused(t *testing.T) {
	h := newHarness(t)
	c, err := dialShell(t, h, "/ui/ws/sessions/sess_nano1/shell?step=2", h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(websocket.StatusNormalClosure, "")
	send(t, c, shellMsg{Type: "auth", Key: "wrong-key-0123456789"})
	msgs := readUntil(t, c, "error")
	mustContain(t, msgs[len(msgs)-1].Data, "missing or wrong API key")
	if h.api.forks != 0 {
		t.Error("a fork was made without the key")
	}
}

func TestNanoShellRunsInputsAsCellsOfAForkAndDiscardsIt(t *testing.T) {
	for _, keep := range []bool{false, true} {
		name := "closed discards the fork"
		if keep {
			name = "kept fork stays"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			c, err := dialShell(t, h, "/ui/ws/sessions/sess_nano1/shell?step=2", h.srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			send(t, c, shellMsg{Type: "auth", Key: testKey})
			ready := readUntil(t, c, "ready")
			if r := ready[len(ready)-1]; r.Session != "sess_fork1" || r.Prompt != ">>> " {
				t.Fatalf("ready %+v", r)
			}
			mustContain(t, strings.Join(h.api.called("POST /v1/sessions/sess_nano1/fork"), ""), `"step":2`)
			send(t, c, shellMsg{Type: "line", Data: "print(rows)"})
			out := readUntil(t, c, "prompt")
			mustContain(t, out[0].Data, "ran: print(rows)\r\n")
			// A block: continued after ":" until an empty line, then run as one cell.
			send(t, c, shellMsg{Type: "line", Data: "for i in rows:"})
			if p := readUntil(t, c, "prompt"); p[0].Prompt != "... " {
				t.Fatalf("continuation prompt %+v", p)
			}
			send(t, c, shellMsg{Type: "line", Data: "    print(i)"})
			readUntil(t, c, "prompt")
			send(t, c, shellMsg{Type: "line", Data: ""})
			readUntil(t, c, "output")
			readUntil(t, c, "prompt")
			// Ctrl+C drops an unfinished block: nothing of it runs.
			send(t, c, shellMsg{Type: "line", Data: "if True:"})
			readUntil(t, c, "prompt")
			send(t, c, shellMsg{Type: "interrupt"})
			if p := readUntil(t, c, "prompt"); p[len(p)-1].Prompt != ">>> " {
				t.Fatalf("prompt after interrupt %+v", p)
			}
			send(t, c, shellMsg{Type: "line", Data: "1/0"})
			out = readUntil(t, c, "prompt")
			mustContain(t, out[0].Data, "ZeroDivisionError: division by zero")
			if keep {
				send(t, c, shellMsg{Type: "keep"})
				if k := readUntil(t, c, "kept"); k[len(k)-1].Session != "sess_fork1" {
					t.Fatalf("kept %+v", k)
				}
			}
			c.Close(websocket.StatusNormalClosure, "")
			h.api.mu.Lock()
			cells := h.api.cells["sess_fork1"]
			h.api.mu.Unlock()
			if want := []string{"print(rows)", "for i in rows:\n    print(i)\n", "1/0"}; strings.Join(cells, "|") != strings.Join(want, "|") {
				t.Errorf("cells of the fork %q, want %q", cells, want)
			}
			if len(h.api.cells["sess_nano1"]) != 0 {
				t.Error("the shell ran cells in the session itself")
			}
			deadline := time.Now().Add(10 * time.Second)
			for len(h.api.called("DELETE /v1/sessions/sess_fork1")) == 0 && !keep && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if deleted := len(h.api.called("DELETE /v1/sessions/sess_fork1")) > 0; deleted == keep {
				t.Errorf("fork deleted=%v with keep=%v", deleted, keep)
			}
		})
	}
}

func TestHeavyShellRunsBashInAForkThroughCommands(t *testing.T) {
	h := newHarness(t)
	c, err := dialShell(t, h, "/ui/ws/sessions/sess_heavy2/shell?step=1", h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(websocket.StatusNormalClosure, "")
	send(t, c, shellMsg{Type: "auth", Key: testKey})
	if r := readUntil(t, c, "ready"); r[len(r)-1].Tier != "heavy" {
		t.Fatalf("ready %+v", r)
	}
	mustContain(t, strings.Join(h.api.called("POST /v1/sessions/sess_fork1/commands"), ""), `"cmd":"/bin/bash"`, `"background":true`)
	send(t, c, shellMsg{Type: "line", Data: "ls /output"})
	out := readUntil(t, c, "output")
	mustContain(t, out[len(out)-1].Data, "bash got ls /output\r\n")
	if p := readUntil(t, c, "prompt"); p[len(p)-1].Prompt != "$ " {
		t.Errorf("prompt %+v", p)
	}
	send(t, c, shellMsg{Type: "line", Data: "exit"})
	end := readUntil(t, c, "output")
	mustContain(t, end[len(end)-1].Data, "[bash exited, exit code 0]")
	h.api.mu.Lock()
	stdin := strings.Join(h.api.stdin, "")
	h.api.mu.Unlock()
	if stdin != "ls /output\nexit\n" {
		t.Errorf("stdin %q", stdin)
	}
}

func TestShellMessagesAreJSON(t *testing.T) {
	b, _ := json.Marshal(shellMsg{Type: "line", Data: "x"})
	if string(b) != `{"type":"line","data":"x"}` {
		t.Errorf("%s", b)
	}
}

func TestShellSaysWhatTheServerLacks(t *testing.T) {
	h := newHarness(t)
	h.api.noTimeTravel = true
	c, err := dialShell(t, h, "/ui/ws/sessions/sess_nano1/shell", h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(websocket.StatusNormalClosure, "")
	send(t, c, shellMsg{Type: "auth", Key: testKey})
	msgs := readUntil(t, c, "error")
	mustContain(t, msgs[len(msgs)-1].Data, "this server has no time travel")
}

func TestShellWaitsForABusySessionToFork(t *testing.T) {
	h := newHarness(t)
	h.api.busyForks = 2
	c, err := dialShell(t, h, "/ui/ws/sessions/sess_nano1/shell?step=1", h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(websocket.StatusNormalClosure, "")
	send(t, c, shellMsg{Type: "auth", Key: testKey})
	msgs := readUntil(t, c, "ready")
	if n := len(h.api.called("POST /v1/sessions/sess_nano1/fork")); n != 3 {
		t.Errorf("%d fork requests, want 3 (two busy, then the fork)", n)
	}
	mustContain(t, msgs[0].Data, "session busy, waiting to fork")
}

// TestGzippedLibrariesAreServedByEncoding: a library kept only as .gz (plotly) goes out compressed
// to a browser that accepts gzip and decompressed to one that does not, as JavaScript either way.
func TestGzippedLibrariesAreServedByEncoding(t *testing.T) {
	c, err := New(Config{API: http.NotFoundHandler()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, accept, wantEncoding string
	}{
		{"accepts gzip", "gzip, deflate, br", "gzip"},
		{"refuses gzip", "gzip;q=0, identity", ""},
		{"names no encoding", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/ui/static/vendor/plotly.min.js", nil)
			if tc.accept != "" {
				r.Header.Set("Accept-Encoding", tc.accept)
			}
			w := httptest.NewRecorder()
			c.ServeHTTP(w, r)
			if w.Code != 200 {
				t.Fatalf("status %d", w.Code)
			}
			if got := w.Header().Get("Content-Encoding"); got != tc.wantEncoding {
				t.Fatalf("Content-Encoding %q, want %q", got, tc.wantEncoding)
			}
			if ct := w.Header().Get("Content-Type"); !strings.Contains(ct, "javascript") {
				t.Fatalf("Content-Type %q", ct)
			}
			body := w.Body.Bytes()
			if tc.wantEncoding == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Contains(body[:min(len(body), 4096)], []byte("plotly")) || len(body) < 1<<20 {
				t.Fatalf("not plotly's script: %d bytes starting %q", len(body), body[:min(len(body), 80)])
			}
		})
	}
}
