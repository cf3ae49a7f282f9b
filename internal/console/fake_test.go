package console

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

const testKey = "console-test-key-0123"

// fakeAPI is the HTTP API as the console sees it: canned answers, the bearer key checked, every call
// recorded.
type fakeAPI struct {
	mu    sync.Mutex
	calls []string // "METHOD /path?query body", guarded by mu
	mux   *http.ServeMux
	// noTimeTravel answers the steps routes like a server without them.
	noTimeTravel bool
	// forks counts forks made; cells what ran in each session (guarded by mu).
	forks int
	// busyForks is how many fork requests answer 409 busy first.
	busyForks int
	cells     map[string][]string
	stdin     []string
	stdinCh   chan string // what stdin gets, for the follow
}

func newFakeAPI() *fakeAPI {
	f := &fakeAPI{mux: http.NewServeMux(), cells: map[string][]string{}, stdinCh: make(chan string, 16)}
	j := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(v)
	}
	sess := func(id string, tier api.Tier, cells int) api.Session {
		return api.Session{ID: id, Tier: tier, Cells: cells, TTLSeconds: 600, CreatedAt: "2026-12-01T10:00:00Z", LastUsedAt: "2026-12-01T10:01:00Z"}
	}
	fork9 := sess("sess_fork9", api.TierNano, 0)
	fork9.CreatedAt = "2026-12-01T10:05:00Z"
	f.mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		// steps and current_step, as a server with time travel adds them.
		type withSteps struct {
			api.Session
			Steps int `json:"steps"`
		}
		j(w, 200, map[string]any{"sessions": []withSteps{{sess("sess_nano1", api.TierNano, 4), 7}, {sess("sess_heavy2", api.TierHeavy, 1), 2}, {fork9, 1}}})
	})
	f.mux.HandleFunc("POST /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		j(w, 201, sess("sess_new", api.TierNano, 0))
	})
	f.mux.HandleFunc("GET /v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		switch id := r.PathValue("id"); id {
		case "sess_nano1", "sess_heavy2":
			tier := api.TierNano
			if id == "sess_heavy2" {
				tier = api.TierHeavy
			}
			j(w, 200, sess(id, tier, 4))
		default:
			j(w, 404, api.ErrorBody{Error: api.ErrorDetail{Code: "not_found", Message: "no session " + id}})
		}
	})
	f.mux.HandleFunc("DELETE /v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	f.mux.HandleFunc("GET /v1/sessions/{id}/steps", func(w http.ResponseWriter, r *http.Request) {
		if f.noTimeTravel {
			j(w, 404, api.ErrorBody{Error: api.ErrorDetail{Code: "not_found", Message: "no route for GET " + r.URL.Path}})
			return
		}
		if r.PathValue("id") == "sess_fork9" {
			j(w, 200, api.StepList{Session: "sess_fork9", Steps: []api.Step{{N: 0, Kind: api.StepFork, Parent: -1, ForkedFrom: "sess_nano1", Target: 2}}})
			return
		}
		j(w, 200, testSteps())
	})
	f.mux.HandleFunc("GET /v1/sessions/{id}/steps/{n}", func(w http.ResponseWriter, r *http.Request) {
		if f.noTimeTravel {
			j(w, 404, api.ErrorBody{Error: api.ErrorDetail{Code: "not_found", Message: "no route for GET " + r.URL.Path}})
			return
		}
		for _, s := range testSteps().Steps {
			if fmt.Sprint(s.N) == r.PathValue("n") {
				j(w, 200, testDetail(s))
				return
			}
		}
		j(w, 404, api.ErrorBody{Error: api.ErrorDetail{Code: "not_found", Message: "no step " + r.PathValue("n")}})
	})
	f.mux.HandleFunc("GET /v1/sessions/{id}/steps/{n}/files/{path...}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "at step "+r.PathValue("n")+": /"+r.PathValue("path"))
	})
	f.mux.HandleFunc("POST /v1/sessions/{id}/rewind", func(w http.ResponseWriter, r *http.Request) {
		j(w, 200, sess(r.PathValue("id"), api.TierNano, 4))
	})
	f.mux.HandleFunc("POST /v1/sessions/{id}/fork", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		if f.busyForks > 0 {
			f.busyForks--
			f.mu.Unlock()
			j(w, 409, api.ErrorBody{Error: api.ErrorDetail{Code: "conflict", Message: "session is busy with another request"}})
			return
		}
		f.forks++
		n := f.forks
		f.mu.Unlock()
		tier := api.TierNano
		if r.PathValue("id") == "sess_heavy2" {
			tier = api.TierHeavy
		}
		j(w, 201, sess(fmt.Sprintf("sess_fork%d", n), tier, 0))
	})
	f.mux.HandleFunc("POST /v1/sessions/{id}/steps/{n}/pin", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	f.mux.HandleFunc("DELETE /v1/sessions/{id}/steps/{n}/pin", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	f.mux.HandleFunc("POST /v1/sessions/{id}/run", func(w http.ResponseWriter, r *http.Request) {
		var body api.SessionRunRequest
		json.NewDecoder(r.Body).Decode(&body)
		f.mu.Lock()
		f.cells[r.PathValue("id")] = append(f.cells[r.PathValue("id")], body.Code)
		f.mu.Unlock()
		res := api.Result{Stdout: "ran: " + body.Code + "\n", Tier: api.TierNano, Results: []api.Output{}}
		if strings.Contains(body.Code, "1/0") {
			res.Error = &api.Error{Type: "ZeroDivisionError", Message: "division by zero", Traceback: "Traceback (most recent call last):\nZeroDivisionError: division by zero\n"}
			res.Stderr = res.Error.Traceback
			res.ExitCode = 1
		}
		if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			j(w, 200, res)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		ev := func(name string, v any) {
			b, _ := json.Marshal(v)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b)
		}
		ev("stdout", map[string]string{"text": "streamed <b>text</b>\n"})
		svg := api.Output{Type: api.OutputDisplayData, Data: map[string]json.RawMessage{"image/svg+xml": json.RawMessage(`"<svg xmlns='http://www.w3.org/2000/svg'/>"`)}}
		ev("output", svg)
		res.Results = []api.Output{svg}
		ev("result", res)
	})
	f.mux.HandleFunc("GET /v1/sessions/{id}/files", func(w http.ResponseWriter, r *http.Request) {
		j(w, 200, api.FileList{Dir: r.URL.Query().Get("dir"), Files: []api.FileInfo{
			{Name: "data.csv", Path: "/home/user/data.csv", Size: 20}, {Name: "sub", Path: "/home/user/sub", IsDir: true}}})
	})
	files := map[string][]byte{
		"home/user/data.csv":  []byte("a,b\n1,<x>\n"),
		"home/user/notes.txt": []byte("hello <notes>"),
		"home/user/p.png":     {0x89, 'P', 'N', 'G'},
		"home/user/blob.bin":  {0xff, 0xfe, 0x00},
	}
	f.mux.HandleFunc("GET /v1/sessions/{id}/files/{path...}", func(w http.ResponseWriter, r *http.Request) {
		data, ok := files[r.PathValue("path")]
		if !ok {
			j(w, 404, api.ErrorBody{Error: api.ErrorDetail{Code: "not_found", Message: "no file /" + r.PathValue("path")}})
			return
		}
		w.Write(data)
	})
	f.mux.HandleFunc("PUT /v1/sessions/{id}/files/{path...}", func(w http.ResponseWriter, r *http.Request) {
		j(w, 201, api.FileInfo{Path: "/" + r.PathValue("path")})
	})
	f.mux.HandleFunc("GET /v1/audit/events", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("type") == "bogus" {
			j(w, 400, api.ErrorBody{Error: api.ErrorDetail{Code: "invalid_argument", Message: "unknown event type \"bogus\""}})
			return
		}
		ev := api.AuditEvent{Seq: 7, Type: q.Get("type"), Session: q.Get("session"), Verdict: "block", Actor: "key_x", Time: "2026-12-01T10:00:00Z",
			Details: map[string]any{"host": "evil.example", "detectors": []string{"aws_access_key"}}}
		if ev.Type == "" {
			ev.Type = "run"
		}
		j(w, 200, api.AuditEventList{Events: []api.AuditEvent{ev}, NextCursor: "c2"})
	})
	f.mux.HandleFunc("GET /v1/audit/reports/{period}", func(w http.ResponseWriter, r *http.Request) {
		j(w, 200, api.AuditReport{Period: r.PathValue("period"), Events: 12, ByType: []api.AuditCount{{Key: "run", Count: 9}},
			DLPFindings: []api.AuditCount{{Key: "aws_access_key", Count: 2}}, Verification: api.AuditVerification{OK: true, Events: 12}})
	})
	f.mux.HandleFunc("POST /v1/sessions/{id}/commands", func(w http.ResponseWriter, r *http.Request) {
		j(w, 200, api.Command{PID: 42, Cmd: "/bin/bash", State: api.CommandRunning})
	})
	f.mux.HandleFunc("POST /v1/sessions/{id}/commands/{pid}/stdin", func(w http.ResponseWriter, r *http.Request) {
		var in api.CommandInput
		json.NewDecoder(r.Body).Decode(&in)
		f.mu.Lock()
		f.stdin = append(f.stdin, in.Data)
		f.mu.Unlock()
		f.stdinCh <- in.Data
		w.WriteHeader(204)
	})
	// A follow: each line written to stdin comes back as stdout; "exit" ends the command.
	f.mux.HandleFunc("GET /v1/sessions/{id}/commands/{pid}", func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			j(w, 200, api.Command{PID: 42, State: api.CommandRunning})
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for {
			select {
			case l := <-f.stdinCh:
				if l == "exit\n" {
					b, _ := json.Marshal(api.Command{PID: 42, State: api.CommandExited})
					fmt.Fprintf(w, "event: result\ndata: %s\n\n", b)
					return
				}
				b, _ := json.Marshal(map[string]string{"text": "bash got " + l})
				if _, err := fmt.Fprintf(w, "event: stdout\ndata: %s\n\n", b); err != nil {
					return
				}
			case <-r.Context().Done():
				return
			}
		}
	})
	return f
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(strings.NewReader(string(body)))
	f.mu.Lock()
	f.calls = append(f.calls, strings.TrimSpace(r.Method+" "+r.URL.RequestURI()+" "+string(body)))
	f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+testKey {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: "unauthenticated", Message: "missing or wrong API key"}})
		return
	}
	f.mux.ServeHTTP(w, r)
}

func (f *fakeAPI) called(prefix string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// testSteps: 0 start, 1-3 cells, 4 an abandoned cell after 3, 5 a rewind to 2, 6 a cell on the new line.
func testSteps() api.StepList {
	st := api.StepSnapshot{State: api.SnapshotStored, Restorable: true, RestoreOn: api.TierNano, RestoreBy: api.RestoreBySnapshot}
	return api.StepList{Session: "sess_nano1", Current: 7, Steps: []api.Step{
		{N: 0, Kind: api.StepStart, Parent: -1, Tier: api.TierNano, Snapshot: st},
		{N: 1, Kind: api.StepCell, Parent: 0, Tier: api.TierNano, Code: "x = 1", DurationMS: 1.5, Snapshot: st},
		{N: 2, Kind: api.StepCell, Parent: 1, Tier: api.TierNano, Code: "import json\nrows = [1, 2]", Snapshot: st},
		{N: 3, Kind: api.StepCell, Parent: 2, Tier: api.TierNano, Code: "1/0", ErrorType: "ZeroDivisionError", ExitCode: 1, Snapshot: st, Abandoned: true},
		{N: 4, Kind: api.StepCell, Parent: 3, Tier: api.TierNano, Code: "y = 2", Snapshot: st, Abandoned: true},
		{N: 5, Kind: api.StepRewind, Parent: 2, Target: 2, Tier: api.TierNano, Snapshot: st},
		{N: 6, Kind: api.StepCell, Parent: 5, Tier: api.TierNano, Code: "print('<b>')", Snapshot: st, Pinned: true},
		{N: 7, Kind: api.StepCommand, Parent: 6, Tier: api.TierNano, Code: "ls -l /tmp # not python", Snapshot: st},
	}}
}

func testDetail(s api.Step) api.StepDetail {
	res := &api.Result{Stdout: "out of step <" + fmt.Sprint(s.N) + ">\n", Tier: api.TierNano, Results: []api.Output{
		{Type: api.OutputExecuteResult, IsMainResult: true, Data: map[string]json.RawMessage{"text/plain": json.RawMessage(`"[1, 2]"`), "application/json": json.RawMessage(`[1,2]`)}},
	}}
	if s.ErrorType != "" {
		res.Error = &api.Error{Type: s.ErrorType, Message: "division by zero", Traceback: "Traceback (most recent call last):\n  File \"<cell>\", line 1\nZeroDivisionError: division by zero\n"}
	}
	return api.StepDetail{Step: s, Result: res,
		Variables: []api.Variable{{Name: "rows", Type: "list", Kind: "value", Repr: "[1, 2]", Size: 72}, {Name: "json", Type: "module", Kind: "module", Repr: "<module 'json'>"}},
		Files:     []api.FileInfo{{Name: "notes.txt", Path: "/home/user/notes.txt", Size: 13}}}
}

// harness is a console over a fake API behind an httptest server.
type harness struct {
	t   *testing.T
	api *fakeAPI
	srv *httptest.Server
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	f := newFakeAPI()
	c, err := New(Config{API: f})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return &harness{t: t, api: f, srv: srv}
}

type req struct {
	method, path string
	body         string
	ctype        string
	key          string // "" means testKey, "-" none
	header       map[string]string
}

func (h *harness) do(q req) (int, http.Header, string) {
	h.t.Helper()
	if q.method == "" {
		q.method = http.MethodGet
	}
	r, err := http.NewRequest(q.method, h.srv.URL+q.path, strings.NewReader(q.body))
	if err != nil {
		h.t.Fatal(err)
	}
	switch q.key {
	case "":
		r.Header.Set("Authorization", "Bearer "+testKey)
	case "-":
	default:
		r.Header.Set("Authorization", "Bearer "+q.key)
	}
	if q.method != http.MethodGet {
		r.Header.Set(consoleHeader, "1")
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if q.ctype != "" {
		r.Header.Set("Content-Type", q.ctype)
	}
	for k, v := range q.header {
		if v == "" {
			r.Header.Del(k)
			continue
		}
		r.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}
