package audit

import (
	"context"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// FuzzSearchQuery: whatever a client puts in the query string, parsing either refuses it as invalid
// input or gives a search that SQLite runs without error (the q parser never lets FTS5 syntax
// through).
func FuzzSearchQuery(f *testing.F) {
	for _, s := range []string{"", "q=pypi.org", `q="a b" c*`, "q=NEAR(a b)", "q=a:b", "q=-x", `q="`, "q=*", "q=^a",
		"type=egress&verdict=block&since=24h", "since=7d&until=2026-12-01", "cursor=djE6MTA", "limit=5", "q=a%00b", "q=%ff"} {
		f.Add(s)
	}
	l, err := Open(context.Background(), Config{Path: filepath.Join(f.TempDir(), "fuzz.db")})
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	for _, e := range workload() {
		l.Record(context.Background(), e)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := ParseQuery(v, time.Now())
		if err != nil {
			if errdefs.ClassOf(err) != errdefs.InvalidArgument {
				t.Fatalf("%q: error not invalid_argument: %v", raw, err)
			}
			return
		}
		if _, err := l.Search(context.Background(), q); err != nil {
			t.Fatalf("%q parsed but the search failed: %v", raw, err)
		}
	})
}
