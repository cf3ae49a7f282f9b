package integration

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// TestAuditRecordsSessionMove: an auto session that moves to heavy for pandas is recorded as
// session.move (nano to heavy, with the reason), then the cell's run on heavy.
func TestAuditRecordsSessionMove(t *testing.T) {
	ctx := context.Background()
	l, err := audit.Open(ctx, audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	nanoEng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(nanoEng, dispatch.Config{Heavy: eng})
	t.Cleanup(func() { d.Close(); nanoEng.Close(ctx) })
	srv, err := server.New(d, server.Config{Audit: l})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { srv.Shutdown(ctx); ts.Close() })
	c, _ := agentbox.New(ts.URL)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if r, err := s.Run(ctx, "x = 1"); err != nil || r.Tier != "nano" {
		t.Fatalf("%v %+v", err, r)
	}
	if r, err := s.Run(ctx, "import pandas as pd\nprint(pd.DataFrame({'a': [x]}).shape)"); err != nil || r.Tier != "heavy" {
		t.Fatalf("%v %+v", err, r)
	}
	moves, _ := l.Search(ctx, audit.Query{Type: audit.TypeSessionMove})
	if len(moves.Events) != 1 || moves.Events[0].Session != s.ID() || moves.Events[0].Details["from"] != "nano" ||
		moves.Events[0].Details["to"] != "heavy" || moves.Events[0].Details["reason"] == "" {
		t.Fatalf("moves %+v", moves.Events)
	}
	runs, _ := l.Search(ctx, audit.Query{Type: audit.TypeRun, Session: s.ID()})
	if len(runs.Events) != 2 || runs.Events[0].Tier != "heavy" || runs.Events[1].Tier != "nano" {
		t.Fatalf("runs %+v", runs.Events)
	}
}
