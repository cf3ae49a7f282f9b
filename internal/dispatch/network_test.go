package dispatch

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/tier"
)

// netTier is a tier standing in for the egress data plane: every line "GET host /path" of a program
// is a request it asks the Guard in ctx about and records, as the proxy does. It notes the Guard each
// sandbox was handed at start, as the heavy engine attaches it at hand-out.
type netTier struct {
	name api.Tier
	mu   sync.Mutex
	// handed are the Guards sessions were started with; guarded by mu
	handed []*netpolicy.Guard
}

func (f *netTier) traffic(ctx context.Context, code string) *api.Result {
	res := &api.Result{Tier: f.name}
	g := netpolicy.GuardOf(ctx)
	for _, line := range strings.Split(code, "\n") {
		parts := strings.Fields(line)
		if len(parts) != 3 {
			continue
		}
		if g == nil {
			res.Stdout += "offline\n"
			continue
		}
		d := g.Decide(netpolicy.Request{Host: parts[1], Port: 443, Method: parts[0], Path: parts[2]})
		v := d.Verdict
		g.Record(api.NetworkEvent{Host: d.Host, Port: 443, Method: parts[0], Path: parts[2], Verdict: v, Rule: d.Rule, Source: d.Source, Reason: d.Reason, BytesOut: 10})
		res.Stdout += v + "\n"
	}
	if strings.Contains(code, "#threads") && f.name == api.TierNano {
		res.ExitCode, res.Error = 1, &api.Error{Type: "RuntimeError", Message: "can't start new thread"}
		res.Missing = &api.Missing{Feature: "threads"}
	}
	return res
}

func (f *netTier) RunCollect(ctx context.Context, req api.RunRequest, _ tier.Stream, _, _ int64) (*api.Result, *tier.Collected, error) {
	return f.traffic(ctx, req.Code), nil, nil
}
func (f *netTier) Close(context.Context) error { return nil }
func (f *netTier) Limits(req api.Limits) (api.Limits, error) {
	return limits.Resolve(req, api.Limits{TimeoutMS: 60_000, MemoryLimitMB: 256, MaxOutputBytes: 1 << 20},
		api.Limits{TimeoutMS: 600_000, MemoryLimitMB: 1024, MaxOutputBytes: 1 << 20}, 64, f.name)
}
func (f *netTier) PoolReady() int { return 0 }
func (f *netTier) NewSession(ctx context.Context, _ api.Limits, _ []string) (tier.Session, error) {
	f.mu.Lock()
	f.handed = append(f.handed, netpolicy.GuardOf(ctx))
	f.mu.Unlock()
	return &netSession{f: f, alive: true}, nil
}

type netSession struct {
	f     *netTier
	alive bool
}

func (s *netSession) Run(ctx context.Context, code string, _ tier.Stream) (*api.Result, error) {
	return s.f.traffic(ctx, code), nil
}
func (s *netSession) WriteFile(context.Context, string, []byte) error         { return nil }
func (s *netSession) ReadFile(context.Context, string, int64) ([]byte, error) { return nil, nil }
func (s *netSession) ListFiles(context.Context, string) ([]api.FileInfo, error) {
	return nil, nil
}
func (s *netSession) Alive() bool                 { return s.alive }
func (s *netSession) Close(context.Context) error { s.alive = false; return nil }

func netCeiling(t *testing.T) *netpolicy.Ceiling {
	t.Helper()
	c, err := netpolicy.ParseCeiling("policy.toml", []byte(`allow = ["pypi.org", "example.com", "api.example.com"]`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newNetDispatcher(t *testing.T, c *netpolicy.Ceiling, sink func(api.NetworkEvent)) (*Dispatcher, *netTier, *netTier) {
	n, h := &netTier{name: api.TierNano}, &netTier{name: api.TierHeavy}
	cfg := Config{Heavy: h, Ceiling: c}
	if sink != nil {
		cfg.NetworkSink = func(_, _ string, e api.NetworkEvent) { sink(e) }
	}
	d := New(n, cfg)
	t.Cleanup(d.Close)
	return d, n, h
}

func verdicts(evs []api.NetworkEvent) string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Method+" "+e.Host+e.Path+" "+e.Verdict+" "+e.Rule)
	}
	return strings.Join(out, "; ")
}

func TestRunNetworkEvents(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var sunk []api.NetworkEvent
	d, _, _ := newNetDispatcher(t, netCeiling(t), func(e api.NetworkEvent) { mu.Lock(); sunk = append(sunk, e); mu.Unlock() })
	cases := []struct {
		name   string
		req    api.RunRequest
		events string
		stdout string
	}{
		{"offline run gets no guard", api.RunRequest{Code: "GET pypi.org /simple/"}, "", "offline\n"},
		{"allowed and denied on nano", api.RunRequest{Tier: api.TierNano, Code: "GET pypi.org /simple/\nGET example.com /",
			Network: &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}},
			"GET pypi.org/simple/ allowed allow:pypi.org; GET example.com/ denied default:deny", "allowed\ndenied\n"},
		{"heavy", api.RunRequest{Tier: api.TierHeavy, Code: "POST api.example.com /v1",
			Network: &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com", Methods: []string{"GET"}}}}},
			"POST api.example.com/v1 denied default:deny", "denied\n"},
		{"task grant", api.RunRequest{Tier: api.TierNano, Code: "GET example.com /data.csv\nGET example.com /other",
			Task: "Summarise https://example.com/data.csv"},
			"GET example.com/data.csv allowed grant:task:url:example.com/data.csv; GET example.com/other denied default:deny", "allowed\ndenied\n"},
		{"fallback keeps both tiers' events", api.RunRequest{Code: "GET pypi.org /a\n#threads",
			Network: &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}},
			"GET pypi.org/a allowed allow:pypi.org; GET pypi.org/a allowed allow:pypi.org", "allowed\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := d.Run(ctx, tc.req, Output{})
			if err != nil {
				t.Fatal(err)
			}
			if got := verdicts(resp.NetworkEvents); got != tc.events || resp.Stdout != tc.stdout {
				t.Fatalf("events %q stdout %q; want %q, %q", got, resp.Stdout, tc.events, tc.stdout)
			}
			for _, e := range resp.NetworkEvents {
				if e.Time == "" {
					t.Fatalf("event without a time: %+v", e)
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sunk) != 7 {
		t.Fatalf("the sink got %d events, want every one (7)", len(sunk))
	}
}

func TestRunNetworkRefusals(t *testing.T) {
	ctx := context.Background()
	open := &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}
	cases := []struct {
		name    string
		ceiling *netpolicy.Ceiling
		req     api.RunRequest
		class   *errdefs.Class
		message string
	}{
		{"no ceiling", nil, api.RunRequest{Code: "1", Network: open}, errdefs.Forbidden, "no network ceiling"},
		{"outside the ceiling", netCeiling(t), api.RunRequest{Code: "1", Network: &api.NetworkPolicy{Allow: []api.HostRule{{Host: "evil.com"}}}}, errdefs.Forbidden, "ceiling:allow"},
		{"bad intent", netCeiling(t), api.RunRequest{Code: "1", Intent: &api.Intent{URLs: []string{"gopher://x"}}}, errdefs.InvalidArgument, "intent.urls[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, n, _ := newNetDispatcher(t, tc.ceiling, nil)
			_, err := d.Run(ctx, tc.req, Output{})
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("Run error %v, want %s saying %q", err, tc.class.Name(), tc.message)
			}
			if len(n.handed) != 0 {
				t.Fatal("a sandbox started for a refused policy")
			}
			if _, err := d.NewSession(ctx, api.SessionRequest{Network: tc.req.Network, Intent: tc.req.Intent}); !errors.Is(err, tc.class) {
				t.Fatalf("NewSession error %v, want %s", err, tc.class.Name())
			}
		})
	}
}

func TestSessionNetwork(t *testing.T) {
	ctx := context.Background()
	d, n, h := newNetDispatcher(t, netCeiling(t), nil)
	s, err := d.NewSession(ctx, api.SessionRequest{Network: &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(n.handed) != 1 || n.handed[0] == nil {
		t.Fatal("the session's sandbox was not handed its Guard at start")
	}
	step := func(name, code, want string) {
		t.Helper()
		res, err := s.Run(ctx, code, Output{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := verdicts(res.NetworkEvents); got != want {
			t.Fatalf("%s: events %q, want %q", name, got, want)
		}
	}
	step("open for setup", "GET pypi.org /simple/", "GET pypi.org/simple/ allowed allow:pypi.org")
	step("each cell has its own events", "GET example.com /", "GET example.com/ denied default:deny")
	if err := s.SetNetwork(api.NetworkPolicy{Allow: []api.HostRule{{Host: "example.com"}}}); err != nil {
		t.Fatal(err)
	}
	step("after the change", "GET pypi.org /simple/\nGET example.com /", "GET pypi.org/simple/ denied default:deny; GET example.com/ allowed allow:example.com")
	if err := s.SetNetwork(api.NetworkPolicy{Allow: []api.HostRule{{Host: "evil.com"}}}); !errors.Is(err, errdefs.Forbidden) {
		t.Fatalf("a change outside the ceiling: %v", err)
	}
	step("a refused change changes nothing", "GET example.com /", "GET example.com/ allowed allow:example.com")
	// The move to heavy hands the heavy sandbox the same Guard, and the cell's events (the replayed
	// cells' included) come back.
	res, err := s.Run(ctx, "import numpy\nGET example.com /x", Output{})
	if err != nil || res.Tier != api.TierHeavy {
		t.Fatalf("move: %v %+v", err, res)
	}
	if len(h.handed) != 1 || h.handed[0] != n.handed[0] {
		t.Fatal("the heavy sandbox of a moved session did not get the session's Guard")
	}
	if got := verdicts(res.NetworkEvents); !strings.HasSuffix(got, "GET example.com/x allowed allow:example.com") || strings.Count(got, ";") != 5 {
		t.Fatalf("events after the move: %q", got)
	}
	if err := s.SetNetwork(api.NetworkPolicy{}); err != nil {
		t.Fatal(err)
	}
	step("locked down on heavy", "GET example.com /", "GET example.com/ denied default:offline")
}

// TestSessionWithWritesStaysOnNano: a move replays earlier nano cells on heavy, so once a cell has
// sent a write (which replaying would send again) the session no longer moves; reads do not stop it.
func TestSessionWithWritesStaysOnNano(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, first string
		moves       bool
	}{
		{"read", "GET api.example.com /v1", true},
		{"write", "POST api.example.com /v1", false},
		{"refused write", "POST pypi.org /upload", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, _ := newNetDispatcher(t, netCeiling(t), nil)
			s, err := d.NewSession(ctx, api.SessionRequest{Network: &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com"}}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Run(ctx, tc.first, Output{}); err != nil {
				t.Fatal(err)
			}
			res, err := s.Run(ctx, "import numpy", Output{})
			if err != nil {
				t.Fatal(err)
			}
			if moved := res.Tier == api.TierHeavy; moved != tc.moves {
				t.Fatalf("moved %v, want %v (%s)", moved, tc.moves, res.RouteReason)
			}
			if !tc.moves && !strings.Contains(res.RouteReason, "sent HTTP writes") {
				t.Fatalf("route reason %q does not say why the session stayed", res.RouteReason)
			}
		})
	}
}

func TestOfflineSessionCanBeOpened(t *testing.T) {
	ctx := context.Background()
	d, n, _ := newNetDispatcher(t, netCeiling(t), nil)
	s, err := d.NewSession(ctx, api.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n.handed[0] == nil {
		t.Fatal("an offline session got no Guard, so it could never be opened")
	}
	if err := s.SetNetwork(api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Run(ctx, "GET pypi.org /", Output{})
	if err != nil || verdicts(res.NetworkEvents) != "GET pypi.org/ allowed allow:pypi.org" {
		t.Fatalf("%v %+v", err, res)
	}
}
