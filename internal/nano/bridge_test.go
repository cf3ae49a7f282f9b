package nano

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/router"
	"github.com/entersandbox/agentbox/internal/tier"
)

// fakeHTTP stands in for the egress proxy's RoundTrip: it asks the Guard (or allow, when set, since
// the offline Policy of this branch allows nothing), records an event as the proxy does, answers a
// refusal with a 403 naming the rule, and sends allowed requests to a loopback upstream: https to
// tlsUp, http to plainUp, whatever host the guest named.
type fakeHTTP struct {
	tlsUp, plainUp *httptest.Server
	allow          map[string]bool // hosts allowed; nil: the Guard's Decide

	mu     sync.Mutex
	guards []*netpolicy.Guard // guarded by mu: the Guard of every request, in order
	urls   []string           // guarded by mu: the URL of every request, in order
}

func (f *fakeHTTP) RoundTrip(ctx context.Context, g *netpolicy.Guard, req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.guards = append(f.guards, g)
	f.urls = append(f.urls, req.URL.String())
	f.mu.Unlock()
	port, _ := strconv.Atoi(req.URL.Port())
	if port == 0 {
		port = map[string]int{"http": 80, "https": 443}[req.URL.Scheme]
	}
	d := g.Decide(netpolicy.Request{Host: req.URL.Hostname(), Port: port, Method: req.Method, Path: req.URL.Path})
	if f.allow != nil {
		d = netpolicy.Decision{Allow: f.allow[req.URL.Hostname()], Verdict: api.VerdictDenied, Rule: "test:not-allowed", Reason: "not in the test's allow list"}
		if d.Allow {
			d.Verdict, d.Rule = api.VerdictAllowed, "allow:"+req.URL.Hostname()
		}
	}
	ev := api.NetworkEvent{Host: req.URL.Hostname(), Port: port, Method: req.Method, Path: req.URL.Path, Verdict: d.Verdict, Rule: d.Rule, Reason: d.Reason}
	if req.URL.Hostname() == "dlp.test" {
		// What the proxy answers when DLP blocks a request.
		ev.Verdict, ev.Rule, ev.Detectors = api.VerdictBlockedDLP, "dlp:block", []string{"card"}
		g.Record(ev)
		body := "blocked by rule dlp:block: the request carries a payment card number"
		return &http.Response{StatusCode: http.StatusUnavailableForLegalReasons, Status: "451 Unavailable For Legal Reasons",
			Header: http.Header{"X-Agentbox-Rule": {"dlp:block"}}, Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: req}, nil
	}
	if !d.Allow {
		g.Record(ev)
		body := fmt.Sprintf("denied by rule %s: %s", d.Rule, d.Reason)
		return &http.Response{StatusCode: http.StatusForbidden, Status: "403 Forbidden", Header: http.Header{"Content-Type": {"text/plain"}},
			Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: req}, nil
	}
	up := f.plainUp
	if req.URL.Scheme == "https" {
		up = f.tlsUp
	}
	out := req.Clone(ctx)
	out.Host = req.URL.Host
	out.URL.Host = up.Listener.Addr().String()
	resp, err := up.Client().Transport.RoundTrip(out)
	ev.BytesOut = req.ContentLength
	g.Record(ev)
	return resp, err
}

func (f *fakeHTTP) seen() ([]*netpolicy.Guard, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*netpolicy.Guard(nil), f.guards...), append([]string(nil), f.urls...)
}

// upstream is the loopback server behind the fake: it answers by path and reports what it got.
type upstream struct {
	mu   sync.Mutex
	last string // guarded by mu: "METHOD host path body" of the last request

	slowDone chan struct{} // closed when a /slow request's context ends (the bridge gave up on it)
	slowOnce sync.Once
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.last = fmt.Sprintf("%s %s %s %s", r.Method, r.Host, r.URL.RequestURI(), body)
	u.mu.Unlock()
	switch r.URL.Path {
	case "/hello":
		w.Header().Set("X-Upstream", "yes")
		fmt.Fprint(w, "hello from upstream")
	case "/echo":
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		fmt.Fprintf(w, "%s %s %s", r.Method, r.Header.Get("X-Test"), body)
	case "/big":
		w.Write([]byte(strings.Repeat("x", 100<<10)))
	case "/redirect":
		http.Redirect(w, r, "/hello", http.StatusFound)
	case "/slow":
		select {
		case <-r.Context().Done():
			u.slowOnce.Do(func() { close(u.slowDone) })
		case <-time.After(20 * time.Second):
		}
	default:
		http.NotFound(w, r)
	}
}

func (u *upstream) lastRequest() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

type bridgeFixture struct {
	e    *Engine
	fake *fakeHTTP
	up   *upstream
}

// newBridge starts a loopback upstream (TLS and plain), the fake in front of it and an engine using
// it, with 64 KiB request and response caps.
func newBridge(t *testing.T, cfg Config) *bridgeFixture {
	t.Helper()
	up := &upstream{slowDone: make(chan struct{})}
	tlsUp := httptest.NewTLSServer(up)
	plainUp := httptest.NewServer(up)
	fake := &fakeHTTP{tlsUp: tlsUp, plainUp: plainUp, allow: map[string]bool{"api.test": true, "files.test": true}}
	cfg.HTTP = fake
	cfg.HTTPMaxRequestBytes, cfg.HTTPMaxResponseBytes = 64<<10, 64<<10
	e, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Close(context.Background())
		tlsUp.Close()
		plainUp.Close()
	})
	return &bridgeFixture{e: e, fake: fake, up: up}
}

func withNetwork() (context.Context, *netpolicy.Guard) {
	g := netpolicy.NewGuard(&netpolicy.Policy{}, nil)
	return netpolicy.WithGuard(context.Background(), g), g
}

// TestBridge: the guest's urllib.request, http.client and agentbox.http requests reach the upstream
// through the engine's HTTP under the run's Guard, and refusals, caps and errors arrive as Python
// exceptions a program expects.
func TestBridge(t *testing.T) {
	b := newBridge(t, Config{})
	cases := []struct {
		name     string
		code     string
		stdout   []string
		upstream string // the upstream's last request, when the case reaches it
		events   []string
	}{
		{name: "urllib GET over https",
			code:     "import urllib.request\nr = urllib.request.urlopen('https://api.test/hello')\nprint(r.status, r.read().decode(), r.headers['X-Upstream'])",
			stdout:   []string{"200 hello from upstream yes"},
			upstream: "GET api.test /hello ",
			events:   []string{"GET api.test /hello allowed"}},
		{name: "urllib POST with a body",
			code:     "import urllib.request\nreq = urllib.request.Request('https://api.test/echo?x=1', data=b'a=1&b=2', headers={'X-Test': 'h'})\nprint(urllib.request.urlopen(req).read().decode())",
			stdout:   []string{"POST h a=1&b=2"},
			upstream: "POST api.test /echo?x=1 a=1&b=2"},
		{name: "urllib over plain http",
			code:     "import urllib.request\nprint(urllib.request.urlopen('http://files.test:8080/hello').read().decode())",
			stdout:   []string{"hello from upstream"},
			upstream: "GET files.test:8080 /hello "},
		{name: "urllib follows a redirect, each hop decided",
			code:   "import urllib.request\nr = urllib.request.urlopen('https://api.test/redirect')\nprint(r.url, r.read().decode())",
			stdout: []string{"https://api.test/hello hello from upstream"},
			events: []string{"GET api.test /redirect allowed", "GET api.test /hello allowed"}},
		{name: "http.client, two requests on one connection",
			code: "import http.client\nc = http.client.HTTPSConnection('api.test', timeout=10)\nfor body in (b'one', b'two'):\n" +
				"    c.request('PUT', '/echo', body=body, headers={'X-Test': 'hc', 'Content-Type': 'text/plain'})\n    r = c.getresponse()\n    print(r.status, r.getheader('Content-Type'), r.read().decode())\nc.close()",
			stdout:   []string{"200 text/plain PUT hc one", "200 text/plain PUT hc two"},
			upstream: "PUT api.test /echo two"},
		{name: "agentbox.http.request",
			code: "import agentbox.http\nstatus, headers, body = agentbox.http.request('POST', 'https://api.test/echo', headers={'X-Test': 'ab'}, body='hé', timeout=10)\n" +
				"print(status, headers['content-length'], body.decode())\nr = agentbox.http.request('GET', 'https://api.test/hello')\nprint(r.status, r.headers['x-upstream'], r.body)",
			stdout: []string{"200 11 POST ab hé", "200 yes b'hello from upstream'"}},
		{name: "denied host is HTTPError 403 naming the rule",
			code:   "import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('https://evil.test/x')\nexcept urllib.error.HTTPError as e:\n    print('HTTPError', e.code, e.read().decode())",
			stdout: []string{"HTTPError 403 denied by rule test:not-allowed: not in the test's allow list"},
			events: []string{"GET evil.test /x denied"}},
		{name: "DLP block is HTTPError 451 naming the rule",
			code:   "import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('https://dlp.test/pay', data=b'card=4111111111111111')\nexcept urllib.error.HTTPError as e:\n    print('HTTPError', e.code, e.headers['X-Agentbox-Rule'], e.read().decode())",
			stdout: []string{"HTTPError 451 dlp:block blocked by rule dlp:block"},
			events: []string{"POST dlp.test /pay blocked_dlp"}},
		{name: "agentbox.http gets a denial as a response",
			code:   "import agentbox.http\nr = agentbox.http.request('DELETE', 'https://evil.test/y')\nprint(r.status, r.body.decode())",
			stdout: []string{"403 denied by rule test:not-allowed"}},
		{name: "Host header naming another host is refused",
			code: "import http.client\nc = http.client.HTTPSConnection('api.test')\nc.putrequest('GET', '/hello', skip_host=True)\nc.putheader('Host', 'evil.test')\nc.endheaders()\n" +
				"r = c.getresponse()\nprint(r.status, r.getheader('X-Agentbox-Rule'), r.read().decode())",
			stdout: []string{"403 nano:host-mismatch agentbox: request denied by rule nano:host-mismatch"},
			events: []string{"GET api.test /hello denied"}},
		{name: "request over the cap is OSError EFBIG",
			code:   "import urllib.request, errno\ntry:\n    urllib.request.urlopen('https://api.test/echo', data=b'x' * (2 << 20))\nexcept OSError as e:\n    print(type(e).__name__, e.errno == errno.EFBIG, e)",
			stdout: []string{"OSError True", "larger than the nano bridge's 65536 byte cap"}},
		{name: "response over the cap is OSError EFBIG",
			code:   "import urllib.request, errno\ntry:\n    urllib.request.urlopen('https://api.test/big')\nexcept OSError as e:\n    print(type(e).__name__, e.errno == errno.EFBIG, e)",
			stdout: []string{"OSError True", "response of GET https://api.test/big is larger than the nano bridge's 65536 byte cap"}},
		{name: "guest timeout is TimeoutError and the run goes on",
			code:   "import urllib.request, time\nt = time.monotonic()\ntry:\n    urllib.request.urlopen('https://api.test/slow', timeout=0.3)\nexcept TimeoutError as e:\n    print('TimeoutError', e, time.monotonic() - t < 10)\nprint('after')",
			stdout: []string{"TimeoutError timed out True", "after"}},
		{name: "a huge timeout is clamped, not overflowed",
			code:   "import urllib.request\nfor t in (1e300, float('inf')):\n    print(urllib.request.urlopen('https://api.test/hello', timeout=t).read().decode())",
			stdout: []string{"hello from upstream\nhello from upstream"}},
		{name: "proxy tunnels are refused",
			code:   "import http.client\nc = http.client.HTTPSConnection('proxy.test')\nc.set_tunnel('api.test')\ntry:\n    c.request('GET', '/')\nexcept OSError as e:\n    print('refused', e)",
			stdout: []string{"refused", "proxy tunnels (CONNECT) are not used"}},
		{name: "open handles of the device are bounded",
			code:   "import os\nfds = []\ntry:\n    for _ in range(10):\n        fds.append(os.open('/dev/agentbox/http', os.O_RDWR))\nexcept BlockingIOError:\n    print('refused after', len(fds))\nfor fd in fds:\n    os.close(fd)\nos.close(os.open('/dev/agentbox/http', os.O_RDWR))\nprint('reopened')",
			stdout: []string{"refused after 4", "reopened"}},
		{name: "a raw write to the device is checked by the host",
			code:   "import os\nfd = os.open('/dev/agentbox/http', os.O_RDWR)\nos.write(fd, b'{\"scheme\": \"gopher\", \"host\": \"api.test\", \"port\": 70}\\nGET / HTTP/1.1\\r\\n\\r\\n')\nprint(os.read(fd, 4096))",
			stdout: []string{`is not http or https","kind":"invalid"}`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, g := withNetwork()
			res, err := b.e.Run(ctx, api.RunRequest{Code: c.code, Limits: api.Limits{TimeoutMS: 30_000}}, tier.Stream{})
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range c.stdout {
				if !strings.Contains(res.Stdout, want) {
					t.Errorf("stdout lacks %q:\n%s\nstderr: %s", want, res.Stdout, res.Stderr)
				}
			}
			if res.ExitCode != 0 {
				t.Errorf("exit %d: %s", res.ExitCode, res.Stderr)
			}
			if c.upstream != "" {
				if got := b.up.lastRequest(); got != c.upstream {
					t.Errorf("upstream got %q, want %q", got, c.upstream)
				}
			}
			if c.events != nil {
				var got []string
				for _, ev := range g.Drain() {
					got = append(got, fmt.Sprintf("%s %s %s %s", ev.Method, ev.Host, ev.Path, ev.Verdict))
				}
				if strings.Join(got, "|") != strings.Join(c.events, "|") {
					t.Errorf("events %q, want %q", got, c.events)
				}
			}
		})
	}
}

// TestBridgeUsesTheGuardsDecision: with no allow list the fake asks the Guard, whose offline policy
// refuses: the guest sees that rule's 403.
func TestBridgeUsesTheGuardsDecision(t *testing.T) {
	b := newBridge(t, Config{})
	b.fake.allow = nil
	ctx, g := withNetwork()
	res, err := b.e.Run(ctx, api.RunRequest{Code: "import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('https://api.test/hello')\nexcept urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())"}, tier.Stream{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Stdout, "403 denied by rule default:offline") {
		t.Fatalf("stdout %q stderr %q", res.Stdout, res.Stderr)
	}
	if ev := g.Drain(); len(ev) != 1 || ev[0].Rule != "default:offline" {
		t.Fatalf("events %+v", ev)
	}
}

// TestBridgeOfflineByDefault: without a Guard in the run's context, or without an HTTP in the
// engine's Config, nothing reaches the host's HTTP and the program fails as it does today: the
// sockets' offline error, with the "network" Missing feature the router's fallback reads.
func TestBridgeOfflineByDefault(t *testing.T) {
	b := newBridge(t, Config{})
	_, withGuard := withNetwork()
	cases := []struct {
		name   string
		e      *Engine
		ctx    context.Context
		code   string
		stdout string
		// missing is the Missing the run reports (nil: none)
		missing *api.Missing
	}{
		{"no Guard: urllib", b.e, context.Background(),
			"import urllib.request\ntry:\n    urllib.request.urlopen('https://api.test/hello')\nexcept OSError as e:\n    print(type(e).__name__, e.reason)",
			"URLError [Errno 101] network access is not available in the nano tier", nil},
		{"no Guard: http.client fails like a socket", b.e, context.Background(),
			"import http.client\nhttp.client.HTTPSConnection('api.test').request('GET', '/')", "", &api.Missing{Feature: "network"}},
		{"no Guard: socket", b.e, context.Background(),
			"import socket\nsocket.create_connection(('api.test', 443))", "", &api.Missing{Feature: "network"}},
		{"no Guard: agentbox.http", b.e, context.Background(),
			"import agentbox.http\ntry:\n    agentbox.http.request('GET', 'https://api.test/hello')\nexcept OSError as e:\n    print(e)",
			"network access is not available: this run has no network policy", nil},
		{"no Guard: the device itself says offline", b.e, context.Background(),
			"import os\nfd = os.open('/dev/agentbox/http', os.O_RDWR)\nos.write(fd, b'x')\nprint(os.read(fd, 4096))",
			`"kind":"offline"`, nil},
		{"Guard without a policy", b.e, netpolicy.WithGuard(context.Background(), netpolicy.NewGuard(nil, nil)),
			"import http.client\nhttp.client.HTTPSConnection('api.test').request('GET', '/')", "", &api.Missing{Feature: "network"}},
		{"Guard but no HTTP in the engine", shared, netpolicy.WithGuard(context.Background(), withGuard),
			"import http.client\nhttp.client.HTTPConnection('api.test').request('GET', '/')", "", &api.Missing{Feature: "network"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := c.e.Run(c.ctx, api.RunRequest{Code: c.code}, tier.Stream{})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(res.Stdout, c.stdout) {
				t.Errorf("stdout %q lacks %q (stderr %s)", res.Stdout, c.stdout, res.Stderr)
			}
			switch {
			case c.missing == nil && res.Missing != nil:
				t.Errorf("missing %+v, want none", res.Missing)
			case c.missing != nil && (res.Missing == nil || *res.Missing != *c.missing):
				t.Errorf("missing %+v, want %+v (error %+v)", res.Missing, c.missing, res.Error)
			}
			if c.missing != nil {
				// The router falls back to heavy on it, as before the bridge.
				if _, ok := router.DefaultRules().Fallback(res); !ok {
					t.Errorf("no fallback for %+v", res.Missing)
				}
			}
		})
	}
	if guards, urls := b.fake.seen(); len(guards) != 0 {
		t.Fatalf("offline runs reached the HTTP: %v", urls)
	}
}

// TestBridgeSessionKeepsItsGuard: a session's cells use the Guard the session started with, whatever
// their own context carries; a session started offline stays offline.
func TestBridgeSessionKeepsItsGuard(t *testing.T) {
	b := newBridge(t, Config{})
	ctx, g := withNetwork()
	s, err := b.e.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	other, _ := withNetwork()
	for i, cellCtx := range []context.Context{context.Background(), other} {
		res, err := s.Run(cellCtx, "import urllib.request\nprint(urllib.request.urlopen('https://api.test/hello').read().decode())", tier.Stream{})
		if err != nil || !strings.Contains(res.Stdout, "hello from upstream") {
			t.Fatalf("cell %d: %v %+v", i, err, res)
		}
	}
	guards, _ := b.fake.seen()
	if len(guards) != 2 || guards[0] != g || guards[1] != g {
		t.Fatalf("guards %v, want the session's %p twice", guards, g)
	}

	offline, err := b.e.NewSession(context.Background(), api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer offline.Close(context.Background())
	res, err := offline.Run(ctx, "import http.client\nhttp.client.HTTPSConnection('api.test').request('GET', '/')", tier.Stream{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Missing == nil || res.Missing.Feature != "network" {
		t.Fatalf("offline session with a networked cell context: %+v", res)
	}
}

// TestBridgeStopsWithTheRun: a request in flight ends with its run: at the run's deadline (the result
// says timed out) and when the caller cancels (the run fails with context.Canceled), for runs and
// sessions; the upstream sees its request's context end.
func TestBridgeStopsWithTheRun(t *testing.T) {
	const code = "import urllib.request\nurllib.request.urlopen('https://api.test/slow')"
	cases := []struct {
		name    string
		session bool
		cancel  bool
	}{
		{"run deadline", false, false},
		{"run cancelled", false, true},
		{"session cell deadline", true, false},
		{"session cell cancelled", true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBridge(t, Config{PoolSize: -1})
			ctx, _ := withNetwork()
			lim := api.Limits{TimeoutMS: 1000}
			if c.cancel {
				lim.TimeoutMS = 60_000
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				time.AfterFunc(500*time.Millisecond, cancel)
			}
			start := time.Now()
			var res *api.Result
			var err error
			if c.session {
				s, serr := b.e.NewSession(ctx, lim, nil)
				if serr != nil {
					t.Fatal(serr)
				}
				defer s.Close(context.Background())
				res, err = s.Run(ctx, code, tier.Stream{})
			} else {
				res, err = b.e.Run(ctx, api.RunRequest{Code: code, Limits: lim}, tier.Stream{})
			}
			if c.cancel {
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("err %v, want context.Canceled (res %+v)", err, res)
				}
			} else if err != nil || !res.TimedOut {
				t.Fatalf("err %v, res %+v: want a timed-out result", err, res)
			}
			if d := time.Since(start); d > 15*time.Second {
				t.Fatalf("the run took %v: the request outlived it", d)
			}
			select {
			case <-b.up.slowDone:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream request was not cancelled")
			}
		})
	}
}

// TestBridgeWaitFreesSlot: a program waiting for a response gives its CPU slot up, as a sleeping one
// does, so a second run on a one-slot engine with no queue is not refused.
func TestBridgeWaitFreesSlot(t *testing.T) {
	b := newBridge(t, Config{PoolSize: -1, MaxConcurrent: 1, MaxQueue: -1})
	ctx, _ := withNetwork()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waiting := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		var once sync.Once
		_, err := b.e.Run(ctx, api.RunRequest{Code: "import urllib.request\nprint('go', flush=True)\nurllib.request.urlopen('https://api.test/slow')", Limits: api.Limits{TimeoutMS: 60_000}},
			tier.Stream{Stdout: func(string) { once.Do(func() { close(waiting) }) }})
		done <- err
	}()
	<-waiting
	// From the print into the request: poll until the one slot is free.
	deadline := time.Now().Add(10 * time.Second)
	for len(b.e.slots) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	res, err := b.e.Run(context.Background(), api.RunRequest{Code: "print(1)"}, tier.Stream{})
	if err != nil || res.Stdout != "1\n" {
		t.Fatalf("run beside a waiting request: %v %+v", err, res)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting run: %v", err)
	}
}

// TestParseBridgeRequest: the host's reading of what the guest wrote, for inputs http.client does not
// produce (a program can write to the device itself).
func TestParseBridgeRequest(t *testing.T) {
	const get = "GET /p?q=1 HTTP/1.1\r\nHost: api.test\r\n\r\n"
	cases := []struct {
		name    string
		raw     string
		wantURL string
		wantErr string
		refusal string
	}{
		{"origin form", `{"scheme":"https","host":"api.test","port":443}` + "\n" + get, "https://api.test/p?q=1", "", ""},
		{"other port kept", `{"scheme":"http","host":"api.test","port":8080}` + "\n" + "GET / HTTP/1.1\r\nHost: api.test:8080\r\n\r\n", "http://api.test:8080/", "", ""},
		{"IPv6 literal", `{"scheme":"https","host":"::1","port":443}` + "\n" + "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", "https://[::1]/", "", ""},
		{"Host with a trailing dot and other case", `{"scheme":"https","host":"api.test","port":443}` + "\n" + "GET / HTTP/1.1\r\nHost: API.test.\r\n\r\n", "https://api.test/", "", ""},
		{"chunked body", `{"scheme":"https","host":"api.test","port":443}` + "\n" + "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "https://api.test/", "", ""},
		{"no meta line", "GET / HTTP/1.1", "", "no meta line", ""},
		{"bad scheme", `{"scheme":"ftp","host":"api.test","port":21}` + "\n" + get, "", "is not http or https", ""},
		{"bad port", `{"scheme":"https","host":"api.test","port":0}` + "\n" + get, "", "out of range", ""},
		{"host with a path", `{"scheme":"https","host":"api.test/x","port":443}` + "\n" + get, "", "is not a host name", ""},
		{"absolute-form target", `{"scheme":"https","host":"api.test","port":443}` + "\n" + "GET https://evil.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n", "", "must be a path", ""},
		{"not HTTP", `{"scheme":"https","host":"api.test","port":443}` + "\nhello\r\n\r\n", "", "unreadable HTTP request", ""},
		{"body over the cap", `{"scheme":"https","host":"api.test","port":443}` + "\n" + "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 20\r\n\r\n" + strings.Repeat("x", 20), "", "larger than the 16 byte cap", ""},
		{"fronting", `{"scheme":"https","host":"api.test","port":443}` + "\n" + "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", "", "", "nano:host-mismatch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _, refusal, err := parseBridgeRequest([]byte(c.raw), 16)
			switch {
			case c.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
			case c.refusal != "":
				if err != nil || refusal == nil || refusal.Rule != c.refusal || refusal.Verdict != api.VerdictDenied {
					t.Fatalf("refusal %+v err %v, want rule %s", refusal, err, c.refusal)
				}
			default:
				if err != nil || refusal != nil {
					t.Fatalf("err %v refusal %+v", err, refusal)
				}
				if req.URL.String() != c.wantURL {
					t.Fatalf("url %s, want %s", req.URL, c.wantURL)
				}
				if req.Header.Get("Transfer-Encoding") != "" || req.Header.Get("Connection") != "" {
					t.Fatalf("hop-by-hop headers forwarded: %v", req.Header)
				}
			}
		})
	}
}

// TestBridgeNoFallbackAfterRequests: a program that sent a request and then failed for want of a
// module reports no Missing, so the router does not run it again on heavy (which would send the
// request twice); one that sent none still does.
func TestBridgeNoFallbackAfterRequests(t *testing.T) {
	b := newBridge(t, Config{})
	cases := []struct {
		name string
		code string
		want *api.Missing
	}{
		{"request, then a missing module", "import urllib.request\nurllib.request.urlopen('https://api.test/hello').read()\nimport numpy", nil},
		{"denied request, then a missing module", "import agentbox.http\nagentbox.http.request('POST', 'https://evil.test/')\nimport numpy", nil},
		{"a missing module and no request", "import urllib.request\nimport numpy", &api.Missing{Module: "numpy"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, _ := withNetwork()
			res, err := b.e.Run(ctx, api.RunRequest{Code: c.code}, tier.Stream{})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 1 || res.Error == nil || res.Error.Type != "ModuleNotFoundError" {
				t.Fatalf("result %+v", res)
			}
			_, fallback := router.DefaultRules().Fallback(res)
			switch {
			case c.want == nil && (res.Missing != nil || fallback):
				t.Fatalf("missing %+v (fallback %v), want none", res.Missing, fallback)
			case c.want != nil && (res.Missing == nil || *res.Missing != *c.want || !fallback):
				t.Fatalf("missing %+v (fallback %v), want %+v", res.Missing, fallback, c.want)
			}
		})
	}
}

// TestBridgeStopsOnClose: Close, once its grace period ends, stops a program waiting for a response:
// the run fails as unavailable and the upstream request is cancelled.
func TestBridgeStopsOnClose(t *testing.T) {
	b := newBridge(t, Config{PoolSize: -1})
	ctx, _ := withNetwork()
	ran := make(chan error, 1)
	go func() {
		_, err := b.e.Run(ctx, api.RunRequest{Code: "import urllib.request\nurllib.request.urlopen('https://api.test/slow')", Limits: api.Limits{TimeoutMS: 600_000}}, tier.Stream{})
		ran <- err
	}()
	for deadline := time.Now().Add(30 * time.Second); len(b.up.lastRequest()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request did not reach the upstream")
		}
	}
	cctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	b.e.Close(cctx)
	select {
	case err := <-ran:
		if errdefs.ClassOf(err) != errdefs.Unavailable {
			t.Fatalf("run: %v, want unavailable", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the run outlived Close")
	}
	select {
	case <-b.up.slowDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was not cancelled")
	}
}

// TestBridgeSessionFollowsSwap: a session whose Guard had no policy is offline until a policy is
// swapped in (PATCH /v1/sessions/{id}/network), and its next cell has the network.
func TestBridgeSessionFollowsSwap(t *testing.T) {
	b := newBridge(t, Config{})
	g := netpolicy.NewGuard(nil, nil)
	s, err := b.e.NewSession(netpolicy.WithGuard(context.Background(), g), api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	const cell = "import http.client\nc = http.client.HTTPSConnection('api.test')\nc.request('GET', '/hello')\nprint(c.getresponse().read().decode())"
	res, err := s.Run(context.Background(), cell, tier.Stream{})
	if err != nil || res.Missing == nil || res.Missing.Feature != "network" {
		t.Fatalf("before the swap: %v %+v", err, res)
	}
	g.Swap(&netpolicy.Policy{})
	res, err = s.Run(context.Background(), cell, tier.Stream{})
	if err != nil || !strings.Contains(res.Stdout, "hello from upstream") {
		t.Fatalf("after the swap: %v %+v", err, res)
	}
}

// FuzzParseBridgeRequest: whatever a program writes to the device, the host's parsing neither panics
// nor sends a request anywhere but to the scheme, host and port of the meta line.
func FuzzParseBridgeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"scheme":"https","host":"api.test","port":443}` + "\nGET /p?q=1 HTTP/1.1\r\nHost: api.test\r\n\r\n",
		`{"scheme":"http","host":"::1","port":8080}` + "\nPOST / HTTP/1.1\r\nHost: [::1]:8080\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		`{"scheme":"https","host":"api.test","port":443}` + "\nGET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		`{"scheme":"https","host":"a","port":1}` + "\nGET //evil.test/x HTTP/1.1\r\n\r\n",
		"{}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, meta, refusal, err := parseBridgeRequest(raw, 1<<10)
		if err != nil || refusal != nil {
			return
		}
		if req.URL.Scheme != meta.Scheme || !strings.EqualFold(req.URL.Hostname(), strings.TrimSuffix(strings.Trim(meta.Host, "[]"), ".")) {
			t.Fatalf("request to %s from meta %+v", req.URL, meta)
		}
		if port := req.URL.Port(); port != "" && port != strconv.Itoa(meta.Port) {
			t.Fatalf("request to port %s from meta %+v", port, meta)
		}
	})
}
