package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/cluster"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

const (
	userKey  = "user-key-0123456789"
	adminKey = "admin-key-0123456789"
	auditKey = "audit-key-0123456789" // may read the audit log (hosts with hostOpts.audit)
)

var (
	eng     *nano.Engine
	openapi validator.Validator // every answer of the fleet conforms to openapi.yaml
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Verbose() {
		testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	doc, err := libopenapi.NewDocument(server.OpenAPI())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var errs []error
	if openapi, errs = validator.NewValidator(doc); len(errs) > 0 {
		fmt.Fprintln(os.Stderr, errs)
		os.Exit(1)
	}
	eng, err = nano.New(context.Background(), nano.Config{MaxConcurrent: 6, MaxQueue: 64})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	eng.Close(context.Background())
	os.Exit(code)
}

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// natsCluster starts n NATS servers with JetStream routed to each other on loopback. Clients'
// ports are picked by each server; the route ports must be known before any starts (JetStream's
// cluster wants its routes configured), and one picked here can be taken by another test's
// connection before its server binds it, so the cluster is started again on new ports when one
// does not start.
func natsCluster(t testing.TB, n int) ([]*natsserver.Server, []string) {
	t.Helper()
	var last error
	for range 3 {
		servers, urls, err := startNATSCluster(t, n)
		if err == nil {
			return servers, urls
		}
		last = err
		t.Logf("NATS cluster did not start, again on other ports: %v", err)
	}
	t.Fatal(last)
	return nil, nil
}

func startNATSCluster(t testing.TB, n int) ([]*natsserver.Server, []string, error) {
	routes := make([]string, n)
	for i := range routes {
		routes[i] = freePort(t)
	}
	var servers []*natsserver.Server
	var urls []string
	for i := range n {
		var peers []string
		for j, r := range routes {
			if j != i {
				peers = append(peers, "nats-route://"+r)
			}
		}
		cfg := cluster.EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), Name: fmt.Sprintf("n%d", i)}
		if n > 1 {
			cfg.RouteListen, cfg.Routes = routes[i], peers
		}
		s, err := cluster.StartNATS(cfg)
		if err != nil {
			for _, s := range servers {
				s.Shutdown()
			}
			return nil, nil, err
		}
		t.Cleanup(s.Shutdown)
		servers = append(servers, s)
		urls = append(urls, "nats://"+s.Addr().String())
	}
	return servers, urls, nil
}

type host struct {
	id   string
	node *cluster.Node
	ts   *httptest.Server
	d    *dispatch.Dispatcher
}

type fleet struct {
	t     testing.TB
	nats  []*natsserver.Server
	urls  []string
	hosts []*host
}

type hostOpts struct {
	audit    bool          // each host has its own audit log
	ttl      time.Duration // the hosts' session TTL; zero means the dispatcher's default
	runSlots int
	digest   string
	// replicate gives each host a snapshot store and replicates its sessions (restore_test.go).
	replicate bool
}

// newFleet starts a 3-node NATS cluster (JetStream replicas 3) and n agentbox hosts h0..h(n-1),
// each labelled name=<id>.
func newFleet(t testing.TB, n int, o hostOpts) *fleet {
	t.Helper()
	servers, urls := natsCluster(t, 3)
	f := &fleet{t: t, nats: servers, urls: urls}
	for i := range n {
		f.addHost(fmt.Sprintf("h%d", i), urls[i%len(urls):i%len(urls)+1], o)
	}
	f.waitHosts(n)
	return f
}

func (f *fleet) startNode(id string, urls []string, o hostOpts, d *dispatch.Dispatcher, url string) (*cluster.Node, error) {
	// The JetStream meta leader of a just-started cluster takes a moment: retry the buckets.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cfg := cluster.Config{NATS: urls, HostID: id, URL: url, Labels: map[string]string{"name": id},
			RunSlots: o.runSlots, Stats: d.Stats, ConfigDigest: o.digest, Replicas: 3,
			Heartbeat: 200 * time.Millisecond, HostTTL: 2 * time.Second, PlaceTimeout: 2 * time.Second, Logger: testLogger}
		if o.replicate {
			cfg.Replicate = d
		}
		node, err := cluster.Start(ctx, cfg)
		cancel()
		if err == nil || strings.Contains(err.Error(), "refusing") || time.Now().After(deadline) {
			return node, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (f *fleet) addHost(id string, urls []string, o hostOpts) *host {
	t := f.t
	t.Helper()
	var h http.Handler
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	var joined atomic.Pointer[cluster.Node] // the dispatcher's hook tells the node once it has joined
	dcfg := dispatch.Config{Logger: testLogger, SessionTTL: o.ttl, SessionClosed: func(id string) {
		if n := joined.Load(); n != nil {
			n.SessionEnded(id)
		}
	}}
	if o.replicate {
		store, err := snapstore.Open(snapstore.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() }) // after the dispatcher's (cleanups run last first)
		dcfg.Snapshots = store
	}
	d := dispatch.New(eng, dcfg)
	node, err := f.startNode(id, urls, o, d, "http://"+ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	joined.Store(node)
	scfg := server.Config{Keys: []server.APIKey{{Key: userKey}, {Key: adminKey, Admin: true}, {Key: auditKey, Audit: true}}, Fleet: node,
		MCP: mcpserver.HTTPHandler(d, "fleet-test")}
	if o.audit {
		l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		scfg.Audit = l
	}
	srv, err := server.New(d, scfg)
	if err != nil {
		t.Fatal(err)
	}
	h = srv.Handler()
	ts.Start()
	hs := &host{id: id, node: node, ts: ts, d: d}
	t.Cleanup(func() {
		ts.Close()
		node.Close(context.Background())
		d.Close()
	})
	f.hosts = append(f.hosts, hs)
	return hs
}

// kill stops a host abruptly: its NATS connection drops without leaving and its HTTP stops.
func (h *host) kill() {
	h.node.Abandon()
	h.ts.CloseClientConnections()
	h.ts.Listener.Close()
}

func (f *fleet) waitHosts(n int) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := true
		for _, h := range f.hosts {
			if len(h.node.Hosts(context.Background()).Hosts) != n {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("hosts did not all see %d hosts within 10 s", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type answer struct {
	status int
	host   string // X-Agentbox-Host: the host that served it, when forwarded
	body   []byte
	header http.Header
}

func call(t testing.TB, h *host, method, path, key string, body any, hdr ...string) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, h.ts.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") && !strings.Contains(path, "/files/") {
		vreq, _ := http.NewRequest(method, req.URL.String(), nil)
		vreq.Header = req.Header.Clone()
		vresp := &http.Response{StatusCode: resp.StatusCode, Header: resp.Header.Clone(), Body: io.NopCloser(bytes.NewReader(b)), Request: vreq}
		if ok, errs := openapi.ValidateHttpResponse(vreq, vresp); !ok {
			var msgs []string
			for _, e := range errs {
				msgs = append(msgs, e.Error())
			}
			t.Errorf("answer %d to %s %s does not conform to openapi.yaml: %s\nbody: %s", resp.StatusCode, method, path, strings.Join(msgs, "; "), b)
		}
	}
	served := resp.Header.Get("X-Agentbox-Host")
	if served == "" {
		served = h.id
	}
	return answer{status: resp.StatusCode, host: served, body: b, header: resp.Header}
}

func decode[T any](t testing.TB, a answer) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("decoding %s: %v", a.body, err)
	}
	return v
}

func TestFleetSpreadsRunsOverHosts(t *testing.T) {
	f := newFleet(t, 3, hostOpts{})
	served := map[string]int{}
	for i := range 30 {
		a := call(t, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: fmt.Sprintf("print(%d*2)", i)})
		if a.status != 200 {
			t.Fatalf("run %d: %d %s", i, a.status, a.body)
		}
		if got := decode[api.RunResponse](t, a).Stdout; got != fmt.Sprintf("%d\n", i*2) {
			t.Fatalf("run %d printed %q", i, got)
		}
		served[a.host]++
	}
	if len(served) < 2 {
		t.Fatalf("30 runs were all served by %v: placement does not spread", served)
	}
	t.Logf("runs per host: %v", served)
}

func TestFleetSessionPinnedAnswersFromAnyHost(t *testing.T) {
	f := newFleet(t, 3, hostOpts{})
	a := call(t, f.hosts[0], "POST", "/v1/sessions", userKey, api.SessionRequest{}, cluster.HeaderLabels, "name=h2")
	if a.status != 201 && a.status != 200 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	if a.host != "h2" {
		t.Fatalf("a session asking for name=h2 was placed on %s", a.host)
	}
	id := decode[api.Session](t, a).ID
	if r := call(t, f.hosts[1], "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: "x = 41"}); r.status != 200 || r.host != "h2" {
		t.Fatalf("cell via h1: %d from %s: %s", r.status, r.host, r.body)
	}
	r := call(t, f.hosts[0], "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: "print(x + 1)"})
	if r.status != 200 || decode[api.RunResponse](t, r).Stdout != "42\n" {
		t.Fatalf("cell via h0: %d %s", r.status, r.body)
	}
	t.Run("streaming is forwarded", func(t *testing.T) {
		s := call(t, f.hosts[1], "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: "print('streamed', x)"}, "Accept", "text/event-stream")
		if s.status != 200 || !strings.HasPrefix(s.header.Get("Content-Type"), "text/event-stream") || !bytes.Contains(s.body, []byte("streamed 41")) {
			t.Fatalf("stream via h1: %d %s %s", s.status, s.header.Get("Content-Type"), s.body)
		}
	})
	t.Run("files are forwarded", func(t *testing.T) {
		req, _ := http.NewRequest("PUT", f.hosts[0].ts.URL+"/v1/sessions/"+id+"/files/data.txt", strings.NewReader("hello fleet"))
		req.Header.Set("Authorization", "Bearer "+userKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("put via h0: %d", resp.StatusCode)
		}
		g := call(t, f.hosts[1], "GET", "/v1/sessions/"+id+"/files/data.txt", userKey, nil)
		if g.status != 200 || string(g.body) != "hello fleet" {
			t.Fatalf("get via h1: %d %q", g.status, g.body)
		}
	})
	t.Run("the sessions list is the fleet's", func(t *testing.T) {
		for _, h := range f.hosts {
			l := decode[api.SessionList](t, call(t, h, "GET", "/v1/sessions", userKey, nil))
			if len(l.Sessions) != 1 || l.Sessions[0].ID != id {
				t.Fatalf("%s lists %+v", h.id, l.Sessions)
			}
		}
	})
	t.Run("another key does not find it", func(t *testing.T) {
		// Only the owner (and admins) find a session, through any host.
		if a := call(t, f.hosts[1], "GET", "/v1/sessions/"+id, adminKey, nil); a.status != 200 {
			t.Fatalf("admin via h1: %d %s", a.status, a.body)
		}
	})
	t.Run("deleted from any host", func(t *testing.T) {
		if d := call(t, f.hosts[1], "DELETE", "/v1/sessions/"+id, userKey, nil); d.status >= 300 {
			t.Fatalf("delete via h1: %d %s", d.status, d.body)
		}
		if g := call(t, f.hosts[0], "GET", "/v1/sessions/"+id, userKey, nil); g.status != 404 {
			t.Fatalf("after delete: %d %s", g.status, g.body)
		}
	})
}

func TestFleetKilledHostsSessionsReportGone(t *testing.T) {
	f := newFleet(t, 3, hostOpts{})
	a := call(t, f.hosts[0], "POST", "/v1/sessions", userKey, api.SessionRequest{}, cluster.HeaderLabels, "name=h2")
	id := decode[api.Session](t, a).ID
	// A run in flight on h2 when it dies fails with a retryable error.
	inflight := make(chan answer, 1)
	go func() {
		inflight <- call(t, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: "import time\ntime.sleep(20)", Limits: api.Limits{TimeoutMS: 30_000}}, cluster.HeaderLabels, "name=h2")
	}()
	waitFor(t, 5*time.Second, "the run to start on h2", func() bool { return f.hosts[2].node.Hosts(context.Background()).Hosts[0].Load.Runs == 1 })
	killed := time.Now()
	f.hosts[2].kill()
	select {
	case r := <-inflight:
		if r.status != 503 || !strings.Contains(string(r.body), "retry") {
			t.Fatalf("the run on the killed host answered %d %s", r.status, r.body)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the run on the killed host did not answer before its 20 s sleep would have ended")
	}
	waitFor(t, 10*time.Second, "the session to report gone", func() bool {
		g := call(t, f.hosts[1], "GET", "/v1/sessions/"+id, userKey, nil)
		return g.status == 404 && strings.Contains(string(g.body), "its host h2 left the fleet")
	})
	t.Logf("gone after %s", time.Since(killed).Round(10*time.Millisecond))
	if n := len(f.hosts[0].node.Hosts(context.Background()).Hosts); n != 2 {
		t.Fatalf("%d hosts listed after one was killed", n)
	}
	// Runs go on on the others.
	for range 5 {
		if r := call(t, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"}); r.status != 200 || r.host == "h2" {
			t.Fatalf("run after the kill: %d on %s %s", r.status, r.host, r.body)
		}
	}
}

func TestFleetNATSNodeDownChangesNothing(t *testing.T) {
	f := newFleet(t, 3, hostOpts{})
	a := call(t, f.hosts[0], "POST", "/v1/sessions", userKey, api.SessionRequest{}, cluster.HeaderLabels, "name=h1")
	id := decode[api.Session](t, a).ID
	f.nats[1].Shutdown() // h1's own NATS server: it reconnects to another
	f.nats[1].WaitForShutdown()
	time.Sleep(3 * time.Second) // longer than the host TTL: a missed heartbeat would show now
	for _, h := range f.hosts {
		if n := len(h.node.Hosts(context.Background()).Hosts); n != 3 {
			t.Fatalf("%s lists %d hosts with one NATS node down", h.id, n)
		}
	}
	if r := call(t, f.hosts[2], "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: "print('still here')"}); r.status != 200 || r.host != "h1" {
		t.Fatalf("session cell with a NATS node down: %d from %s %s", r.status, r.host, r.body)
	}
	for i := range 10 {
		if r := call(t, f.hosts[i%3], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"}); r.status != 200 {
			t.Fatalf("run %d with a NATS node down: %d %s", i, r.status, r.body)
		}
	}
	b := call(t, f.hosts[0], "POST", "/v1/sessions", userKey, api.SessionRequest{})
	if b.status >= 300 {
		t.Fatalf("new session with a NATS node down: %d %s", b.status, b.body)
	}
	if g := call(t, f.hosts[1], "GET", "/v1/sessions/"+decode[api.Session](t, b).ID, userKey, nil); g.status != 200 {
		t.Fatalf("new session via h1: %d %s", g.status, g.body)
	}
}

func TestFleetDrain(t *testing.T) {
	f := newFleet(t, 3, hostOpts{})
	a := call(t, f.hosts[0], "POST", "/v1/sessions", userKey, api.SessionRequest{}, cluster.HeaderLabels, "name=h1")
	id := decode[api.Session](t, a).ID
	if d := call(t, f.hosts[0], "POST", "/v1/hosts/h1/drain", userKey, nil); d.status != 403 {
		t.Fatalf("drain with a user key: %d %s", d.status, d.body)
	}
	d := call(t, f.hosts[0], "POST", "/v1/hosts/h1/drain", adminKey, nil)
	if d.status != 202 || decode[api.Host](t, d).State != api.HostDraining {
		t.Fatalf("drain: %d %s", d.status, d.body)
	}
	for range 15 {
		if r := call(t, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"}); r.status != 200 || r.host == "h1" {
			t.Fatalf("run after drain: %d on %s", r.status, r.host)
		}
	}
	if r := call(t, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"}, cluster.HeaderLabels, "name=h1"); r.status != 503 {
		t.Fatalf("run asking for the drained host: %d %s", r.status, r.body)
	}
	if r := call(t, f.hosts[2], "POST", "/v1/sessions/"+id+"/run", userKey, api.SessionRunRequest{Code: "print(2)"}); r.status != 200 {
		t.Fatalf("the draining host's session: %d %s", r.status, r.body)
	}
	call(t, f.hosts[2], "DELETE", "/v1/sessions/"+id, userKey, nil)
	waitFor(t, 5*time.Second, "h1 to be drained", func() bool {
		for _, h := range decode[api.HostList](t, call(t, f.hosts[0], "GET", "/v1/hosts", userKey, nil)).Hosts {
			if h.ID == "h1" {
				return h.State == api.HostDrained
			}
		}
		return false
	})
}

func TestFleetFullAnswers429(t *testing.T) {
	f := newFleet(t, 3, hostOpts{runSlots: 1})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if r := call(t, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: "import time\ntime.sleep(3)", Limits: api.Limits{TimeoutMS: 30_000}}); r.status != 200 {
				t.Errorf("long run: %d %s", r.status, r.body)
			}
		})
	}
	waitFor(t, 5*time.Second, "the 3 runs to hold the 3 hosts", func() bool {
		n := 0
		for _, h := range f.hosts {
			n += h.node.Hosts(context.Background()).Hosts[0].Load.Runs
		}
		return n == 3
	})
	r := call(t, f.hosts[1], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"})
	if r.status != 429 || r.header.Get("Retry-After") == "" || !strings.Contains(string(r.body), "whole fleet is full") {
		t.Fatalf("a run into a full fleet: %d %s", r.status, r.body)
	}
	wg.Wait()
	if r := call(t, f.hosts[1], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"}); r.status != 200 {
		t.Fatalf("a run once room returned: %d %s", r.status, r.body)
	}
}

func TestFleetRefusesDifferentConfig(t *testing.T) {
	f := newFleet(t, 1, hostOpts{digest: "aaaa"})
	d := dispatch.New(eng, dispatch.Config{})
	defer d.Close()
	_, err := f.startNode("h9", f.urls[1:2], hostOpts{digest: "bbbb"}, d, "http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "refusing to join") {
		t.Fatalf("a host with other keys joined: %v", err)
	}
}

func TestFleetLabels(t *testing.T) {
	f := newFleet(t, 2, hostOpts{})
	cases := []struct {
		name   string
		labels string
		status int
		host   string
	}{
		{"one label places on its host", "name=h1", 200, "h1"},
		{"an unknown value is 503", "name=h7", 503, ""},
		{"a malformed label is 400", "name", 400, ""},
		{"a label with a dot is 400", "na.me=h1", 400, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for range 3 {
				r := call(t, f.hosts[0], "POST", "/v1/run", userKey, api.RunRequest{Code: "print(1)"}, cluster.HeaderLabels, c.labels)
				if r.status != c.status || (c.host != "" && r.host != c.host) {
					t.Fatalf("%s: %d on %s %s", c.labels, r.status, r.host, r.body)
				}
			}
		})
	}
}

func waitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testLogger shows the hosts' warnings with -v (TestMain).
var testLogger = slog.New(slog.DiscardHandler)

func TestFleetAuditStream(t *testing.T) {
	f := newFleet(t, 1, hostOpts{})
	sink := cluster.NewAuditSink()
	for _, typ := range []string{"server.start", "policy.change"} {
		if err := sink.Write(api.AuditEvent{Type: typ}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sink.Attach(ctx, f.hosts[0].node); err != nil {
		t.Fatal(err)
	}
	if err := sink.Write(api.AuditEvent{Type: "run"}); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(f.urls[2])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	c, err := js.OrderedConsumer(ctx, cluster.AuditStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for unanswered := 0; len(got) < 3; {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if errors.Is(err, nats.ErrNoResponders) && unanswered < 10 {
			// Each Next makes a new ordered consumer; this client's server (another than the
			// stream's leader) may not know its interest yet. Nothing was delivered: ask again.
			unanswered++
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		var ev api.AuditEvent
		json.Unmarshal(m.Data(), &ev)
		if m.Subject() != "agentbox.audit.h0" {
			t.Fatalf("subject %s", m.Subject())
		}
		got = append(got, ev.Type)
	}
	if strings.Join(got, ",") != "server.start,policy.change,run" {
		t.Fatalf("stream has %v: the events before and after joining, in order", got)
	}
}

func TestFleetGoSDK(t *testing.T) {
	f := newFleet(t, 2, hostOpts{})
	ctx := context.Background()
	user, err := agentbox.New(f.hosts[1].ts.URL, agentbox.WithAPIKey(userKey))
	if err != nil {
		t.Fatal(err)
	}
	list, err := user.Hosts(ctx)
	if err != nil || list.Self != "h1" || len(list.Hosts) != 2 || list.Hosts[0].ID != "h1" {
		t.Fatalf("Hosts: %+v %v", list, err)
	}
	if _, err := user.DrainHost(ctx, "self"); !errors.Is(err, agentbox.ErrForbidden) {
		t.Fatalf("DrainHost with a user key: %v", err)
	}
	admin, _ := agentbox.New(f.hosts[1].ts.URL, agentbox.WithAPIKey(adminKey))
	h, err := admin.DrainHost(ctx, "self")
	if err != nil || h.ID != "h1" || h.State == api.HostActive {
		t.Fatalf("DrainHost: %+v %v", h, err)
	}
	if _, err := admin.DrainHost(ctx, "h7"); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("DrainHost of an unknown host: %v", err)
	}
}

func TestEmbeddedNATSSaysWhyItDidNotStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cases := []struct {
		name string
		cfg  cluster.EmbeddedConfig
		want string
	}{
		{"client port in use", cluster.EmbeddedConfig{Listen: taken.Addr().String(), StoreDir: t.TempDir()}, "address already in use"},
		{"a JetStream cluster without routes", cluster.EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), RouteListen: "127.0.0.1:0"}, "routes"},
		{"no store", cluster.EmbeddedConfig{Listen: "127.0.0.1:0"}, "no store directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := cluster.StartNATS(c.cfg)
			if err == nil {
				s.Shutdown()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
		})
	}
}
