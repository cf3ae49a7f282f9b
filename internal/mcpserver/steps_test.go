package mcpserver

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

// TestStepTools: an agent lists its session's steps, rewinds to undo a mistake, and forks.
func TestStepTools(t *testing.T) {
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
	srv, err := server.New(d, server.Config{APIKeys: []string{testKey}, MCP: HTTPHandler(d, "test")})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	client := mcp.NewClient(&mcp.Implementation{Name: "agentbox-test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp", HTTPClient: &http.Client{Transport: bearer{testKey}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })

	callTool(t, cs, "run_python", map[string]any{"session": "s", "code": "data = [1, 2, 3]"})          // step 1
	callTool(t, cs, "run_python", map[string]any{"session": "s", "code": "data.clear()  # a mistake"}) // step 2
	res, out := callTool(t, cs, "list_steps", map[string]any{"session": "s"})
	if res.IsError || out["current"] != float64(2) || !strings.Contains(text(res), "*2 cell exit=0 restorable: data.clear()") {
		t.Fatalf("list_steps: %s %v", text(res), out)
	}
	res, out = callTool(t, cs, "rewind", map[string]any{"session": "s", "step": 1})
	if res.IsError || out["current_step"] != float64(3) {
		t.Fatalf("rewind: %s %v", text(res), out)
	}
	if _, out := callTool(t, cs, "run_python", map[string]any{"session": "s", "code": "print(data)"}); out["stdout"] != "[1, 2, 3]\n" {
		t.Fatalf("after the rewind: %v", out)
	}
	res, out = callTool(t, cs, "fork", map[string]any{"session": "s", "step": 2, "new_session": "alt"})
	if res.IsError || out["session"] != "alt" {
		t.Fatalf("fork: %s %v", text(res), out)
	}
	if _, out := callTool(t, cs, "run_python", map[string]any{"session": "alt", "code": "print(data)"}); out["stdout"] != "[]\n" {
		t.Fatalf("the fork: %v", out)
	}
	for _, tc := range []struct {
		name string
		tool string
		args map[string]any
		want string
	}{
		{"unknown session", "list_steps", map[string]any{"session": "nope"}, "no session"},
		{"step past the end", "rewind", map[string]any{"session": "s", "step": 40}, "no step 40"},
		{"fork onto a taken name", "fork", map[string]any{"session": "s", "step": 1, "new_session": "alt"}, "exists already"},
		{"fork without a name", "fork", map[string]any{"session": "s", "step": 1}, "new_session"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := callTool(t, cs, tc.tool, tc.args)
			if !res.IsError || !strings.Contains(text(res), tc.want) {
				t.Fatalf("%s: %v %s", tc.tool, res.IsError, text(res))
			}
		})
	}
}
