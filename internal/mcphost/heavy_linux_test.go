package mcphost

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// fakeNPM writes an npm stand-in that logs its arguments to log and installs a file named after
// its last argument, or fails when that is "broken".
func fakeNPM(t *testing.T, log string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "npm")
	script := `#!/bin/sh
echo "$@" >> ` + log + `
prefix=$3
for last; do :; done
if [ "$last" = broken ]; then echo "npm error 404 Not Found - broken" >&2; exit 1; fi
mkdir -p "$prefix/node_modules/$last" && echo ok > "$prefix/node_modules/$last/index.js"
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNPMPackagesArePreparedOnceOnTheHost(t *testing.T) {
	ctx := context.Background()
	log := filepath.Join(t.TempDir(), "calls")
	l := &HeavyLauncher{NPM: fakeNPM(t, log), NPMCache: t.TempDir()}
	t.Run("installed without scripts into the cache", func(t *testing.T) {
		dir, err := l.prepare(ctx, []string{"npm:left-pad@1.3.0"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "left-pad@1.3.0", "index.js")); err != nil {
			t.Fatalf("not installed: %v", err)
		}
		calls, _ := os.ReadFile(log)
		if !strings.Contains(string(calls), "--ignore-scripts") || !strings.Contains(string(calls), "-- left-pad@1.3.0") {
			t.Fatalf("npm called with %q", calls)
		}
	})
	t.Run("a second use is a cache hit", func(t *testing.T) {
		if _, err := l.prepare(ctx, []string{"npm:left-pad@1.3.0"}); err != nil {
			t.Fatal(err)
		}
		calls, _ := os.ReadFile(log)
		if n := strings.Count(string(calls), "\n"); n != 1 {
			t.Fatalf("npm ran %d times", n)
		}
	})
	t.Run("a failed install is a clear error and leaves nothing cached", func(t *testing.T) {
		_, err := l.prepare(ctx, []string{"npm:broken"})
		if err == nil || !errors.Is(err, errdefs.InvalidArgument) || !strings.Contains(err.Error(), "404 Not Found") {
			t.Fatalf("%v", err)
		}
		entries, _ := os.ReadDir(l.NPMCache)
		if len(entries) != 1 {
			t.Fatalf("cache holds %d entries after a failure", len(entries))
		}
	})
}
