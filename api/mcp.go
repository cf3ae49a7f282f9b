package api

import "encoding/json"

// MCPServer registers a stdio MCP server that agentbox hosts in a sandbox of its own (POST
// /v1/mcp/servers). Its tools appear on agentbox's MCP gateway as "<name>__<tool>".
type MCPServer struct {
	// Name is 1 to 40 of [a-z0-9_-], starting with a letter or digit, without "__" (the separator).
	Name string `json:"name"`
	// Command is the server's argv inside the sandbox, e.g. ["node", "/srv/index.js"] or
	// ["python3", "/srv/server.py"]. On the nano tier it must be ["python3", "<one of Files>"].
	Command []string `json:"command"`
	// Files are written under /srv (path relative to it => content), read-only to the server.
	Files map[string]string `json:"files,omitempty"`
	// Packages are prepared on the host and mounted read-only: "npm:<name>[@version]" (heavy only;
	// their bin/ entries are on PATH, the modules at /opt/mcp/npm/node_modules).
	Packages []string `json:"packages,omitempty"`
	// Tier is "heavy" (default: gVisor, Node and Python) or "nano" (a stdlib-only Python server).
	Tier Tier `json:"tier,omitempty"`
	// Env is added to the server's environment. Secrets never go here: they are injected by the
	// egress proxy per Network.Secrets, outside the sandbox.
	Env map[string]string `json:"env,omitempty"`
	// Network is the server's egress policy; nil is offline.
	Network *NetworkPolicy `json:"network,omitempty"`
	// Limits bound the server's sandbox and its calls; zero fields take the defaults.
	Limits MCPLimits `json:"limits,omitempty"`
	// Tools filters what the gateway exposes and relays.
	Tools MCPToolFilter `json:"tools,omitempty"`
	// DLP is what happens when a tool call's arguments or text results contain secrets or personal
	// data: "block" (default), "redact", "log" or "off".
	DLP string `json:"dlp,omitempty"`
	// Lazy registers without starting the server: its tools are learnt (and checked for
	// collisions) on first use. By default registration starts it once to list and check its tools.
	Lazy bool `json:"lazy,omitempty"`
}

// MCPLimits bound a hosted MCP server. Zero fields mean: 512 MiB, 30 s per call, 10 min idle,
// 1 MiB per JSON-RPC line.
type MCPLimits struct {
	MemoryLimitMB int `json:"memory_limit_mb,omitempty"`
	CallTimeoutMS int `json:"call_timeout_ms,omitempty"`
	// IdleMS stops the server after this long without a call (the next call starts it again).
	IdleMS int `json:"idle_ms,omitempty"`
	// MaxLineBytes caps one line the server writes; a longer one is a protocol fault that stops it.
	MaxLineBytes int `json:"max_line_bytes,omitempty"`
}

// MCPToolFilter selects a server's tools by their own (unprefixed) names. An empty Allow allows
// all; Deny wins over Allow.
type MCPToolFilter struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// MCPServerInfo is a registered server and its state (GET /v1/mcp/servers[/name]). Files are
// not repeated (FileNames lists them).
type MCPServerInfo struct {
	MCPServer
	// Status is "stopped", "starting", "running" or "failed" (the last start failed; the next
	// call tries again after a backoff).
	Status string `json:"status"`
	// ToolNames are the exposed tool names ("<name>__<tool>"), after the filter; empty until the
	// server was first started.
	ToolNames []string `json:"tool_names"`
	FileNames []string `json:"file_names"`
	Restarts  int      `json:"restarts"`
	// DroppedLines counts the lines the server wrote that were not JSON-RPC messages (dropped).
	DroppedLines int    `json:"dropped_lines"`
	LastError    string `json:"last_error,omitempty"`
	Created      string `json:"created"`
}

// MCPServerList is GET /v1/mcp/servers.
type MCPServerList struct {
	Servers []MCPServerInfo `json:"servers"`
}

// MCPTool is one exposed tool of a hosted server with its schema (GET /v1/mcp/tools).
type MCPTool struct {
	// Name is the gateway's name, "<server>__<tool>".
	Name        string          `json:"name"`
	Server      string          `json:"server"`
	Tool        string          `json:"tool"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"input_schema"`
}

// MCPToolList is GET /v1/mcp/tools.
type MCPToolList struct {
	Tools []MCPTool `json:"tools"`
}
