package agentbox

import (
	"context"
	"net/http"
	"net/url"

	"github.com/entersandbox/agentbox/api"
)

// RegisterMCPServer registers a stdio MCP server that the server hosts in a sandbox of its own; its
// tools then appear on the server's MCP endpoint (/mcp) as "<name>__<tool>". Unless spec.Lazy, the
// server is started to list its tools: a name collision is ErrConflict, a server that cannot start
// or a bad spec ErrInvalidArgument.
func (c *Client) RegisterMCPServer(ctx context.Context, spec MCPServer) (*MCPServerInfo, error) {
	var out MCPServerInfo
	if err := c.doJSON(ctx, http.MethodPost, "/v1/mcp/servers", spec, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListMCPServers describes the hosted servers of the client's API key (every key's for an admin).
func (c *Client) ListMCPServers(ctx context.Context) ([]MCPServerInfo, error) {
	var out api.MCPServerList
	if err := c.doJSON(ctx, http.MethodGet, "/v1/mcp/servers", nil, &out); err != nil {
		return nil, err
	}
	return out.Servers, nil
}

// MCPServer describes one hosted server; ErrNotFound when there is none the key may see.
func (c *Client) MCPServer(ctx context.Context, name string) (*MCPServerInfo, error) {
	var out MCPServerInfo
	if err := c.doJSON(ctx, http.MethodGet, "/v1/mcp/servers/"+url.PathEscape(name), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteMCPServer stops a hosted server and deletes its registration.
func (c *Client) DeleteMCPServer(ctx context.Context, name string) error {
	return c.doJSON(ctx, http.MethodDelete, "/v1/mcp/servers/"+url.PathEscape(name), nil, nil)
}

// ListMCPTools lists the hosted servers' tools with their input schemas, as the MCP endpoint lists
// them beside its own (for agent frameworks that build their own tool list).
func (c *Client) ListMCPTools(ctx context.Context) ([]MCPTool, error) {
	var out api.MCPToolList
	if err := c.doJSON(ctx, http.MethodGet, "/v1/mcp/tools", nil, &out); err != nil {
		return nil, err
	}
	return out.Tools, nil
}
