package agentbox_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/netpolicy/netpolicytest"
	"github.com/entersandbox/agentbox/internal/server"
)

// TestClientNetwork: the SDK sends network, task and intent, reads network_events back, and changes a
// session's policy with SetNetwork; refusals are ErrForbidden naming the ceiling rule.
func TestClientNetwork(t *testing.T) {
	ctx := context.Background()
	eng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(context.Background()) })
	ceiling, err := netpolicy.ParseCeiling("policy.toml", []byte(`allow = ["pypi.org", "files.pythonhosted.org", "example.com"]`))
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(netpolicytest.Engine{Engine: eng, BytesIn: 512}, dispatch.Config{Ceiling: ceiling})
	t.Cleanup(d.Close)
	srv, err := server.New(d, server.Config{APIKeys: []string{apiKey}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	c, err := agentbox.New(ts.URL, agentbox.WithAPIKey(apiKey))
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Run(ctx, agentbox.RunBody{Code: "print(1)", Network: &agentbox.NetworkPolicy{Allow: []agentbox.HostRule{{Host: "pypi.org"}}}})
	if err != nil || len(res.NetworkEvents) != 1 || res.NetworkEvents[0].Rule != "allow:pypi.org" || res.NetworkEvents[0].BytesIn != 512 {
		t.Fatalf("run: %v %+v", err, res)
	}
	res, err = c.Run(ctx, agentbox.RunBody{Code: "print(1)", Intent: &agentbox.Intent{Packages: []string{"rich"}}})
	if err != nil || len(res.NetworkEvents) != 1 || res.NetworkEvents[0].Source != "intent.packages" {
		t.Fatalf("run with an intent: %v %+v", err, res)
	}
	_, err = c.Run(ctx, agentbox.RunBody{Code: "print(1)", Network: &agentbox.NetworkPolicy{Allow: []agentbox.HostRule{{Host: "evil.com"}}}})
	if !errors.Is(err, agentbox.ErrForbidden) || !strings.Contains(err.Error(), "ceiling:allow") {
		t.Fatalf("run outside the ceiling: %v", err)
	}
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Task: "fetch https://example.com/data.csv"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	cell := func(wantVerdict string) {
		t.Helper()
		r, err := s.Run(ctx, "print(2)")
		if err != nil || len(r.NetworkEvents) != 1 || r.NetworkEvents[0].Verdict != wantVerdict {
			t.Fatalf("cell: %v %+v", err, r)
		}
	}
	cell("denied") // the task granted example.com only
	if err := s.SetNetwork(ctx, agentbox.NetworkPolicy{Allow: []agentbox.HostRule{{Host: "pypi.org", Methods: []string{"GET"}}}}); err != nil {
		t.Fatal(err)
	}
	cell("allowed")
	if err := s.SetNetwork(ctx, agentbox.NetworkPolicy{Allow: []agentbox.HostRule{{Host: "*.evil.com"}}}); !errors.Is(err, agentbox.ErrForbidden) || !strings.Contains(err.Error(), "ceiling:allow") {
		t.Fatalf("SetNetwork outside the ceiling: %v", err)
	}
	cell("allowed")
	if err := s.SetNetwork(ctx, agentbox.NetworkPolicy{}); err != nil {
		t.Fatal(err)
	}
	cell("denied")
}
