package cli

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
)

// TestVersionShowsTheStampedBuild: `agentbox version` prints what release.sh stamps with -ldflags -X
// (version, commit, build date), the Go version and platform, and the interpreter's build; an
// unstamped build says "unknown" instead of printing nothing.
func TestVersionShowsTheStampedBuild(t *testing.T) {
	cases := []struct {
		name                  string
		version, commit, date string
		want                  []string
	}{
		{"stamped", "1.2.3", "0123456789abcdef0123", "2026-12-01T14:00:00Z",
			[]string{"agentbox 1.2.3\n", "commit 0123456789abcdef0123\n", "built 2026-12-01T14:00:00Z\n",
				runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n", "python.wasm build "}},
		{"unstamped", "", "", "", []string{"commit unknown\n", "built unknown\n", "python.wasm build "}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			saved := []string{buildVersion, buildCommit, buildDate}
			buildVersion, buildCommit, buildDate = c.version, c.commit, c.date
			t.Cleanup(func() { buildVersion, buildCommit, buildDate = saved[0], saved[1], saved[2] })
			var out bytes.Buffer
			if code := Main(context.Background(), []string{"version"}, strings.NewReader(""), &out, &out); code != 0 {
				t.Fatalf("exit %d: %s", code, out.String())
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if c.commit != "" && version() != c.version+" "+c.commit[:12] {
				t.Errorf("version() = %q", version())
			}
		})
	}
}
