package agentbox_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

func TestClientMCPServers(t *testing.T) {
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
	srv, err := server.New(d, server.Config{APIKeys: []string{apiKey}, MCPServers: h})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	c, err := agentbox.New(hs.URL, agentbox.WithAPIKey(apiKey))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join("internal", "mcphost", "testdata", "server.py"))
	if err != nil {
		t.Fatal(err)
	}
	spec := agentbox.MCPServer{Name: "py", Tier: agentbox.Tier("nano"), Command: []string{"python3", "server.py"}, Files: map[string]string{"server.py": string(src)},
		Tools: agentbox.MCPToolFilter{Allow: []string{"echo"}}}
	t.Run("register", func(t *testing.T) {
		info, err := c.RegisterMCPServer(ctx, spec)
		if err != nil || info.Status != mcphost.StatusRunning || len(info.ToolNames) != 1 || info.ToolNames[0] != "py__echo" {
			t.Fatalf("%+v %v", info, err)
		}
	})
	t.Run("a second registration is a conflict", func(t *testing.T) {
		if _, err := c.RegisterMCPServer(ctx, spec); !errors.Is(err, agentbox.ErrConflict) {
			t.Fatalf("%v", err)
		}
	})
	t.Run("list, get and tools", func(t *testing.T) {
		list, err := c.ListMCPServers(ctx)
		if err != nil || len(list) != 1 || list[0].Name != "py" {
			t.Fatalf("%+v %v", list, err)
		}
		info, err := c.MCPServer(ctx, "py")
		if err != nil || info.Name != "py" {
			t.Fatalf("%+v %v", info, err)
		}
		tools, err := c.ListMCPTools(ctx)
		if err != nil || len(tools) != 1 || tools[0].Name != "py__echo" || len(tools[0].InputSchema) == 0 {
			t.Fatalf("%+v %v", tools, err)
		}
	})
	t.Run("delete", func(t *testing.T) {
		if err := c.DeleteMCPServer(ctx, "py"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.MCPServer(ctx, "py"); !errors.Is(err, agentbox.ErrNotFound) {
			t.Fatalf("after delete: %v", err)
		}
	})
}
