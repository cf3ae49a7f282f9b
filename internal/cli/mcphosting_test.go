package cli

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

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

// TestMCPStdioListsHostedServers: `agentbox mcp --mcp-dir DIR` serves the registrations in DIR on
// stdio beside its own tools, and relays a call to one.
func TestMCPStdioListsHostedServers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	h, err := mcphost.New(mcphost.Config{Dir: dir, Launchers: map[api.Tier]mcphost.Launcher{api.TierNano: &mcphost.NanoLauncher{Engine: eng}}})
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join("..", "mcphost", "testdata", "server.py"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Register(ctx, api.MCPServer{Name: "py", Tier: api.TierNano, Command: []string{"python3", "server.py"}, Files: map[string]string{"server.py": string(src)}}); err != nil {
		t.Fatal(err)
	}
	h.Close()
	eng.Close(ctx)

	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		done <- Main(mctx, []string{"mcp", "--heavy", "off", "--mcp-dir", dir}, inR, outW, io.Discard)
		outW.Close()
	}()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t"}, nil).Connect(ctx, &mcp.IOTransport{Reader: outR, Writer: inW}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, tool.Name)
	}
	if !slices.Contains(names, "run_python") || !slices.Contains(names, "py__add") {
		t.Fatalf("tools %v", names)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "py__add", Arguments: map[string]any{"a": 20, "b": 22}})
	if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != "42" {
		t.Fatalf("%+v %v", res, err)
	}
	cs.Close()
	inW.Close()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
}
