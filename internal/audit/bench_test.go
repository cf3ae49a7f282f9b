package audit

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var benchEvents = flag.Int("audit.events", 1_000_000, "events in the database the search and report benchmarks build")

// benchEvent is the i-th event of a synthetic week: half egress decisions over 2,000 hosts (one in
// ten blocked), runs, uploads, DLP findings and session events.
func benchEvent(i int, start time.Time, n int) Event {
	at := start.Add(time.Duration(float64(i) / float64(n) * float64(7*24*time.Hour)))
	sess := fmt.Sprintf("ses_%05d", i%5000)
	actor := fmt.Sprintf("key_%02d", i%40)
	switch r := i % 20; {
	case r < 10:
		verdict := VerdictAllow
		if r == 0 {
			verdict = VerdictBlock
		}
		return Event{Type: TypeEgressRequest, Actor: actor, Session: sess, Verdict: verdict, Time: at, Details: map[string]any{
			"host": fmt.Sprintf("host%d.example.com", (i*7919)%2000), "method": "GET", "path": fmt.Sprintf("/api/v1/items/%d", i%1000), "rule": "allow-list", "source": "policy"}}
	case r < 14:
		return Event{Type: TypeRun, Actor: actor, Session: sess, Tier: "nano", Time: at, Details: map[string]any{
			"code_sha256": strings.Repeat("ab", 32), "code_size": 120, "outcome": "ok", "exit_code": 0, "duration_ms": 3.5}}
	case r < 16:
		return Event{Type: TypeFileUpload, Actor: actor, Session: sess, Tier: "nano", Time: at, Details: map[string]any{
			"path": fmt.Sprintf("/data/file%d.csv", i%300), "size": 2048, "sha256": strings.Repeat("cd", 32)}}
	case r == 16:
		return Event{Type: TypeEgressDLP, Actor: actor, Session: sess, Verdict: VerdictRedact, Time: at, Details: map[string]any{
			"host": "api.example.com", "detectors": []map[string]any{{"type": "email", "count": 2}}}}
	case r == 17:
		return Event{Type: TypeSessionCreate, Actor: actor, Session: sess, Tier: "nano", Time: at}
	case r == 18:
		return Event{Type: TypeSessionClose, Actor: actor, Session: sess, Tier: "nano", Time: at}
	}
	return Event{Type: TypeAuthFailure, Verdict: VerdictDeny, Time: at, Details: map[string]any{"remote": "10.0.0.1:5555", "path": "/v1/run"}}
}

var (
	bigOnce sync.Once
	bigLog  *Log
	bigDir  string
	bigErr  error
)

var benchStart = time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC) // a Monday

// bigDB builds the benchmark database once per process, in a temporary directory removed at exit
// (TestMain).
func bigDB(b *testing.B) *Log {
	bigOnce.Do(func() {
		bigDir, bigErr = os.MkdirTemp("", "agentbox-audit-bench-")
		if bigErr != nil {
			return
		}
		n := *benchEvents
		bigLog, bigErr = Open(context.Background(), Config{Path: filepath.Join(bigDir, "audit.db"), CheckpointEvery: 10_000,
			QueueSize: 8192, Now: func() time.Time { return benchStart.Add(8 * 24 * time.Hour) }})
		if bigErr != nil {
			return
		}
		// Queued without waiting for each commit (the writer's batches fill up to maxBatch), then
		// every answer is collected: the same commits as Record's, without 1 M round trips.
		t0 := time.Now()
		answers := make(chan *pending, 1<<16)
		go func() {
			defer close(answers)
			for i := range n {
				p, err := bigLog.enqueue(context.Background(), benchEvent(i, benchStart, n))
				if err != nil {
					bigErr = err
					return
				}
				answers <- p
			}
		}()
		for p := range answers {
			if err := <-p.done; err != nil && bigErr == nil {
				bigErr = err
			}
		}
		took := time.Since(t0)
		fi, _ := os.Stat(filepath.Join(bigDir, "audit.db"))
		fmt.Fprintf(os.Stderr, "built %d events in %v (%.0f events/s), database %d MiB\n", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), fi.Size()>>20)
	})
	if bigErr != nil {
		b.Fatal(bigErr)
	}
	return bigLog
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if bigLog != nil {
		bigLog.Close()
	}
	if bigDir != "" {
		os.RemoveAll(bigDir)
	}
	os.Exit(code)
}

// BenchmarkRecord: events/s through Record from many goroutines (group commit), committed before
// each Record returns.
func BenchmarkRecord(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			l, err := Open(context.Background(), Config{Path: filepath.Join(b.TempDir(), "audit.db"), Sync: sync})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			var i atomic.Int64
			b.SetParallelism(16)
			b.ResetTimer()
			t0 := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := int(i.Add(1))
					if err := l.Record(context.Background(), benchEvent(n, benchStart, 1_000_000)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "events/s")
		})
	}
}

// BenchmarkSearch1M: one page of 100 over the 1 M-event database, by kind of filter.
func BenchmarkSearch1M(b *testing.B) {
	l := bigDB(b)
	cursor := ""
	{
		page, _ := l.Search(context.Background(), Query{Type: TypeEgressRequest, Limit: 1000})
		cursor = page.NextCursor
	}
	cases := []struct {
		name string
		q    Query
	}{
		{"newest", Query{}},
		{"q host", Query{Text: "host1234.example.com"}},
		{"q host type since", Query{Text: "host380.example.com", Type: "egress", Since: benchStart.Add(3 * 24 * time.Hour)}},
		{"q rare path", Query{Text: `"items 980"`, Verdict: VerdictBlock}},
		{"type verdict", Query{Type: TypeEgressRequest, Verdict: VerdictBlock}},
		{"session", Query{Session: "ses_04321"}},
		{"time window", Query{Since: benchStart.Add(48 * time.Hour), Until: benchStart.Add(49 * time.Hour)}},
		{"second page", Query{Type: TypeEgressRequest, Cursor: cursor}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			q := c.q
			q.Limit = 100
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				t0 := time.Now()
				page, err := l.Search(context.Background(), q)
				if err != nil || len(page.Events) == 0 {
					b.Fatalf("%v: %d events", err, len(page.Events))
				}
				lat = append(lat, time.Since(t0))
			}
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkReportWeek1M: the weekly report (with chain verification over the week) of the 1 M-event
// database, and a daily one.
func BenchmarkReportWeek1M(b *testing.B) {
	l := bigDB(b)
	for _, period := range []string{Weekly, Daily} {
		b.Run(period, func(b *testing.B) {
			for b.Loop() {
				rep, err := l.Report(context.Background(), period, benchStart.Add(3*24*time.Hour))
				if err != nil || rep.Events == 0 || !rep.Verification.OK {
					b.Fatalf("%v %d %+v", err, rep.Events, rep.Verification)
				}
			}
		})
	}
}

// BenchmarkVerify1M: the whole chain of the 1 M-event database.
func BenchmarkVerify1M(b *testing.B) {
	l := bigDB(b)
	for b.Loop() {
		v, err := l.Verify(context.Background(), nil)
		if err != nil || !v.OK {
			b.Fatalf("%v %+v", err, v)
		}
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
