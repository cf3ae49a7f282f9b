package server

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/mcphost"
)

// mcpServer is a server with MCP hosting over the shared nano engine (our stdlib test server runs
// there), with two keys and an admin key.
func mcpServer(t *testing.T) string {
	t.Helper()
	h, err := mcphost.New(mcphost.Config{Dir: t.TempDir(), Launchers: map[api.Tier]mcphost.Launcher{api.TierNano: &mcphost.NanoLauncher{Engine: eng}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	srv, err := New(sb, Config{APIKeys: []string{testKey, otherKey}, Keys: []APIKey{{Key: adminKey, Admin: true}}, MCPServers: h})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs.URL
}

const (
	otherKey = "other-key-0123456789abcdef"
	adminKey = "admin-key-0123456789abcdef"
)

func nanoServerSpec(t *testing.T, name string) api.MCPServer {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "mcphost", "testdata", "server.py"))
	if err != nil {
		t.Fatal(err)
	}
	return api.MCPServer{Name: name, Tier: api.TierNano, Command: []string{"python3", "server.py"}, Files: map[string]string{"server.py": string(src)},
		Tools: api.MCPToolFilter{Allow: []string{"echo", "add"}}}
}

func TestMCPServersEndpoints(t *testing.T) {
	base := mcpServer(t)
	r := doAt(t, base, call{method: "POST", path: "/v1/mcp/servers", body: mustJSON(nanoServerSpec(t, "py"))}, checkBoth)
	if r.status != http.StatusCreated {
		t.Fatalf("register: %d %s", r.status, r.body)
	}
	info := decodeInto[api.MCPServerInfo](t, r)
	if info.Status != "running" || len(info.ToolNames) != 2 || info.FileNames[0] != "server.py" || info.Files != nil {
		t.Fatalf("registered: %+v", info)
	}
	cases := []struct {
		name   string
		c      call
		mode   int
		status int
		code   string // of an error answer
		msg    string
	}{
		{"a second registration of the name", call{method: "POST", path: "/v1/mcp/servers", body: mustJSON(nanoServerSpec(t, "py"))}, checkBoth, 409, "conflict", "already registered"},
		{"a bad name", call{method: "POST", path: "/v1/mcp/servers", body: mustJSON(nanoServerSpec(t, "Bad Name"))}, checkResponse, 400, "invalid_argument", "name"},
		{"an unknown field", call{method: "POST", path: "/v1/mcp/servers", body: []byte(`{"name":"x","command":["a"],"colour":"red"}`)}, checkResponse, 400, "invalid_argument", "colour"},
		{"a tier this server lacks", call{method: "POST", path: "/v1/mcp/servers", body: []byte(`{"name":"x","command":["node","/srv/x.js"],"tier":"heavy"}`)}, checkBoth, 503, "unavailable", "no heavy tier"},
		{"the owner lists it", call{method: "GET", path: "/v1/mcp/servers"}, checkBoth, 200, "", `"name":"py"`},
		{"the owner gets it", call{method: "GET", path: "/v1/mcp/servers/py"}, checkBoth, 200, "", `"status":"running"`},
		{"the tools with their schemas", call{method: "GET", path: "/v1/mcp/tools"}, checkBoth, 200, "", `"name":"py__add"`},
		{"an unknown server", call{method: "GET", path: "/v1/mcp/servers/nosuch"}, checkBoth, 404, "not_found", "not registered"},
		{"another key does not see it", call{method: "GET", path: "/v1/mcp/servers/py", key: otherKey}, checkBoth, 404, "not_found", "not registered"},
		{"another key lists none", call{method: "GET", path: "/v1/mcp/servers", key: otherKey}, checkBoth, 200, "", `{"servers":[]}`},
		{"another key's tool list is empty", call{method: "GET", path: "/v1/mcp/tools", key: otherKey}, checkBoth, 200, "", `{"tools":[]}`},
		{"another key cannot delete it", call{method: "DELETE", path: "/v1/mcp/servers/py", key: otherKey}, checkBoth, 404, "not_found", "not registered"},
		{"an admin sees it", call{method: "GET", path: "/v1/mcp/servers/py", key: adminKey}, checkBoth, 200, "", `"name":"py"`},
		{"the owner deletes it", call{method: "DELETE", path: "/v1/mcp/servers/py"}, checkBoth, 204, "", ""},
		{"then it is gone", call{method: "GET", path: "/v1/mcp/servers/py"}, checkBoth, 404, "not_found", "not registered"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := doAt(t, base, tc.c, tc.mode)
			if tc.code != "" {
				wantError(t, r, tc.status, tc.code, tc.msg)
				return
			}
			if r.status != tc.status || !contains(r.body, tc.msg) {
				t.Fatalf("%d %s, want %d with %q", r.status, r.body, tc.status, tc.msg)
			}
		})
	}
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }

func TestMCPServersWithoutHostingAre503(t *testing.T) {
	for _, c := range []call{{method: "GET", path: "/v1/mcp/servers"}, {method: "GET", path: "/v1/mcp/tools"}, {method: "GET", path: "/v1/mcp/servers/x"},
		{method: "DELETE", path: "/v1/mcp/servers/x"}, {method: "POST", path: "/v1/mcp/servers", body: []byte(`{"name":"x","command":["a"]}`)}} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			wantError(t, do(t, c, checkBoth), 503, "unavailable", "does not host MCP servers")
		})
	}
}
