package integration

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
)

// TestSessionMovesToHeavy: an auto session starts on nano; the first cell that imports what only heavy
// has moves it there under the same id, with the earlier cells' variables and the session's files.
func TestSessionMovesToHeavy(t *testing.T) {
	ctx := context.Background()
	c, _ := apiServer(t)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil || s.Info().Tier != "nano" || s.Info().RouteReason == "" {
		t.Fatalf("%v %+v", err, s)
	}
	if _, err := s.Upload(ctx, "/data/n.txt", strings.NewReader("4")); err != nil {
		t.Fatal(err)
	}
	cells := []string{
		"n = int(open('/data/n.txt').read())\nopen('/data/log.txt', 'a').write('a')",
		"import json\ndoc = json.dumps({'n': n})\nprint('nano side')",
		"raise ValueError('a cell that failed on nano is replayed too')",
	}
	for i, code := range cells {
		res, err := s.Run(ctx, code)
		if err != nil || res.Tier != "nano" {
			t.Fatalf("cell %d: %v %+v", i+1, err, res)
		}
	}
	res, err := s.Run(ctx, "import numpy as np\nprint(int(np.arange(n).sum()), doc)")
	if err != nil {
		t.Fatal(err)
	}
	if res.Tier != "heavy" || res.FallbackFrom != "" || res.Stdout != "6 {\"n\": 4}\n" ||
		!strings.Contains(res.RouteReason, "imports numpy") || !strings.Contains(res.RouteReason, "3 earlier cells replayed, 2 files copied") {
		t.Fatalf("tier %s fallback %q reason %q stdout %q stderr %s", res.Tier, res.FallbackFrom, res.RouteReason, res.Stdout, res.Stderr)
	}
	if info, err := s.Refresh(ctx); err != nil || info.Tier != "heavy" || info.MovedFrom != "nano" || info.Cells != 4 {
		t.Fatalf("%v %+v", err, info)
	}
	// The replay appended to log.txt again; the copy after it restores nano's content.
	if data, err := s.Download(ctx, "/data/log.txt"); err != nil || string(data) != "a" {
		t.Fatalf("log.txt after the move: %q %v", data, err)
	}
	// Later cells and file operations go to heavy under the same id.
	res, err = s.Run(ctx, "import pandas as pd\nprint(pd.Series([n, n]).sum())\nopen('/output/r.txt', 'w').write('ok')")
	if err != nil || res.Tier != "heavy" || res.Stdout != "8\n" || !strings.HasPrefix(res.RouteReason, "the session is on heavy: line 1 imports numpy") {
		t.Fatalf("%v %+v", err, res)
	}
	if data, err := s.Download(ctx, "/output/r.txt"); err != nil || string(data) != "ok" {
		t.Fatalf("%q %v", data, err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestSessionFallsBackToHeavy: a cell the router could not judge fails on nano for want of a heavy
// module, and runs again on heavy after the session moved.
func TestSessionFallsBackToHeavy(t *testing.T) {
	ctx := context.Background()
	c, _ := apiServer(t)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if _, err := s.Run(ctx, "x = 5"); err != nil {
		t.Fatal(err)
	}
	var fellBack []string
	var out strings.Builder
	res, err := s.RunStream(ctx, "print('before', flush=True)\nm = __import__('pan' + 'das')\nprint(x, m.__name__)", agentbox.Callbacks{
		Stdout:   func(text string) { out.WriteString(text) },
		Fallback: func(from agentbox.Tier, reason string) { fellBack = append(fellBack, string(from)+": "+reason) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Tier != "heavy" || res.FallbackFrom != "nano" || res.Stdout != "before\n5 pandas\n" ||
		!strings.Contains(res.RouteReason, "No module named 'pandas'") || !strings.Contains(res.RouteReason, "1 earlier cells replayed") {
		t.Fatalf("tier %s fallback %q reason %q stdout %q stderr %s", res.Tier, res.FallbackFrom, res.RouteReason, res.Stdout, res.Stderr)
	}
	// The stream carried the nano attempt's output, the fallback, then heavy's.
	if len(fellBack) != 1 || !strings.HasPrefix(fellBack[0], "nano: ") || out.String() != "before\nbefore\n5 pandas\n" {
		t.Fatalf("fallback events %q, streamed %q", fellBack, out.String())
	}
}

// TestSessionStaysWhenReplayCannotWork: a session whose earlier cell behaves differently on heavy,
// whose history is too long to replay, or that finds heavy full, stays on nano and says why.
func TestSessionStaysWhenReplayCannotWork(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		cfg     dispatch.Config
		first   string
		reason  string
		retries bool // a later cell tries to move again (the cause may pass)
	}{
		{"replay fails", dispatch.Config{}, "import sys\nif sys.platform != 'wasi': raise SystemExit(3)", "replaying cell 1 failed on heavy where it had worked on nano", false},
		{"history too long", dispatch.Config{MaxReplayBytes: 64}, "x = 1  # " + strings.Repeat("long ", 20), "too much to replay", false},
		{"heavy is full", dispatch.Config{MaxHeavySessions: 1}, "x = 1", "1 heavy sessions are open", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := apiServerWith(t, tc.cfg)
			if tc.cfg.MaxHeavySessions == 1 {
				h, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "heavy"})
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close(ctx)
				if _, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "heavy"}); !errors.Is(err, agentbox.ErrOverloaded) {
					t.Fatalf("a second heavy session past the cap: %v", err)
				}
			}
			s, err := c.NewSession(ctx, agentbox.SessionRequest{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(ctx)
			if res, err := s.Run(ctx, tc.first); err != nil || res.ExitCode != 0 {
				t.Fatalf("%v %+v", err, res)
			}
			// Twice: the second time a session that cannot replay says so without trying again.
			for i := range 2 {
				res, err := s.Run(ctx, "import numpy")
				if err != nil || res.Tier != "nano" || res.Error == nil || !strings.Contains(res.RouteReason, tc.reason) {
					t.Fatalf("%v %+v", err, res)
				}
				if tried := strings.Contains(res.RouteReason, "could not move"); i == 1 && tried != tc.retries {
					t.Fatalf("second cell: tried to move %v, want %v (%s)", tried, tc.retries, res.RouteReason)
				}
			}
			if info, err := s.Refresh(ctx); err != nil || info.Tier != "nano" {
				t.Fatalf("%v %+v", err, info)
			}
		})
	}
}

// TestMCPAuto: the MCP tools route by imports too, and a chart comes back as image content.
func TestMCPAuto(t *testing.T) {
	ctx := context.Background()
	nanoEng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(nanoEng, dispatch.Config{Heavy: eng})
	t.Cleanup(func() { d.Close(); nanoEng.Close(ctx) })
	serverT, clientT := mcp.NewInMemoryTransports()
	if _, err := mcpserver.New(d, "test").Connect(ctx, serverT, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test"}, nil).Connect(ctx, clientT, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	call := func(args map[string]any) (*mcp.CallToolResult, agentbox.Result) {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: args})
		if err != nil {
			t.Fatal(err)
		}
		var out agentbox.Result
		b, _ := json.Marshal(res.StructuredContent)
		json.Unmarshal(b, &out)
		return res, out
	}
	res, out := call(map[string]any{"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nprint('drawn')"})
	if res.IsError || out.Tier != "heavy" || out.Stdout != "drawn\n" {
		t.Fatalf("%+v %+v", res, out)
	}
	// The text, then the figure once as an image (and its chart data as text).
	var images []*mcp.ImageContent
	for _, c := range res.Content {
		if img, ok := c.(*mcp.ImageContent); ok {
			images = append(images, img)
		}
	}
	if len(images) != 1 || images[0].MIMEType != "image/png" || !strings.HasPrefix(string(images[0].Data), "\x89PNG") {
		t.Fatalf("want the figure once as a PNG image, got %d images in %d contents", len(images), len(res.Content))
	}
	_, out = call(map[string]any{"code": "print(1 + 1)"})
	if out.Tier != "nano" || out.Stdout != "2\n" {
		t.Fatalf("%+v", out)
	}
	// A named session moves with its variables.
	call(map[string]any{"code": "rows = [1, 2, 3]", "session": "s"})
	_, out = call(map[string]any{"code": "import pandas as pd\nprint(pd.Series(rows).sum())", "session": "s"})
	if out.Tier != "heavy" || out.Stdout != "6\n" || !strings.Contains(out.RouteReason, "moved to heavy") {
		t.Fatalf("%+v", out)
	}
}
