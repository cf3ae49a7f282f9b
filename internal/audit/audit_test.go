package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/jsonschema-go/jsonschema"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// clock is a movable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time // guarded by mu
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openTest(t *testing.T, cfg Config) *Log {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "audit.db")
	}
	l, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func record(t *testing.T, l *Log, evs ...Event) {
	t.Helper()
	for _, e := range evs {
		if err := l.Record(context.Background(), e); err != nil {
			t.Fatalf("record %s: %v", e.Type, err)
		}
	}
}

// rawDB opens the database file directly, as an attacker with write access would.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func workload() []Event {
	return []Event{
		{Type: TypeSessionCreate, Actor: "key_a", Session: "s1", Tier: "nano"},
		{Type: TypeRun, Actor: "key_a", Session: "s1", Tier: "nano", Details: map[string]any{"code_sha256": strings.Repeat("ab", 32), "code_size": 12, "outcome": "ok", "exit_code": 0}},
		{Type: TypeEgressRequest, Actor: "key_a", Session: "s1", Verdict: VerdictAllow, Details: map[string]any{"host": "pypi.org", "method": "GET", "path": "/simple/requests/"}},
		{Type: TypeEgressRequest, Actor: "key_a", Session: "s1", Verdict: VerdictBlock, Details: map[string]any{"host": "evil.example", "method": "POST", "path": "/upload"}},
		{Type: TypeEgressDLP, Actor: "key_a", Session: "s1", Verdict: VerdictRedact, Details: map[string]any{"host": "api.example", "detectors": []map[string]any{{"type": "aws_access_key", "count": 2}}}},
		{Type: TypeAuthFailure, Actor: ActorSystem, Verdict: VerdictDeny, Details: map[string]any{"remote": "127.0.0.1:5555", "path": "/v1/run"}},
		{Type: TypeRun, Actor: "key_b", Session: "s2", Tier: "heavy", Verdict: VerdictOK, Details: map[string]any{"code_sha256": strings.Repeat("cd", 32), "code_size": 40, "outcome": "error", "error_type": "Timeout"}},
		{Type: TypeSessionClose, Actor: "key_a", Session: "s1"},
	}
}

func TestSearchFilters(t *testing.T) {
	l := openTest(t, Config{})
	record(t, l, workload()...)
	cases := []struct {
		name  string
		query string
		want  []string // types, newest first
	}{
		{"all newest first", "", []string{"session.close", "run", "auth.failure", "egress.dlp", "egress.request", "egress.request", "run", "session.create"}},
		{"type exact", "type=run", []string{"run", "run"}},
		{"type prefix", "type=egress", []string{"egress.dlp", "egress.request", "egress.request"}},
		{"verdict", "verdict=block", []string{"egress.request"}},
		{"session", "session=s2", []string{"run"}},
		{"actor", "actor=key_b", []string{"run"}},
		{"full text host", "q=pypi.org", []string{"egress.request"}},
		{"full text with type", "q=example&type=egress.dlp", []string{"egress.dlp"}},
		{"full text prefix", "q=evi*", []string{"egress.request"}},
		{"full text phrase", `q="simple requests"`, []string{"egress.request"}},
		{"full text two words", "q=Timeout+heavy", []string{"run"}},
		{"full text fts syntax is literal", "q=NEAR(a+b)", nil},
		{"since in the future", "since=2200-01-01", nil},
		{"until in the past", "until=2000-01-01", nil},
		{"since 1h", "since=1h&type=session.create", []string{"session.create"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := url.ParseQuery(c.query)
			if err != nil {
				t.Fatal(err)
			}
			q, err := ParseQuery(v, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			got, err := l.Search(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			var types []string
			for _, e := range got.Events {
				types = append(types, e.Type)
			}
			if strings.Join(types, ",") != strings.Join(c.want, ",") {
				t.Fatalf("got %v, want %v", types, c.want)
			}
		})
	}
}

func TestSearchRefusesBadInput(t *testing.T) {
	cases := map[string]string{
		"unknown parameter":  "foo=1",
		"repeated":           "type=run&type=run",
		"bad type":           "type=nope",
		"bad verdict":        "verdict=maybe",
		"bad time":           "since=yesterday",
		"until before since": "since=2026-01-02&until=2026-01-01",
		"bad cursor":         "cursor=abc",
		"limit zero":         "limit=0",
		"limit too big":      "limit=100000",
		"open quote":         `q="abc`,
		"time out of range":  "since=2999-01-01",
	}
	for name, query := range cases {
		t.Run(name, func(t *testing.T) {
			v, _ := url.ParseQuery(query)
			_, err := ParseQuery(v, time.Now())
			if errdefs.ClassOf(err) != errdefs.InvalidArgument {
				t.Fatalf("err %v, want invalid_argument", err)
			}
		})
	}
}

func TestCursorPaginationVisitsEveryEventOnce(t *testing.T) {
	l := openTest(t, Config{})
	const n = 57
	for i := range n {
		record(t, l, Event{Type: TypeFileUpload, Actor: "key_a", Session: "s", Details: map[string]any{"path": fmt.Sprintf("/data/f%d", i), "size": i, "sha256": strings.Repeat("0", 64)}})
	}
	seen := map[int64]bool{}
	q := Query{Limit: 10, Text: "data"}
	pages := 0
	for {
		page, err := l.Search(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range page.Events {
			if seen[e.Seq] {
				t.Fatalf("seq %d twice", e.Seq)
			}
			seen[e.Seq] = true
		}
		if page.NextCursor == "" {
			break
		}
		q.Cursor = page.NextCursor
	}
	if len(seen) != n || pages != 6 {
		t.Fatalf("%d events in %d pages, want %d in 6", len(seen), pages, n)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	cases := []struct {
		name    string
		tamper  func(t *testing.T, db *sql.DB)
		badSeq  int64
		problem string
	}{
		{"untouched", func(*testing.T, *sql.DB) {}, 0, ""},
		{"edited body", func(t *testing.T, db *sql.DB) {
			exec(t, db, `UPDATE events SET body = replace(body, 'evil.example', 'good.example') WHERE seq = 4`)
		}, 4, "edited"},
		{"edited body and its hash", func(t *testing.T, db *sql.DB) {
			var prev []byte
			var body string
			db.QueryRow(`SELECT prev_hash, body FROM events WHERE seq = 4`).Scan(&prev, &body)
			body = strings.Replace(body, `"block"`, `"allow"`, 1)
			exec(t, db, `UPDATE events SET body = ?, hash = ? WHERE seq = 4`, body, chainHash(prev, []byte(body)))
		}, 5, "prev_hash"},
		{"deleted row", func(t *testing.T, db *sql.DB) { exec(t, db, `DELETE FROM events WHERE seq = 3`) }, 3, "missing"},
		{"deleted tail covered by a checkpoint", func(t *testing.T, db *sql.DB) { exec(t, db, `DELETE FROM events WHERE seq >= 7`) }, 7, "truncated"},
		{"reordered rows", func(t *testing.T, db *sql.DB) {
			exec(t, db, `UPDATE events SET seq = -1 WHERE seq = 2`)
			exec(t, db, `UPDATE events SET seq = 2 WHERE seq = 3`)
			exec(t, db, `UPDATE events SET seq = 3 WHERE seq = -1`)
		}, 2, "reordered"},
		{"chain rewritten end to end", func(t *testing.T, db *sql.DB) {
			// A writer with database access recomputes every hash after editing event 2: only the
			// signed checkpoint exposes it.
			rows, _ := db.Query(`SELECT seq, body FROM events ORDER BY seq`)
			type row struct {
				seq  int64
				body string
			}
			var all []row
			for rows.Next() {
				var r row
				rows.Scan(&r.seq, &r.body)
				all = append(all, r)
			}
			rows.Close()
			prev := zeroHash
			for _, r := range all {
				if r.seq == 2 {
					r.body = strings.Replace(r.body, `"outcome":"ok"`, `"outcome":"no"`, 1)
				}
				h := chainHash(prev, []byte(r.body))
				exec(t, db, `UPDATE events SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?`, r.body, prev, h, r.seq)
				prev = h
			}
		}, 8, "checkpoint"},
		{"forged checkpoint", func(t *testing.T, db *sql.DB) {
			exec(t, db, `UPDATE checkpoints SET head = zeroblob(32)`)
		}, 8, "signature"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.db")
			l := openTest(t, Config{Path: path})
			record(t, l, workload()...)
			if err := l.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
			c.tamper(t, rawDB(t, path))
			v, err := l.Verify(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.badSeq == 0 {
				if !v.OK || v.Events != 8 || v.Checkpoints != 1 {
					t.Fatalf("untouched log: %+v", v)
				}
				return
			}
			if v.OK || v.BadSeq != c.badSeq || !strings.Contains(v.Problem, c.problem) {
				t.Fatalf("got %+v, want bad seq %d with %q", v, c.badSeq, c.problem)
			}
		})
	}
}

func exec(t *testing.T, db *sql.DB, stmt string, args ...any) {
	t.Helper()
	if _, err := db.Exec(stmt, args...); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyWithAnotherKeyFails(t *testing.T) {
	l := openTest(t, Config{})
	record(t, l, workload()...)
	l.Checkpoint(context.Background())
	other, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := l.Verify(context.Background(), other.Public().(ed25519.PublicKey))
	if v.OK || !strings.Contains(v.Problem, "signature") {
		t.Fatalf("verified with the wrong key: %+v", v)
	}
}

func TestCheckpointsEveryNEventsAndAfterInterval(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	l := openTest(t, Config{CheckpointEvery: 3, CheckpointInterval: time.Minute, Now: clk.now})
	for range 7 {
		record(t, l, Event{Type: TypeServerStart})
	}
	cps, _ := l.Checkpoints(context.Background(), 0)
	if len(cps) != 2 || cps[0].Seq != 6 || cps[1].Seq != 3 {
		t.Fatalf("checkpoints %+v, want at 6 and 3", cps)
	}
	clk.add(2 * time.Minute) // event 7 now waits longer than the interval
	deadline := time.Now().Add(20 * time.Second)
	for {
		cps, _ = l.Checkpoints(context.Background(), 0)
		if len(cps) == 3 && cps[0].Seq == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of event 7 after the interval: %+v", cps)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRetentionIsRecordedAndChainStillVerifies(t *testing.T) {
	cases := []struct {
		name string
		cfg  func(c *Config)
	}{
		{"by age", func(c *Config) { c.MaxAge = time.Hour }},
		{"by size", func(c *Config) { c.MaxBytes = 200 << 10 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clk := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
			path := filepath.Join(t.TempDir(), "audit.db")
			l := openTest(t, Config{Path: path, Now: clk.now, CheckpointEvery: 50})
			big := strings.Repeat("x", 400)
			for i := range 600 {
				record(t, l, Event{Type: TypeFileUpload, Details: map[string]any{"path": fmt.Sprintf("/data/%d/%s", i, big), "size": 1, "sha256": strings.Repeat("0", 64)}})
			}
			l.Close()
			clk.add(2 * time.Hour)
			cfg := Config{Path: path, Now: clk.now}
			c.cfg(&cfg)
			l = openTest(t, cfg)
			ret, err := l.Search(context.Background(), Query{Type: TypeRetention})
			if err != nil || len(ret.Events) != 1 {
				t.Fatalf("retention events %+v %v", ret.Events, err)
			}
			d := ret.Events[0].Details
			if d["deleted"].(float64) < 1 || d["through_hash"] == "" {
				t.Fatalf("retention details %v", d)
			}
			all, _ := l.Search(context.Background(), Query{Limit: maxPage})
			if want := 600 - int(d["deleted"].(float64)) + 1; len(all.Events) != want {
				t.Fatalf("%d events left, want %d", len(all.Events), want)
			}
			v, err := l.Verify(context.Background(), nil)
			if err != nil || !v.OK || v.FirstSeq != int64(d["through_seq"].(float64))+1 {
				t.Fatalf("verify after retention: %+v %v", v, err)
			}
		})
	}
}

func TestSensitiveDetailsAreRedactedAndCapped(t *testing.T) {
	l := openTest(t, Config{})
	secret := "print('AKIAABCDEFGHIJKLMNOP')"
	long := strings.Repeat("p", 2000)
	record(t, l, Event{Type: TypeMCPCall, Details: map[string]any{"code": secret, "request_body": "token=hunter2", "message": long, "exit_code": 3,
		"nested": map[string]any{"password": "hunter2"}}})
	res, _ := l.Search(context.Background(), Query{})
	raw, _ := json.Marshal(res.Events[0])
	for _, leak := range []string{"AKIAABCDEFGHIJKLMNOP", "hunter2", long} {
		if bytes.Contains(raw, []byte(leak)) {
			t.Fatalf("stored event leaks %.40q: %s", leak, raw)
		}
	}
	d := res.Events[0].Details
	sum := sha256.Sum256([]byte(secret))
	if code := d["code"].(map[string]any); code["sha256"] != hex.EncodeToString(sum[:]) || code["size"].(float64) != float64(len(secret)) {
		t.Fatalf("code digest %v", code)
	}
	sum = sha256.Sum256([]byte(long))
	if d["message_sha256"] != hex.EncodeToString(sum[:]) || len(d["message"].(string)) > MaxValue+64 {
		t.Fatalf("long message not capped with its hash: %d bytes, %v", len(d["message"].(string)), d["message_sha256"])
	}
	if d["exit_code"].(float64) != 3 {
		t.Fatalf("exit_code was redacted: %v", d["exit_code"])
	}
}

func TestRecordRefusesUnknownTypesAndVerdicts(t *testing.T) {
	l := openTest(t, Config{})
	for _, e := range []Event{{Type: "run.secret"}, {Type: ""}, {Type: TypeRun, Verdict: "maybe"}} {
		if err := l.Record(context.Background(), e); errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Fatalf("%+v: err %v", e, err)
		}
	}
}

func TestSigningKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	k1, err := LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", st.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(p)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("reloaded key differs: %v", err)
	}
	pubText, _ := os.ReadFile(p + ".pub")
	if pub, err := ParsePublicKey(string(pubText)); err != nil || !bytes.Equal(pub, k1.Public().(ed25519.PublicKey)) {
		t.Fatalf("public key file: %v", err)
	}
	os.Chmod(p, 0o644)
	if _, err := LoadOrCreateKey(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key accepted: %v", err)
	}
}

func TestFullQueueBlocksAndLosesNothing(t *testing.T) {
	l := openTest(t, Config{QueueSize: 1})
	const writers, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				errs <- l.Record(context.Background(), Event{Type: TypeRun, Actor: fmt.Sprintf("key_%d", w), Details: map[string]any{"i": i}})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	v, _ := l.Verify(context.Background(), nil)
	if !v.OK || v.Events != writers*each {
		t.Fatalf("%+v, want %d events", v, writers*each)
	}
}

func TestRecordAfterCloseFails(t *testing.T) {
	l := openTest(t, Config{})
	l.Close()
	if err := l.Record(context.Background(), Event{Type: TypeRun}); err != ErrClosed {
		t.Fatalf("err %v", err)
	}
}

func TestEventsMatchTheJSONSchema(t *testing.T) {
	b, err := os.ReadFile("../../docs/audit-event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s jsonschema.Schema
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	rs, err := s.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	l := openTest(t, Config{})
	record(t, l, workload()...)
	record(t, l, Event{Type: TypeFileDownload, Details: map[string]any{"path": "/data/x", "size": 3, "sha256": strings.Repeat("a", 64)}})
	res, _ := l.Search(context.Background(), Query{})
	for _, e := range res.Events {
		var inst any
		raw, _ := json.Marshal(e)
		json.Unmarshal(raw, &inst)
		if err := rs.Validate(inst); err != nil {
			t.Errorf("%s: %v\n%s", e.Type, err, raw)
		}
	}
	// The schema must refuse what the log must never hold: code in clear, an unknown type.
	bad := []string{
		`{"schema":1,"seq":1,"id":"evt_00000000000000000000","time":"2026-12-01T10:00:00Z","type":"run","actor":"system","verdict":"ok","details":{"code":"print(1)","code_sha256":"` + strings.Repeat("a", 64) + `","code_size":8,"outcome":"ok"}}`,
		`{"schema":1,"seq":1,"id":"evt_00000000000000000000","time":"2026-12-01T10:00:00Z","type":"nope","actor":"system","verdict":"ok"}`,
	}
	for _, j := range bad {
		var inst any
		json.Unmarshal([]byte(j), &inst)
		if rs.Validate(inst) == nil {
			t.Errorf("schema accepted %s", j)
		}
	}
	for _, typ := range Types {
		if !bytes.Contains(b, []byte(`"`+typ+`"`)) {
			t.Errorf("type %s is not in the schema", typ)
		}
	}
}

func TestExportFormats(t *testing.T) {
	var jl, oc, ce bytes.Buffer
	sinks := []Sink{}
	for f, w := range map[string]*bytes.Buffer{FormatJSONL: &jl, FormatOCSF: &oc, FormatCEF: &ce} {
		s, err := NewSink(f, w)
		if err != nil {
			t.Fatal(err)
		}
		sinks = append(sinks, s)
	}
	l := openTest(t, Config{Sinks: sinks})
	record(t, l, workload()...)
	lines := func(b *bytes.Buffer) []string { return strings.Split(strings.TrimSpace(b.String()), "\n") }
	t.Run("jsonl is the API event with its chain", func(t *testing.T) {
		ls := lines(&jl)
		var e api.AuditEvent
		if len(ls) != 8 || json.Unmarshal([]byte(ls[3]), &e) != nil || e.Seq != 4 || len(e.Hash) != 64 || e.Details["host"] != "evil.example" {
			t.Fatalf("%d lines, line 4 %s", len(ls), ls[3])
		}
	})
	t.Run("ocsf http activity for egress", func(t *testing.T) {
		var o map[string]any
		json.Unmarshal([]byte(lines(&oc)[3]), &o)
		req, _ := o["http_request"].(map[string]any)
		if o["class_uid"].(float64) != 4002 || o["activity_id"].(float64) != 6 || o["type_uid"].(float64) != 400206 || req["http_method"] != "POST" || o["disposition"] != "Blocked" {
			t.Fatalf("ocsf %v", o)
		}
		json.Unmarshal([]byte(lines(&oc)[5]), &o)
		if o["class_uid"].(float64) != 3002 {
			t.Fatalf("auth failure class %v", o["class_uid"])
		}
	})
	t.Run("cef", func(t *testing.T) {
		l := lines(&ce)[3]
		for _, want := range []string{"CEF:0|agentbox|agentbox|", "|egress.request|egress.request block|", "dhost=evil.example", "requestMethod=POST", "act=block", "cs1=s1"} {
			if !strings.Contains(l, want) {
				t.Fatalf("cef line %q lacks %q", l, want)
			}
		}
	})
	t.Run("cef escapes", func(t *testing.T) {
		line := cef(api.AuditEvent{Type: "run", Verdict: "ok", Actor: "a=b\nc", Time: time.Now().Format(time.RFC3339Nano)})
		if !strings.Contains(line, `suser=a\=b\nc`) {
			t.Fatalf("%q", line)
		}
	})
}

func TestReport(t *testing.T) {
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clk := &clock{t: day.Add(-24 * time.Hour)}
	l := openTest(t, Config{Now: clk.now, CheckpointEvery: 4})
	// The day before: pypi.org already contacted.
	record(t, l, Event{Type: TypeEgressRequest, Verdict: VerdictAllow, Details: map[string]any{"host": "pypi.org"}})
	clk.t = day.Add(3 * time.Hour)
	record(t, l, workload()...)
	clk.t = day.Add(5 * time.Hour)
	record(t, l, Event{Type: TypeEgressRequest, Verdict: VerdictBlock, Details: map[string]any{"host": "evil.example"}},
		Event{Type: TypePolicyChange, Actor: "key_admin", Details: map[string]any{"what": "egress allowlist", "added": []string{"pypi.org"}}})
	clk.t = day.Add(30 * time.Hour)
	l.Checkpoint(context.Background())
	rep, err := l.Report(context.Background(), Daily, day.Add(12*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	count := func(cs []api.AuditCount, k string) int64 {
		for _, c := range cs {
			if c.Key == k {
				return c.Count
			}
		}
		return 0
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"events in the day only", rep.Events == 10},
		{"by verdict", count(rep.ByVerdict, "block") == 2 && count(rep.ByVerdict, "deny") == 1},
		{"by tier", count(rep.ByTier, "heavy") == 1 && count(rep.ByTier, "nano") == 2},
		{"by session", count(rep.BySession, "s1") == 6},
		{"by actor", count(rep.ByActor, "key_a") == 6},
		{"top blocked", len(rep.TopBlocked) == 1 && rep.TopBlocked[0] == api.AuditCount{Key: "evil.example", Count: 2}},
		{"new hosts exclude pypi.org", strings.Join(rep.NewHosts, ",") == "evil.example"},
		{"dlp by type", len(rep.DLPFindings) == 1 && rep.DLPFindings[0] == api.AuditCount{Key: "aws_access_key", Count: 2}},
		{"policy changes", len(rep.PolicyChanges) == 1 && rep.PolicyChanges[0].Actor == "key_admin"},
		{"errors", count(rep.Errors, "Timeout") == 1},
		{"auth failures", rep.AuthFailures == 1},
		{"blocked per hour", len(rep.BlockedPerHour) == 24 && rep.BlockedPerHour[3] == 1 && rep.BlockedPerHour[5] == 1},
		{"verified from a checkpoint", rep.Verification.OK && rep.Verification.LastCheckpoint != nil && rep.Verification.LastSeq == 11},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				b, _ := json.MarshalIndent(rep, "", " ")
				t.Fatalf("report:\n%s", b)
			}
		})
	}
	t.Run("weekly covers monday to monday", func(t *testing.T) {
		s, e, _ := PeriodBounds(Weekly, day) // 2026-12-01 is a Tuesday
		if s.Weekday() != time.Monday || s.Day() != 30 || e.Sub(s) != 7*24*time.Hour {
			t.Fatalf("%v %v", s, e)
		}
		w, err := l.Report(context.Background(), Weekly, day)
		if err != nil || w.Events != 11 || len(w.EventsPerHour) != 168 {
			t.Fatalf("weekly %d events %v", w.Events, err)
		}
	})
	t.Run("formats", func(t *testing.T) {
		md, _, _ := Render(rep, ReportMarkdown)
		html, ct, _ := Render(rep, ReportHTML)
		for _, want := range []string{"evil.example", "aws_access_key", "Chain verified"} {
			if !bytes.Contains(md, []byte(want)) || !bytes.Contains(html, []byte(want)) {
				t.Fatalf("md or html lacks %q", want)
			}
		}
		if !strings.HasPrefix(ct, "text/html") || !bytes.Contains(html, []byte("<svg")) || bytes.Contains(html, []byte("<script")) || bytes.Contains(html, []byte("http://example")) {
			t.Fatalf("html is not a self-contained page with charts")
		}
		if _, _, err := Render(rep, "pdf"); errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Fatalf("pdf: %v", err)
		}
	})
	t.Run("html escapes event text", func(t *testing.T) {
		r := rep
		r.NewHosts = []string{"<script>alert(1)</script>"}
		html, _, _ := Render(r, ReportHTML)
		if bytes.Contains(html, []byte("<script>alert")) {
			t.Fatal("unescaped host in html")
		}
	})
}

func TestScheduleDailyWritesTheMissingReport(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)}
	l := openTest(t, Config{Now: clk.now})
	record(t, l, Event{Type: TypeServerStart, Time: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)})
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.ScheduleDaily(ctx, dir, 6) }()
	want := filepath.Join(dir, "daily-2026-12-01.html")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(want); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no report written")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"json", "md"} {
		if _, err := os.Stat(filepath.Join(dir, "daily-2026-12-01."+ext)); err != nil {
			t.Fatal(err)
		}
	}
	var rep api.AuditReport
	b, _ := os.ReadFile(filepath.Join(dir, "daily-2026-12-01.json"))
	if json.Unmarshal(b, &rep) != nil || rep.Events != 1 {
		t.Fatalf("report %s", b)
	}
}

func TestOpenSinkAppendsToAPrivateFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.cef")
	os.WriteFile(p, []byte("earlier line\n"), 0o600)
	s, err := OpenSink("cef:"+p, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := openTest(t, Config{Sinks: []Sink{s}})
	record(t, l, workload()[:2]...)
	l.Close()
	s.(io.Closer).Close()
	b, _ := os.ReadFile(p)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 3 || lines[0] != "earlier line" || !strings.HasPrefix(lines[2], "CEF:0|agentbox|") {
		t.Fatalf("%q", lines)
	}
	for _, bad := range []string{"cef", "xml:" + p, ":" + p} {
		if _, err := OpenSink(bad, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPeerVocabulary(t *testing.T) {
	for in, want := range map[string]string{"allowed": "allow", "denied": "block", "redacted": "redact", "ok": "ok", "weird": "weird"} {
		if got := VerdictOf(in); got != want {
			t.Errorf("VerdictOf(%q) = %q, want %q", in, got, want)
		}
	}
	got, _ := json.Marshal(Detectors([]string{"email", "aws_key", "email"}))
	if string(got) != `[{"count":1,"type":"aws_key"},{"count":2,"type":"email"}]` {
		t.Fatal(string(got))
	}
}
