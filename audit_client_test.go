package agentbox_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

func TestClientAudit(t *testing.T) {
	ctx := context.Background()
	l, err := audit.Open(ctx, audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	eng, err := nano.New(ctx, nano.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(ctx)
	d := dispatch.New(eng, dispatch.Config{})
	defer d.Close()
	const auditor = "auditor-key-0123456789abcdef"
	srv, err := server.New(d, server.Config{APIKeys: []string{apiKey}, Keys: []server.APIKey{{Key: auditor, AuditOnly: true}}, Audit: l})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	user, _ := agentbox.New(hs.URL, agentbox.WithAPIKey(apiKey))
	aud, _ := agentbox.New(hs.URL, agentbox.WithAPIKey(auditor))
	for range 3 {
		if _, err := user.Run(ctx, agentbox.RunBody{Code: "print(1)"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Record(ctx, audit.Event{Type: audit.TypeEgressRequest, Verdict: audit.VerdictBlock, Details: map[string]any{"host": "evil.example"}})

	t.Run("search with filters", func(t *testing.T) {
		page, err := aud.AuditEvents(ctx, agentbox.AuditQuery{Type: "run", SinceAgo: time.Hour, Actor: server.TenantID(apiKey)})
		if err != nil || len(page.Events) != 3 || page.Events[0].Details["code_sha256"] == nil {
			t.Fatalf("%v %+v", err, page)
		}
		page, err = aud.AuditEvents(ctx, agentbox.AuditQuery{Q: "evil.example", Verdict: "block"})
		if err != nil || len(page.Events) != 1 {
			t.Fatalf("%v %+v", err, page)
		}
	})
	t.Run("every page", func(t *testing.T) {
		n := 0
		if err := aud.AllAuditEvents(ctx, agentbox.AuditQuery{Limit: 1}, func(agentbox.AuditEvent) bool { n++; return true }); err != nil || n != 4 {
			t.Fatalf("%v: %d events", err, n)
		}
	})
	t.Run("reports", func(t *testing.T) {
		rep, err := aud.AuditReport(ctx, "weekly", time.Time{})
		if err != nil || rep.Events != 4 || len(rep.TopBlocked) != 1 || !rep.Verification.OK {
			t.Fatalf("%v %+v", err, rep)
		}
		html, err := aud.AuditReportDocument(ctx, "daily", time.Now(), "html")
		if err != nil || !strings.Contains(string(html), "<svg") {
			t.Fatalf("%v %.200s", err, html)
		}
	})
	t.Run("verify", func(t *testing.T) {
		v, err := aud.AuditVerify(ctx)
		if err != nil || !v.OK || v.Events != 4 {
			t.Fatalf("%v %+v", err, v)
		}
	})
	t.Run("scopes", func(t *testing.T) {
		if _, err := user.AuditVerify(ctx); !errors.Is(err, agentbox.ErrForbidden) {
			t.Fatalf("a key without the audit scope: %v", err)
		}
		if _, err := aud.Run(ctx, agentbox.RunBody{Code: "1"}); !errors.Is(err, agentbox.ErrForbidden) {
			t.Fatalf("an audit-only key ran code: %v", err)
		}
		if _, err := aud.AuditReport(ctx, "monthly", time.Time{}); !errors.Is(err, agentbox.ErrInvalidArgument) {
			t.Fatalf("bad period: %v", err)
		}
	})
}
