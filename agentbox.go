// Package agentbox is the Go SDK of EnterSandBox: a client for an `agentbox serve` that runs untrusted
// Python in isolated sandboxes and returns its output, exit code, a structured error and the files it
// wrote.
//
// The package needs nothing but the standard library and the API's types (package api), so fetching
// it does not bring in the sandboxes themselves. To run sandboxes inside your own process instead of
// calling a server, use package github.com/entersandbox/agentbox/local, which carries the interpreter.
package agentbox

import "github.com/entersandbox/agentbox/api"

// Types shared with the HTTP API.
type (
	Result         = api.Result
	Error          = api.Error
	Limits         = api.Limits
	RunRequest     = api.RunRequest
	File           = api.File
	RunBody        = api.RunBody
	RunResponse    = api.RunResponse
	SessionRequest = api.SessionRequest
	SessionInfo    = api.Session
	FileInfo       = api.FileInfo
	Tier           = api.Tier
	NetworkPolicy  = api.NetworkPolicy
	HostRule       = api.HostRule
	SecretRule     = api.SecretRule
	Intent         = api.Intent
	NetworkEvent   = api.NetworkEvent
	// Hosted MCP servers (see Client.RegisterMCPServer).
	MCPServer     = api.MCPServer
	MCPServerInfo = api.MCPServerInfo
	MCPLimits     = api.MCPLimits
	MCPToolFilter = api.MCPToolFilter
	MCPTool       = api.MCPTool

	AuditEvent        = api.AuditEvent
	AuditEventList    = api.AuditEventList
	AuditReport       = api.AuditReport
	AuditVerification = api.AuditVerification
	AuditCheckpoint   = api.AuditCheckpoint
	AuditCount        = api.AuditCount
	// Output is one rich result (Result.Results): its helpers Text, HTML, PNG, JSON, Chart and Table
	// read its representations; Result.MainResult is the final expression's value.
	Output      = api.Output
	Chart       = api.Chart
	ChartAxis   = api.ChartAxis
	ChartSeries = api.ChartSeries
	Table       = api.Table
	TableSchema = api.TableSchema
	TableField  = api.TableField
	Artifact    = api.Artifact
)

// MIME types of the structured representations (see Output).
const (
	MIMEChart  = api.MIMEChart
	MIMETable  = api.MIMETable
	MIMEPlotly = api.MIMEPlotly
)
