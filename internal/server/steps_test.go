package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

// stepServer is a server with time travel on (a snapshot store) and the audit log, over the shared
// nano engine.
func stepServer(t *testing.T) (*httptest.Server, *audit.Log) {
	t.Helper()
	dir := t.TempDir()
	st, err := snapstore.Open(snapstore.Config{Dir: filepath.Join(dir, "snapshots")})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{Snapshots: st})
	l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(dir, "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(d, Config{APIKeys: []string{testKey}, MaxBodyBytes: 1 << 20, Audit: l})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		d.Close()
		st.Close()
		l.Close()
	})
	return hs, l
}

// waitSteps polls the step list until no snapshot is pending.
func waitSteps(t *testing.T, base, id string) api.StepList {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list := decodeInto[api.StepList](t, doAt(t, base, call{method: "GET", path: "/v1/sessions/" + id + "/steps"}, checkBoth))
		pending := false
		for _, s := range list.Steps {
			pending = pending || s.Snapshot.State == api.SnapshotPending
		}
		if !pending || time.Now().After(deadline) {
			return list
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStepEndpoints(t *testing.T) {
	hs, l := stepServer(t)
	base := hs.URL
	r := doAt(t, base, call{method: "POST", path: "/v1/sessions", body: mustJSON(api.SessionRequest{Tier: api.TierNano})}, checkBoth)
	if r.status != http.StatusCreated {
		t.Fatalf("%d %s", r.status, r.body)
	}
	id := decodeInto[api.Session](t, r).ID
	cell := func(code string) api.Result {
		t.Helper()
		r := doAt(t, base, call{method: "POST", path: "/v1/sessions/" + id + "/run", body: mustJSON(map[string]string{"code": code})}, checkBoth)
		if r.status != http.StatusOK {
			t.Fatalf("%d %s", r.status, r.body)
		}
		return decodeInto[api.Result](t, r)
	}
	cell("x = 1\nopen('/tmp/a.txt', 'w').write('one')") // 1
	if r := doAt(t, base, call{method: "PUT", path: "/v1/sessions/" + id + "/files/data.txt", body: []byte("up"), contentType: "application/octet-stream"}, checkBoth); r.status != http.StatusCreated {
		t.Fatalf("upload %d %s", r.status, r.body)
	}
	cell("x = 2\nprint(x)") // 3

	list := waitSteps(t, base, id)
	if len(list.Steps) != 4 || list.Current != 3 || list.Steps[2].Kind != api.StepUpload || list.Steps[3].StdoutHead != "2\n" {
		t.Fatalf("steps %+v", list)
	}
	for _, s := range list.Steps {
		if !s.Snapshot.Restorable {
			t.Fatalf("step %d not restorable: %+v", s.N, s.Snapshot)
		}
	}
	if info := decodeInto[api.Session](t, doAt(t, base, call{method: "GET", path: "/v1/sessions/" + id}, checkBoth)); info.Steps != 4 || info.CurrentStep != 3 {
		t.Fatalf("session %+v", info)
	}
	det := decodeInto[api.StepDetail](t, doAt(t, base, call{method: "GET", path: "/v1/sessions/" + id + "/steps/3"}, checkBoth))
	if det.N != 3 || det.Result == nil || det.Result.Stdout != "2\n" || det.Code != "x = 2\nprint(x)" {
		t.Fatalf("detail %+v", det)
	}

	// Rewind to step 1: x is 1 again, step 2's upload is not there, steps 2 and 3 are abandoned.
	r = doAt(t, base, call{method: "POST", path: "/v1/sessions/" + id + "/rewind", body: mustJSON(api.RewindRequest{Step: 1})}, checkBoth)
	if r.status != http.StatusOK || decodeInto[api.Session](t, r).CurrentStep != 4 {
		t.Fatalf("rewind %d %s", r.status, r.body)
	}
	if got := cell("import os\nprint(x, os.path.exists('/data.txt'), open('/tmp/a.txt').read())").Stdout; got != "1 False one\n" {
		t.Fatalf("after the rewind: %q", got)
	}
	list = waitSteps(t, base, id)
	if !list.Steps[2].Abandoned || !list.Steps[3].Abandoned || list.Steps[1].Abandoned || list.Steps[4].Kind != api.StepRewind || list.Steps[4].Target != 1 {
		t.Fatalf("after the rewind %+v", list.Steps)
	}

	// Fork from step 3: a new session with x == 2; the parent is untouched.
	r = doAt(t, base, call{method: "POST", path: "/v1/sessions/" + id + "/fork", body: mustJSON(api.ForkRequest{Step: 3, TTLSeconds: 60})}, checkBoth)
	if r.status != http.StatusCreated {
		t.Fatalf("fork %d %s", r.status, r.body)
	}
	fork := decodeInto[api.Session](t, r)
	if fork.ID == id || fork.TTLSeconds != 60 || r.header.Get("Location") != "/v1/sessions/"+fork.ID {
		t.Fatalf("fork %+v %v", fork, r.header)
	}
	fr := doAt(t, base, call{method: "POST", path: "/v1/sessions/" + fork.ID + "/run", body: mustJSON(map[string]string{"code": "print(x)"})}, checkBoth)
	if got := decodeInto[api.Result](t, fr).Stdout; got != "2\n" {
		t.Fatalf("fork's x: %q", got)
	}
	fl := waitSteps(t, base, fork.ID)
	if fl.Steps[0].Kind != api.StepFork || fl.Steps[0].ForkedFrom != id || fl.Steps[0].Target != 3 {
		t.Fatalf("fork's step 0 %+v", fl.Steps[0])
	}

	// Pin, and read a file as it was at step 1 (from its snapshot).
	if st := list.Steps[1].Snapshot; st.State != api.SnapshotStored || st.RestoreBy != api.RestoreBySnapshot {
		t.Fatalf("step 1 on nano: %+v, want a stored snapshot", st)
	}
	if pin := doAt(t, base, call{method: "POST", path: "/v1/sessions/" + id + "/steps/1/pin"}, checkBoth); pin.status != http.StatusNoContent {
		t.Fatalf("pin %d %s", pin.status, pin.body)
	}
	if !waitSteps(t, base, id).Steps[1].Pinned {
		t.Fatal("not pinned")
	}
	data := doAt(t, base, call{method: "GET", path: "/v1/sessions/" + id + "/steps/1/files/tmp/a.txt"}, checkNone)
	if data.status != http.StatusOK || string(data.body) != "one" {
		t.Fatalf("file at step 1: %d %q", data.status, data.body)
	}
	if r := doAt(t, base, call{method: "GET", path: "/v1/sessions/" + id + "/steps/1/files/data.txt"}, checkBoth); r.status != http.StatusNotFound {
		t.Fatalf("a file uploaded later, read at step 1: %d %s", r.status, r.body)
	}
	if r := doAt(t, base, call{method: "DELETE", path: "/v1/sessions/" + id + "/steps/1/pin"}, checkBoth); r.status != http.StatusNoContent {
		t.Fatalf("unpin %d %s", r.status, r.body)
	}

	// Bad input: a clear error, nothing changed.
	bad := []struct {
		name   string
		c      call
		mode   int
		status int
		msg    string
	}{
		{"no step", call{method: "POST", path: "/v1/sessions/" + id + "/rewind", body: []byte(`{}`)}, checkResponse, 400, "is required (GET .../steps lists them)"},
		{"negative step", call{method: "POST", path: "/v1/sessions/" + id + "/rewind", body: []byte(`{"step": -1}`)}, checkResponse, 404, "no step -1"},
		{"unknown field", call{method: "POST", path: "/v1/sessions/" + id + "/fork", body: []byte(`{"step": 1, "ttl": 5}`)}, checkResponse, 400, "unknown field"},
		{"step past the end", call{method: "GET", path: "/v1/sessions/" + id + "/steps/99"}, checkBoth, 404, "no step 99"},
		{"step not a number", call{method: "GET", path: "/v1/sessions/" + id + "/steps/x"}, checkResponse, 400, "want a step number"},
		{"unknown session", call{method: "GET", path: "/v1/sessions/ses_nope/steps"}, checkBoth, 404, "unknown id"},
		{"fork ttl too long", call{method: "POST", path: "/v1/sessions/" + id + "/fork", body: mustJSON(api.ForkRequest{Step: 1, TTLSeconds: 999999})}, checkBoth, 400, "ttl_s"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r := doAt(t, base, tc.c, tc.mode)
			if r.status != tc.status || !strings.Contains(string(r.body), tc.msg) {
				t.Fatalf("%d %s, want %d with %q", r.status, r.body, tc.status, tc.msg)
			}
		})
	}
	if got := waitSteps(t, base, id); len(got.Steps) != 6 {
		t.Fatalf("bad requests changed the log: %d steps", len(got.Steps))
	}

	// The audit log has the rewind, the fork and the pins.
	for _, typ := range []string{audit.TypeSessionRewind, audit.TypeSessionFork, audit.TypeStepPin} {
		evs, err := l.Search(context.Background(), audit.Query{Type: typ, Session: id})
		if err != nil || len(evs.Events) == 0 {
			t.Errorf("audit %s: %d events, %v", typ, len(evs.Events), err)
		}
	}
}
