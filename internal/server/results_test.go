package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

// TestRunResults: /v1/run answers results (REPL semantics unless script), within the contract, and
// never null; the caps and figure_svg are accepted request fields.
func TestRunResults(t *testing.T) {
	code := "display({'text/markdown': '# t', 'text/plain': 't'}, raw=True)\n1 + 1"
	cases := []struct {
		name  string
		body  string
		mains []string // text/plain of each output
		main  bool
	}{
		{name: "REPL by default", body: fmt.Sprintf(`{"code": %q}`, code), mains: []string{"t", "2"}, main: true},
		{name: "script semantics", body: fmt.Sprintf(`{"code": %q, "script": true}`, code), mains: []string{"t"}},
		{name: "no outputs is an empty list", body: `{"code": "x = 1"}`},
		{name: "caps and svg accepted", body: fmt.Sprintf(`{"code": %q, "max_result_bytes": 4096, "max_results_bytes": 65536, "figure_svg": true}`, code), mains: []string{"t", "2"}, main: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, call{method: "POST", path: "/v1/run", body: []byte(tc.body)}, checkBoth)
			if r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if !strings.Contains(string(r.body), `"results":[`) {
				t.Fatalf("no results list: %s", r.body)
			}
			res := decodeInto[api.RunResponse](t, r)
			var texts []string
			for _, o := range res.Results {
				texts = append(texts, o.Text())
			}
			if fmt.Sprint(texts) != fmt.Sprint(tc.mains) || (res.MainResult() != nil) != tc.main {
				t.Fatalf("outputs %q, main %v", texts, res.MainResult())
			}
		})
	}
	r := do(t, call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "max_result_bytes": -1}`)}, checkResponse)
	wantError(t, r, 400, "invalid_argument", "max_result_bytes is negative")
}

// TestSessionCellResults: a session cell answers its outputs (REPL semantics), within the contract.
func TestSessionCellResults(t *testing.T) {
	r := do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{"max_result_bytes": 100000}`)}, checkBoth)
	if r.status != 201 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	base := "/v1/sessions/" + decodeInto[api.Session](t, r).ID
	defer do(t, call{method: "DELETE", path: base}, checkBoth)
	for i, c := range []struct{ code, main string }{{"x = 6", ""}, {"x * 7", "42"}, {"x;", ""}} {
		r := do(t, call{method: "POST", path: base + "/run", body: mustJSON(api.SessionRunRequest{Code: c.code})}, checkBoth)
		res := decodeInto[api.Result](t, r)
		got := ""
		if m := res.MainResult(); m != nil {
			got = m.Text()
		}
		if r.status != 200 || got != c.main || res.Results == nil {
			t.Fatalf("cell %d: %d, main %q, want %q", i, r.status, got, c.main)
		}
	}
}

// TestStreamingOutputs: output events come in order with stdout and stderr events, each an
// Output, and the result event lists the same outputs.
func TestStreamingOutputs(t *testing.T) {
	code := "import sys\nprint('a', flush=True)\ndisplay(1)\nprint('b', file=sys.stderr)\ndisplay(2)\nprint('c')\n3"
	body := fmt.Sprintf(`{"code": %q}`, code)
	for _, path := range []string{"/v1/run", "session"} {
		t.Run(path, func(t *testing.T) {
			if path == "session" {
				r := do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{}`)}, checkBoth)
				path = "/v1/sessions/" + decodeInto[api.Session](t, r).ID + "/run"
			}
			req, _ := http.NewRequest("POST", ts.URL+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+testKey)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "text/event-stream")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var seq []string
			var result api.Result
			var event string
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				line := sc.Text()
				switch {
				case strings.HasPrefix(line, "event: "):
					event = line[7:]
				case strings.HasPrefix(line, "data: "):
					data := []byte(line[6:])
					switch event {
					case "stdout", "stderr":
						var c struct{ Text string }
						json.Unmarshal(data, &c)
						seq = append(seq, event+":"+strings.TrimSpace(c.Text))
					case "output":
						var o api.Output
						if err := json.Unmarshal(data, &o); err != nil || o.Type == "" {
							t.Fatalf("output event %s: %v", data, err)
						}
						seq = append(seq, o.Type+":"+o.Text())
					case "result":
						json.Unmarshal(data, &result)
						seq = append(seq, "result")
					}
				}
			}
			want := "[stdout:a display_data:1 stderr:b display_data:2 stdout:c execute_result:3 result]"
			if fmt.Sprint(seq) != want {
				t.Fatalf("events %v\nwant   %s", seq, want)
			}
			if len(result.Results) != 3 || result.MainResult().Text() != "3" {
				t.Fatalf("result lists %d outputs", len(result.Results))
			}
		})
	}
}
