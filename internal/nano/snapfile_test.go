package nano

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestSavedSnapshot: an engine saves its first snapshot; the next one starts from it while it is
// young enough, and makes a new one when it is too old or damaged.
func TestSavedSnapshot(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	start := func() *Engine {
		t.Helper()
		logs.Reset()
		e, err := New(context.Background(), Config{PoolSize: -1, RotateAfter: -1, RotateRuns: -1, CacheDir: dir,
			SnapshotMaxAge: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close(context.Background()) })
		res, err := e.Run(context.Background(), api.RunRequest{Code: "import random\nprint(len(str(random.random())) > 2)"}, tier.Stream{})
		if err != nil || res.Stdout != "True\n" {
			t.Fatalf("%v %+v", err, res)
		}
		return e
	}
	snapFile := func() string {
		files, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*.snap"))
		if len(files) != 1 {
			t.Fatalf("want one saved snapshot, have %v", files)
		}
		return files[0]
	}
	cases := []struct {
		name    string
		prepare func(path string)
		want    string // the log line that says where the snapshot came from
	}{
		{"first engine makes and saves it", nil, "nano snapshot made"},
		{"next engine loads it", func(string) {}, "nano snapshot loaded"},
		{"too old: made again", func(p string) {
			old := time.Now().Add(-2 * time.Hour)
			os.Chtimes(p, old, old)
		}, "nano snapshot made"},
		{"damaged: made again", func(p string) { os.WriteFile(p, []byte("agentbox-nano-snapshot-1\nshort"), 0o600) }, "unusable"},
		{"the remade one loads", func(string) {}, "nano snapshot loaded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prepare != nil {
				tc.prepare(snapFile())
			}
			start()
			if !strings.Contains(logs.String(), tc.want) {
				t.Fatalf("want %q in the logs:\n%s", tc.want, logs.String())
			}
			snapFile()
		})

	}
}
