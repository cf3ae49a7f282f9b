package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/cluster"
)

// js is a JetStream client of the fleet's NATS, to look at what replication stored.
func (f *fleet) js() jetstream.JetStream {
	f.t.Helper()
	nc, err := nats.Connect(strings.Join(f.urls, ","))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	return js
}

// headStep is the step of session id's replica, -1 when it has none.
func headStep(t testing.TB, js jetstream.JetStream, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	obs, err := js.ObjectStore(ctx, cluster.HeadsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(info.Metadata["step"])
	return n
}

// blockCount is how many blocks of session id the blocks stream holds.
func blockCount(t testing.TB, js jetstream.JetStream, id string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, cluster.BlocksStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter("agentbox.blocks."+id+".>"))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// newSessionOn starts a session placed on host name through h and returns its id.
func newSessionOn(t testing.TB, h *host, name string) string {
	t.Helper()
	a := call(t, h, "POST", "/v1/sessions", userKey, api.SessionRequest{}, cluster.HeaderLabels, "name="+name)
	if a.status >= 300 || a.host != name {
		t.Fatalf("create on %s: %d from %s: %s", name, a.status, a.host, a.body)
	}
	return decode[api.Session](t, a).ID
}

func runCell(t testing.TB, h *host, id, code string) answer {
	t.Helper()
	a := call(t, h, "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: code})
	if a.status != 200 {
		t.Fatalf("cell %q via %s: %d %s", code, h.id, a.status, a.body)
	}
	return a
}

func putFile(t testing.TB, h *host, id, path, content string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", h.ts.URL+"/v1/sessions/"+id+"/files/"+path, strings.NewReader(content))
	req.Header.Set("Authorization", "Bearer "+userKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("put %s via %s: %d", path, h.id, resp.StatusCode)
	}
}

// currentStep is the step session id's state is at, asked through h.
func currentStep(t testing.TB, h *host, id string) int {
	t.Helper()
	return decode[api.StepList](t, call(t, h, "GET", "/v1/sessions/"+id+"/steps", userKey, nil)).Current
}

func waitReplicated(t testing.TB, js jetstream.JetStream, id string, step int) {
	t.Helper()
	waitFor(t, 90*time.Second, "session "+id+" to be replicated up to step "+strconv.Itoa(step), func() bool { return headStep(t, js, id) >= step })
}

func sessionHost(t testing.TB, js jetstream.JetStream, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.SessionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Host string `json:"host"`
	}
	json.Unmarshal(e.Value(), &rec)
	return rec.Host
}

func TestFleetRestoresDeadHostsSessions(t *testing.T) {
	f := newFleet(t, 3, hostOpts{replicate: true})
	js := f.js()
	h0, h1, h2 := f.hosts[0], f.hosts[1], f.hosts[2]

	// Sessions on h1: one replicated to its last step; one whose last steps h1 committed but had
	// not sent when it died (its marker is ahead of its head); one with no replica at all; one
	// closed before the kill.
	full := newSessionOn(t, h0, "h1")
	runCell(t, h0, full, "x = 41")
	putFile(t, h2, full, "data.txt", "kept across hosts")
	waitReplicated(t, js, full, currentStep(t, h0, full))

	behind := newSessionOn(t, h0, "h1")
	runCell(t, h0, behind, "y = 1")
	last := currentStep(t, h0, behind)
	waitReplicated(t, js, behind, last)
	// What a host dying between committing two steps and sending them leaves: a marker two steps
	// ahead of the head.
	ctx := context.Background()
	marks, err := js.KeyValue(ctx, cluster.MarksBucket)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"step": last + 2, "host": "h1"})
	if _, err := marks.Put(ctx, behind, b); err != nil {
		t.Fatal(err)
	}

	headless := newSessionOn(t, h0, "h1")
	waitReplicated(t, js, headless, 0)
	obs, err := js.ObjectStore(ctx, cluster.HeadsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(ctx, headless); err != nil {
		t.Fatal(err)
	}

	closed := newSessionOn(t, h0, "h1")
	runCell(t, h0, closed, "z = 3")
	waitReplicated(t, js, closed, currentStep(t, h0, closed))
	if d := call(t, h0, "DELETE", "/v1/sessions/"+closed, userKey, nil); d.status >= 300 {
		t.Fatalf("delete: %d %s", d.status, d.body)
	}
	waitFor(t, 10*time.Second, "the closed session's replica to be deleted", func() bool {
		return headStep(t, js, closed) == -1 && blockCount(t, js, closed) == 0
	})

	h1.kill()
	waitFor(t, 10*time.Second, "h1 to leave the fleet", func() bool { return len(h0.node.Hosts(ctx).Hosts) == 2 })

	t.Run("a replicated session answers from another host at its last step", func(t *testing.T) {
		r := runCell(t, h0, full, "print(x + 1)")
		if got := decode[api.RunResponse](t, r).Stdout; got != "42\n" {
			t.Fatalf("print(x + 1) after the restore: %q", got)
		}
		if r.host == "h1" {
			t.Fatal("answered by the dead host")
		}
		if got := r.header.Get(cluster.HeaderRestoredFrom); !strings.HasPrefix(got, "h1; step=") || !strings.HasSuffix(got, "; lost=0") {
			t.Fatalf("%s: %q", cluster.HeaderRestoredFrom, got)
		}
		g := call(t, h2, "GET", "/v1/sessions/"+full+"/files/data.txt", userKey, nil)
		if g.status != 200 || string(g.body) != "kept across hosts" {
			t.Fatalf("the file after the restore: %d %q", g.status, g.body)
		}
		if host := sessionHost(t, js, full); host != r.host || (host != "h0" && host != "h2") {
			t.Fatalf("the sessions bucket says %s, the cell ran on %s", host, r.host)
		}
		// Later requests are not restores: no header.
		if r := runCell(t, h2, full, "x += 1"); r.header.Get(cluster.HeaderRestoredFrom) != "" {
			t.Fatalf("a second request restored again: %q", r.header.Get(cluster.HeaderRestoredFrom))
		}
	})
	t.Run("the steps list shows the restore", func(t *testing.T) {
		l := decode[api.StepList](t, call(t, h0, "GET", "/v1/sessions/"+full+"/steps", userKey, nil))
		var restores []api.Step
		for _, s := range l.Steps {
			if s.Kind == api.StepRestore {
				restores = append(restores, s)
			}
		}
		if len(restores) != 1 || restores[0].RestoredFrom != "h1" || restores[0].Lost != 0 || !restores[0].Snapshot.Restorable {
			t.Fatalf("restore steps: %+v", restores)
		}
		before := l.Steps[restores[0].Target]
		if before.Kind != api.StepUpload || before.Snapshot.Restorable || !strings.Contains(before.Snapshot.Reason, "h1") {
			t.Fatalf("the step restored from is listed as %+v", before)
		}
	})
	t.Run("steps run after the replica are reported lost", func(t *testing.T) {
		r := call(t, h2, "GET", "/v1/sessions/"+behind, userKey, nil)
		if r.status != 200 || r.header.Get(cluster.HeaderRestoredFrom) != "h1; step="+strconv.Itoa(last)+"; lost=2" {
			t.Fatalf("%d %s: %q", r.status, r.body, r.header.Get(cluster.HeaderRestoredFrom))
		}
		l := decode[api.StepList](t, call(t, h2, "GET", "/v1/sessions/"+behind+"/steps", userKey, nil))
		if s := l.Steps[l.Current]; s.Kind != api.StepRestore || s.Lost != 2 || s.Target != last {
			t.Fatalf("the restore step: %+v", s)
		}
		if got := decode[api.RunResponse](t, runCell(t, h0, behind, "print(y)")).Stdout; got != "1\n" {
			t.Fatalf("print(y): %q", got)
		}
	})
	t.Run("a session without a replica is gone with the reason", func(t *testing.T) {
		g := call(t, h0, "GET", "/v1/sessions/"+headless, userKey, nil)
		if g.status != 404 || !strings.Contains(string(g.body), "its host h1 left the fleet") || !strings.Contains(string(g.body), "no replica") {
			t.Fatalf("%d %s", g.status, g.body)
		}
	})
	t.Run("a session closed before the kill is not found", func(t *testing.T) {
		if g := call(t, h0, "GET", "/v1/sessions/"+closed, userKey, nil); g.status != 404 {
			t.Fatalf("%d %s", g.status, g.body)
		}
	})
}

func TestFleetConcurrentRequestsRestoreOnce(t *testing.T) {
	f := newFleet(t, 3, hostOpts{replicate: true})
	js := f.js()
	id := newSessionOn(t, f.hosts[0], "h1")
	runCell(t, f.hosts[0], id, "x = 41")
	waitReplicated(t, js, id, currentStep(t, f.hosts[0], id))
	f.hosts[1].kill()
	waitFor(t, 10*time.Second, "h1 to leave the fleet", func() bool {
		return len(f.hosts[0].node.Hosts(context.Background()).Hosts) == 2 && len(f.hosts[2].node.Hosts(context.Background()).Hosts) == 2
	})
	// Through two hosts, so that each places its own restore and the compare-and-set on the
	// session's record decides; and twice through one, which waits for its first.
	via := []*host{f.hosts[0], f.hosts[2], f.hosts[0], f.hosts[2]}
	answers := make([]answer, len(via))
	var wg sync.WaitGroup
	for i, h := range via {
		wg.Go(func() {
			answers[i] = call(t, h, "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: "print(x + 1)"})
		})
	}
	wg.Wait()
	for i, a := range answers {
		// Two cells at once in one session: one may be refused as busy, none may fail otherwise.
		if a.status == 409 && strings.Contains(string(a.body), "busy") {
			continue
		}
		if a.status != 200 || decode[api.RunResponse](t, a).Stdout != "42\n" {
			t.Fatalf("request %d via %s: %d %s", i, via[i].id, a.status, a.body)
		}
	}
	owner := sessionHost(t, js, id)
	open := 0
	for _, h := range []*host{f.hosts[0], f.hosts[2]} {
		if g := call(t, h, "GET", "/v1/sessions/"+id, userKey, nil, cluster.HeaderForwarded, "test"); g.status == 200 {
			open++
			if h.id != owner {
				t.Fatalf("open on %s, the record says %s", h.id, owner)
			}
		}
	}
	l := decode[api.StepList](t, call(t, f.hosts[0], "GET", "/v1/sessions/"+id+"/steps", userKey, nil))
	restores := 0
	for _, s := range l.Steps {
		if s.Kind == api.StepRestore {
			restores++
		}
	}
	if open != 1 || restores != 1 {
		t.Fatalf("open on %d hosts, %d restore steps", open, restores)
	}
}

func TestFleetReplicationDedupsUnchangedBlocks(t *testing.T) {
	f := newFleet(t, 1, hostOpts{replicate: true})
	js := f.js()
	h := f.hosts[0]
	id := newSessionOn(t, h, "h0")
	waitReplicated(t, js, id, 0)
	first := h.node.ReplicationStats().Bytes
	var steps []int64
	for _, code := range []string{"x = 1", "x = 2", "x = 3"} {
		before := h.node.ReplicationStats().Bytes
		runCell(t, h, id, code)
		waitReplicated(t, js, id, currentStep(t, h, id))
		steps = append(steps, h.node.ReplicationStats().Bytes-before)
	}
	t.Logf("step 0 sent %d bytes, the cells %v", first, steps)
	for i, b := range steps {
		if b*10 > first {
			t.Fatalf("cell %d changing one variable sent %d bytes, the first step %d: unchanged blocks were sent again", i+1, b, first)
		}
	}
}

// A host taken for dead (its heartbeats late) whose session another host restored must leave that
// host's replica and record alone: here h1 is alive, and the record is made to name h0.
func TestFleetHostTakenForDeadLeavesTheReplicaAlone(t *testing.T) {
	f := newFleet(t, 2, hostOpts{replicate: true})
	js := f.js()
	h1 := f.hosts[1]
	id := newSessionOn(t, f.hosts[0], "h1")
	runCell(t, f.hosts[0], id, "x = 1")
	replicated := currentStep(t, f.hosts[0], id)
	waitReplicated(t, js, id, replicated)
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, cluster.SessionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	json.Unmarshal(e.Value(), &rec)
	rec["host"] = "h0"
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(ctx, id, b); err != nil {
		t.Fatal(err)
	}
	// Straight to h1 (marked forwarded, so it is served there): a step, then the close.
	local := func(method, path string, body any) answer {
		return call(t, h1, method, path, userKey, body, cluster.HeaderForwarded, "h0")
	}
	if a := local("POST", "/v1/sessions/"+id+"/run", api.SessionRunRequest{Code: "x = 2"}); a.status != 200 {
		t.Fatalf("cell on h1: %d %s", a.status, a.body)
	}
	waitFor(t, 10*time.Second, "h1 to try sending the step", func() bool { return h1.node.ReplicationStats().Failed > 0 })
	t.Run("its later steps do not overwrite the head", func(t *testing.T) {
		if got := headStep(t, js, id); got != replicated {
			t.Fatalf("head at step %d, was %d", got, replicated)
		}
	})
	if a := local("DELETE", "/v1/sessions/"+id, nil); a.status >= 300 {
		t.Fatalf("delete on h1: %d %s", a.status, a.body)
	}
	waitFor(t, 10*time.Second, "h1 to handle the session's end", func() bool { return h1.node.ReplicationStats().Ends > 0 })
	t.Run("closing it deletes neither the replica nor the record", func(t *testing.T) {
		if got := headStep(t, js, id); got != replicated {
			t.Fatalf("head at step %d after the close, was %d", got, replicated)
		}
		if blockCount(t, js, id) == 0 {
			t.Fatal("the blocks were purged")
		}
		if host := sessionHost(t, js, id); host != "h0" {
			t.Fatalf("record names %q", host)
		}
	})
}
