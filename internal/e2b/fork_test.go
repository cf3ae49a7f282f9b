package e2b

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

// timeTravel is a Handler over a dispatcher with a snapshot store, as `agentbox serve` has.
func timeTravel(t *testing.T) *httptest.Server {
	t.Helper()
	st, err := snapstore.Open(snapstore.Config{Dir: filepath.Join(t.TempDir(), "snapshots")})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{Snapshots: st})
	h := New(FromDispatch(d), Config{Authenticate: testAuth})
	ts := httptest.NewServer(h)
	t.Cleanup(func() { ts.Close(); h.Close(); d.Close(); st.Close() })
	return ts
}

func mainText(t *testing.T, sb created, code string) any {
	t.Helper()
	res := ofType(execLines(t, sb, map[string]any{"code": code}), "result")
	if len(res) != 1 {
		t.Fatalf("results of %q: %v", code, res)
	}
	return res[0]["text"]
}

func TestForkIsTimeTravel(t *testing.T) {
	ts := timeTravel(t)
	parent := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "metadata": map[string]string{"m": "1"}})
	execLines(t, parent, map[string]any{"code": "x = 41"})
	r := do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+parent.SandboxID+"/fork", apiKey(keyAlice), map[string]any{"count": 2, "timeout": 60})
	var results []forkResult
	r.json(t, &results)
	if r.status != 200 || len(results) != 2 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for i, res := range results {
		if res.Sandbox == nil || res.Sandbox.SandboxID == parent.SandboxID || res.Sandbox.EnvdAccessToken == "" {
			t.Fatalf("fork %d: %+v", i, res)
		}
		child := created{*res.Sandbox, ts}
		if got := mainText(t, child, "x + 1"); got != "42" {
			t.Fatalf("fork %d has x+1 = %v", i, got)
		}
		execLines(t, child, map[string]any{"code": "x = 0"})
	}
	// The forks went their own way; the parent is untouched.
	if got := mainText(t, parent, "x"); got != "41" {
		t.Fatalf("parent x = %v", got)
	}
	t.Run("count out of range", func(t *testing.T) {
		do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+parent.SandboxID+"/fork", apiKey(keyAlice), map[string]any{"count": 100}).e2bError(t, 400, "count 100")
	})
	t.Run("another tenant's sandbox", func(t *testing.T) {
		do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+parent.SandboxID+"/fork", apiKey(keyBob), map[string]any{}).e2bError(t, 404, "not found")
	})
}

func TestSnapshotsArePinnedSteps(t *testing.T) {
	ts := timeTravel(t)
	src := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	execLines(t, src, map[string]any{"code": "v = 'saved'"})
	r := do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+src.SandboxID+"/snapshots", apiKey(keyAlice), map[string]any{"name": "after-v"})
	var snap struct {
		SnapshotID string   `json:"snapshotID"`
		Names      []string `json:"names"`
	}
	r.json(t, &snap)
	if r.status != http.StatusCreated || snap.SnapshotID == "" || len(snap.Names) != 1 || snap.Names[0] != "after-v" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+src.SandboxID+"/snapshots", apiKey(keyAlice), map[string]any{"name": "after-v"}).e2bError(t, 409, "exists")
	execLines(t, src, map[string]any{"code": "v = 'changed later'"})
	// The snapshot outlives its sandbox: its step is pinned in the store.
	do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+src.SandboxID, apiKey(keyAlice), nil)
	for _, ref := range []string{snap.SnapshotID, "after-v"} {
		t.Run("create from "+ref, func(t *testing.T) {
			sb := create(t, ts, keyAlice, map[string]any{"templateID": ref})
			if got := mainText(t, sb, "v"); got != "saved" {
				t.Fatalf("v = %v", got)
			}
		})
	}
	t.Run("list", func(t *testing.T) {
		var list []map[string]any
		do(t, "GET", ts.URL+APIPrefix+"/snapshots?sandboxID="+src.SandboxID, apiKey(keyAlice), nil).json(t, &list)
		if len(list) != 1 || list[0]["snapshotID"] != snap.SnapshotID {
			t.Fatalf("%v", list)
		}
		do(t, "GET", ts.URL+APIPrefix+"/snapshots", apiKey(keyBob), nil).json(t, &list)
		if len(list) != 0 {
			t.Fatalf("another tenant lists %v", list)
		}
	})
	t.Run("another tenant cannot start from it", func(t *testing.T) {
		do(t, "POST", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(keyBob), map[string]any{"templateID": snap.SnapshotID}).e2bError(t, 400, "not known")
	})
	t.Run("deleting one of two snapshots of a step keeps the other usable", func(t *testing.T) {
		live := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
		execLines(t, live, map[string]any{"code": "w = 'twice'"})
		var a, b struct {
			SnapshotID string `json:"snapshotID"`
		}
		do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+live.SandboxID+"/snapshots", apiKey(keyAlice), map[string]any{}).json(t, &a)
		do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+live.SandboxID+"/snapshots", apiKey(keyAlice), map[string]any{}).json(t, &b)
		do(t, "DELETE", ts.URL+APIPrefix+"/sandboxes/"+live.SandboxID, apiKey(keyAlice), nil)
		do(t, "DELETE", ts.URL+APIPrefix+"/templates/"+a.SnapshotID, apiKey(keyAlice), nil)
		if got := mainText(t, create(t, ts, keyAlice, map[string]any{"templateID": b.SnapshotID}), "w"); got != "twice" {
			t.Fatalf("w = %v", got)
		}
	})
	t.Run("delete", func(t *testing.T) {
		if r := do(t, "DELETE", ts.URL+APIPrefix+"/templates/"+snap.SnapshotID, apiKey(keyAlice), nil); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		do(t, "DELETE", ts.URL+APIPrefix+"/templates/"+snap.SnapshotID, apiKey(keyAlice), nil).e2bError(t, 404, "not found")
		do(t, "POST", ts.URL+APIPrefix+"/v2/sandboxes", apiKey(keyAlice), map[string]any{"templateID": snap.SnapshotID}).e2bError(t, 400, "not known")
	})
}

func TestSnapshotsNeedTimeTravel(t *testing.T) {
	_, ts := newServer(t, Config{}) // the shared dispatcher has no snapshot store
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1"})
	do(t, "POST", ts.URL+APIPrefix+"/sandboxes/"+sb.SandboxID+"/snapshots", apiKey(keyAlice), map[string]any{}).e2bError(t, 409, "time travel is off")
}
