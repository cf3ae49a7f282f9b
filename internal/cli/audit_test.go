package cli

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
)

func TestAuditCommands(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "audit.db")
	l, err := audit.Open(context.Background(), audit.Config{Path: db})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []audit.Event{
		{Type: audit.TypeServerStart},
		{Type: audit.TypeEgressRequest, Actor: "key_a", Verdict: audit.VerdictAllow, Details: map[string]any{"host": "pypi.org", "method": "GET", "path": "/simple/"}},
		{Type: audit.TypeEgressRequest, Actor: "key_a", Verdict: audit.VerdictBlock, Details: map[string]any{"host": "evil.example", "method": "POST"}},
		{Type: audit.TypeRun, Actor: "key_a", Details: map[string]any{"code_sha256": strings.Repeat("a", 64), "code_size": 1, "outcome": "ok"}},
	} {
		if err := l.Record(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := Main(context.Background(), append([]string{"audit"}, args...), strings.NewReader(""), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
	}{
		{"verify", []string{"verify", "--audit-db", db}, 0, "ok: events 1 to 4 (4) chain intact, 1 checkpoints"},
		{"search table", []string{"search", "--audit-db", db, "--since", "24h", "--q", "pypi.org", "--type", "egress"}, 0, "host=pypi.org"},
		{"search blocked", []string{"search", "--audit-db", db, "--verdict", "block"}, 0, "evil.example"},
		{"report markdown", []string{"report", "--audit-db", db, "--period", "weekly"}, 0, "| evil.example | 1 |"},
		{"bad type", []string{"search", "--audit-db", db, "--type", "nope"}, exitUsage, ""},
		{"bad period", []string{"report", "--audit-db", db, "--period", "monthly"}, exitUsage, ""},
		{"unknown subcommand", []string{"tail", "--audit-db", db}, exitUsage, ""},
		{"missing database", []string{"search", "--audit-db", filepath.Join(dir, "none.db")}, exitUsage, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := run(c.args...)
			if code != c.code || !strings.Contains(out, c.stdout) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d with %q", code, out, errOut, c.code, c.stdout)
			}
		})
	}
	t.Run("search json", func(t *testing.T) {
		code, out, _ := run("search", "--audit-db", db, "--json", "--limit", "2")
		var list api.AuditEventList
		if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.Events) != 2 || list.NextCursor == "" {
			t.Fatalf("exit %d: %s", code, out)
		}
		code, out, _ = run("search", "--audit-db", db, "--json", "--cursor", list.NextCursor)
		json.Unmarshal([]byte(out), &list)
		if code != 0 || len(list.Events) != 2 || list.Events[1].Seq != 1 {
			t.Fatalf("second page: %s", out)
		}
	})
	t.Run("report html to a file", func(t *testing.T) {
		f := filepath.Join(dir, "r.html")
		if code, _, errOut := run("report", "--audit-db", db, "--format", "html", "--out", f); code != 0 {
			t.Fatal(errOut)
		}
		if b, _ := os.ReadFile(f); !bytes.Contains(b, []byte("<svg")) {
			t.Fatalf("%s", b)
		}
	})
	t.Run("verify names the first bad event", func(t *testing.T) {
		raw, _ := sql.Open("sqlite", "file:"+db)
		defer raw.Close()
		if _, err := raw.Exec(`UPDATE events SET body = replace(body, 'evil', 'nice') WHERE seq = 3`); err != nil {
			t.Fatal(err)
		}
		code, out, _ := run("verify", "--audit-db", db)
		if code != 1 || !strings.Contains(out, "first bad event: seq 3 evt_") {
			t.Fatalf("exit %d: %s", code, out)
		}
	})
}

func TestServeAuditFlags(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		stderr string
	}{
		{"bad export format", []string{"serve", "--audit-db", filepath.Join(t.TempDir(), "a.db"), "--audit-export", "xml:-"}, "jsonl, ocsf or cef"},
		{"export without path", []string{"serve", "--audit-db", filepath.Join(t.TempDir(), "a.db"), "--audit-export", "cef"}, "FORMAT:PATH"},
		{"bad max age", []string{"serve", "--audit-max-age", "forever"}, "--audit-max-age"},
		{"bad report hour", []string{"serve", "--audit-report-hour", "24"}, "0 to 23"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), tc.args, strings.NewReader(""), &out, &errOut)
			if code != exitUsage || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d with %q", code, errOut.String(), exitUsage, tc.stderr)
			}
		})
	}
}

func TestDefaultAuditDBIsUnderTheStateRoot(t *testing.T) {
	if got := defaultAuditDB("/var/lib/agentbox/state"); got != "/var/lib/agentbox/state/audit/audit.db" {
		t.Fatal(got)
	}
}

func TestSessionExpiryIsRecorded(t *testing.T) {
	l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sessionExpired(l, slog.New(slog.DiscardHandler))(api.Session{ID: "ses_1", Owner: "key_abc", Tier: "nano", Cells: 3, TTLSeconds: 60}, "ttl")
	sessionExpired(l, slog.New(slog.DiscardHandler))(api.Session{ID: "ses_2", Tier: "heavy"}, "sandbox gone")
	res, _ := l.Search(context.Background(), audit.Query{Type: audit.TypeSessionExpire})
	if len(res.Events) != 2 {
		t.Fatalf("%+v", res.Events)
	}
	a, b := res.Events[1], res.Events[0]
	if a.Session != "ses_1" || a.Actor != "key_abc" || a.Tier != "nano" || a.Details["reason"] != "ttl" || a.Details["cells"].(float64) != 3 ||
		b.Actor != "local" || b.Details["reason"] != "sandbox gone" {
		t.Fatalf("%+v\n%+v", a, b)
	}
}
