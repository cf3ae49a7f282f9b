package mcpserver

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
)

// BuiltinTools are the names of agentbox's own tools, which no hosted server's tool may take.
var BuiltinTools = []string{"run_python", "write_file", "read_file", "list_files", "list_steps", "rewind", "fork"}

// Hosted is the registry of hosted MCP servers whose tools the gateway lists beside its own, as
// "<server>__<tool>" (*mcphost.Host).
type Hosted interface {
	// Tools lists the exposed tools ctx's tenant sees.
	Tools(ctx context.Context) []api.MCPTool
	// Call relays a call; failures of the call are results with IsError set.
	Call(ctx context.Context, name string, args json.RawMessage) (*mcp.CallToolResult, error)
	// Watch calls fn whenever the tools may have changed.
	Watch(fn func()) (cancel func())
}

// NewGateway is New with the hosted servers' tools (those of ctx's tenant) listed and relayed;
// they follow the registry: a registration, a deletion or a server's own tools/list_changed
// changes the list, and the SDK tells connected clients with notifications/tools/list_changed.
// The returned stop ends the following.
func NewGateway(ctx context.Context, sb Sandboxes, version string, hosted Hosted) (s *mcp.Server, stop func()) {
	s = New(sb, version)
	if hosted == nil {
		return s, func() {}
	}
	g := &gateway{s: s, h: hosted, ctx: ctx, have: map[string]string{}}
	cancel := hosted.Watch(g.sync)
	g.sync()
	return s, cancel
}

// gateway keeps one MCP server's hosted tools in step with the registry.
type gateway struct {
	s    *mcp.Server
	h    Hosted
	ctx  context.Context   // names the tenant whose tools are listed
	mu   sync.Mutex        // one sync at a time
	have map[string]string // tool name -> its JSON, as added; guarded by mu
}

func (g *gateway) sync() {
	g.mu.Lock()
	defer g.mu.Unlock()
	seen := map[string]bool{}
	for _, t := range g.h.Tools(g.ctx) {
		seen[t.Name] = true
		key, _ := json.Marshal(t)
		if g.have[t.Name] == string(key) {
			continue
		}
		g.have[t.Name] = string(key)
		name := t.Name
		g.s.AddTool(&mcp.Tool{Name: name, Description: t.Description, InputSchema: t.InputSchema}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			res, err := g.h.Call(ctx, name, req.Params.Arguments)
			if err != nil {
				return nil, err
			}
			return res, nil
		})
	}
	var gone []string
	for name := range g.have {
		if !seen[name] {
			gone = append(gone, name)
			delete(g.have, name)
		}
	}
	if len(gone) > 0 {
		g.s.RemoveTools(gone...)
	}
}

// HTTPGateway is HTTPHandler with the hosted servers: each tenant (API key) gets an MCP server of
// its own, listing its own hosted servers' tools (an admin's lists all).
func HTTPGateway(sb Sandboxes, version string, hosted Hosted) http.Handler {
	if hosted == nil {
		return HTTPHandler(sb, version)
	}
	var mu sync.Mutex
	servers := map[dispatch.Tenant]*mcp.Server{} // guarded by mu; one per tenant, for the process's life
	return mcp.NewStreamableHTTPHandler(func(r *http.Request) *mcp.Server {
		t := dispatch.TenantOf(r.Context())
		t.Limits = dispatch.TenantLimits{}
		mu.Lock()
		defer mu.Unlock()
		s, ok := servers[t]
		if !ok {
			s, _ = NewGateway(dispatch.WithTenant(context.Background(), t), sb, version, hosted)
			servers[t] = s
		}
		return s
	}, nil)
}
