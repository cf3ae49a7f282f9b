package cli

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// TestExecRefusals: `agentbox exec`'s usage errors, and a server without the heavy tier, are exit 2
// with a message saying why. (internal/heavy/integration's TestCLIExec runs commands on heavy.)
func TestExecRefusals(t *testing.T) {
	ctx := context.Background()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{})
	t.Cleanup(func() { d.Close(); eng.Close(ctx) })
	srv, err := server.New(d, server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	c, _ := agentbox.New(hs.URL)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		args   []string
		stderr string
	}{
		{"no session", []string{"exec", "--url", hs.URL}, "usage: agentbox exec"},
		{"no command", []string{"exec", "--url", hs.URL, s.ID(), "--"}, "no COMMAND"},
		{"bad --env", []string{"exec", "--url", hs.URL, "--env", "NOEQUALS", s.ID(), "--", "true"}, "NAME=VALUE"},
		{"no heavy tier", []string{"exec", "--url", hs.URL, s.ID(), "--", "true"}, "heavy tier"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(ctx, tc.args, strings.NewReader(""), &out, &errOut)
			if code != exitUsage || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", code, exitUsage, errOut.String(), tc.stderr)
			}
		})
	}
}
