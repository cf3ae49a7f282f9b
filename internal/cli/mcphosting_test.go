package cli

import (
	"bytes"
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// TestMCPAddListRemove: `agentbox mcp add|list|rm` against a server hosting MCP servers on nano.
func TestMCPAddListRemove(t *testing.T) {
	ctx := context.Background()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{})
	h, err := mcphost.New(mcphost.Config{Dir: t.TempDir(), Launchers: map[api.Tier]mcphost.Launcher{api.TierNano: &mcphost.NanoLauncher{Engine: eng}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); d.Close(); eng.Close(ctx) })
	const key = "cli-test-key-0123456789"
	srv, err := server.New(d, server.Config{APIKeys: []string{key}, MCPServers: h})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	src, _ := filepath.Abs(filepath.Join("..", "mcphost", "testdata", "server.py"))
	conn := []string{"--url", hs.URL, "--api-key", key}
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"add", append(append([]string{"mcp", "add"}, conn...), "--tier", "nano", "--file", "server.py="+src, "--allow", "echo", "--allow", "add", "py", "--", "python3", "server.py"), 0,
			"registered py (nano, running): py__echo py__add", ""},
		{"add again is refused", append(append([]string{"mcp", "add"}, conn...), "--tier", "nano", "--file", "server.py="+src, "py", "--", "python3", "server.py"), exitInternal, "", "already registered"},
		{"add without a command", append([]string{"mcp", "add"}, conn...), exitUsage, "", "usage: agentbox mcp add"},
		{"add with a bad name", append(append([]string{"mcp", "add"}, conn...), "--tier", "nano", "--file", "server.py="+src, "Bad", "--", "python3", "server.py"), exitUsage, "", "name"},
		{"list", append([]string{"mcp", "list"}, conn...), 0, "py    nano  running", ""},
		{"list the tools", append([]string{"mcp", "list", "--tools"}, conn...), 0, "py__add", ""},
		{"list as JSON", append([]string{"mcp", "ls", "--json"}, conn...), 0, `"tool_names": [`, ""},
		{"rm", append([]string{"mcp", "rm"}, append(conn, "py")...), 0, "removed py", ""},
		{"rm again", append([]string{"mcp", "rm"}, append(conn, "py")...), exitInternal, "", "not registered"},
		{"list after rm", append([]string{"mcp", "list"}, conn...), 0, "NAME", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(ctx, tc.args, strings.NewReader(""), &out, &errOut)
			if code != tc.code || !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out.String(), errOut.String(), tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}
