package cli

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

// TestSessionCommands: `agentbox session steps|show|rewind|fork` against a server with time travel.
func TestSessionCommands(t *testing.T) {
	ctx := context.Background()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	st, err := snapstore.Open(snapstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{Snapshots: st})
	t.Cleanup(func() { d.Close(); st.Close(); eng.Close(ctx) })
	const key = "cli-test-key-0123456789"
	srv, err := server.New(d, server.Config{APIKeys: []string{key}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	c, _ := agentbox.New(hs.URL, agentbox.WithAPIKey(key))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: api.TierNano})
	if err != nil {
		t.Fatal(err)
	}
	for _, code := range []string{"x = 1", "x = 2\nprint(x)"} {
		if _, err := s.Run(ctx, code); err != nil {
			t.Fatal(err)
		}
	}
	id := s.ID()
	conn := []string{"--url", hs.URL, "--api-key", key}
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"steps", append([]string{"session", "steps", id}, conn...), 0, "*2    cell", ""},
		{"show", append([]string{"session", "show", id, "2"}, conn...), 0, "stdout:\n  2", ""},
		{"show as JSON", append([]string{"session", "show", "--json", id, "1"}, conn...), 0, `"code": "x = 1"`, ""},
		{"rewind", append([]string{"session", "rewind", id, "1"}, conn...), 0, "rewound to step 1 (now step 3, on nano)", ""},
		{"abandoned after the rewind", append([]string{"session", "steps", id}, conn...), 0, "x2    cell", ""},
		{"fork", append([]string{"session", "fork", "--ttl", "60", id, "2"}, conn...), 0, "forked from step 2 of " + id, ""},
		{"step past the end", append([]string{"session", "show", id, "9"}, conn...), exitInternal, "", "no step 9"},
		{"not a step number", append([]string{"session", "rewind", id, "x"}, conn...), exitUsage, "", "not a step number"},
		{"unknown session", append([]string{"session", "steps", "ses_nope"}, conn...), exitInternal, "", "unknown id"},
		{"unknown subcommand", []string{"session", "undo", id}, exitUsage, "", "unknown subcommand"},
		{"no subcommand", []string{"session"}, exitUsage, "", "usage: agentbox session"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := Main(ctx, tc.args, strings.NewReader(""), &out, &errb)
			if code != tc.code || !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errb.String(), tc.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tc.code, out.String(), errb.String())
			}
		})
	}
	if res, err := s.Run(ctx, "print(x)"); err != nil || res.Stdout != "1\n" {
		t.Fatalf("after the CLI's rewind: %v %+v", err, res)
	}
}
