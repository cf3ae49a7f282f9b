// Package mcpserver exposes agentbox to AI agents over the Model Context Protocol, with the official Go
// SDK: `agentbox mcp` on stdio and `agentbox serve` at /mcp (streamable HTTP).
//
// Tools: run_python (code; optional named session whose variables and files persist; tier auto by
// default, so numpy or pandas code runs on the heavy tier where this host has it), write_file,
// read_file and list_files (on a named session's filesystem). Charts a run makes come back as image
// content. Session names are private to one MCP connection.
package mcpserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
)

// Sandboxes is what the tools need to place runs and sessions (*dispatch.Dispatcher).
type Sandboxes interface {
	Run(ctx context.Context, req api.RunRequest, out dispatch.Output) (*api.RunResponse, error)
	NewSession(ctx context.Context, req api.SessionRequest) (*dispatch.Session, error)
	Session(ctx context.Context, id string) (*dispatch.Session, error)
}

// maxReadBytes caps read_file's answer.
const maxReadBytes = 4 << 20

type tools struct {
	sb       Sandboxes
	mu       sync.Mutex
	sessions map[string]string // connection id + "/" + name -> engine session id
}

// New returns an MCP server with agentbox's tools.
func New(sb Sandboxes, version string) *mcp.Server {
	t := &tools{sb: sb, sessions: map[string]string{}}
	s := mcp.NewServer(&mcp.Implementation{Name: "agentbox", Title: "agentbox Python sandbox", Version: version}, &mcp.ServerOptions{
		Instructions: "Run Python 3 in an isolated sandbox with no network. Code that imports only the standard library " +
			"runs on the fast nano tier; numpy, pandas, matplotlib, scipy and other third-party imports go to the heavy tier " +
			"when this server has it. Pass a session name to keep variables, imports and files between calls (a session " +
			"moves to the heavy tier with its state when it needs it); files live under /data, /output, /tmp and /home/user. " +
			"Figures a run shows or leaves open come back as PNG images.",
	})
	mcp.AddTool(s, &mcp.Tool{Name: "run_python", Description: "Run Python code in a sandbox and return stdout, stderr, the exit code and any error. " +
		"Without session, every call starts a fresh interpreter; with session, state persists across calls."}, t.runPython)
	mcp.AddTool(s, &mcp.Tool{Name: "write_file", Description: "Write a file into a session's sandbox filesystem (parent directories are created)."}, t.writeFile)
	mcp.AddTool(s, &mcp.Tool{Name: "read_file", Description: "Read a file from a session's sandbox filesystem (text, or base64 for binary content)."}, t.readFile)
	mcp.AddTool(s, &mcp.Tool{Name: "list_files", Description: "List a directory of a session's sandbox filesystem."}, t.listFiles)
	return s
}

// HTTPHandler serves the tools over streamable HTTP.
func HTTPHandler(sb Sandboxes, version string) http.Handler {
	s := New(sb, version)
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
}

// RunInput is run_python's input.
type RunInput struct {
	Code      string `json:"code" jsonschema:"Python source to run"`
	Session   string `json:"session,omitempty" jsonschema:"name of a session to run in (created on first use); omit for a fresh sandbox"`
	TimeoutMS int    `json:"timeout_ms,omitempty" jsonschema:"wall-clock limit in milliseconds (default 30000)"`
	Tier      string `json:"tier,omitempty" jsonschema:"auto (default: chosen from the imports), nano (standard library, fastest) or heavy (numpy, pandas, matplotlib...)"`
}

// FileInput names a file or directory in a session.
type FileInput struct {
	Session string `json:"session" jsonschema:"the session whose filesystem to use"`
	Path    string `json:"path" jsonschema:"absolute path in the sandbox, e.g. /data/input.csv"`
}

// WriteInput is write_file's input.
type WriteInput struct {
	Session string `json:"session" jsonschema:"the session whose filesystem to use (created on first use)"`
	Path    string `json:"path" jsonschema:"absolute path in the sandbox, e.g. /data/input.csv"`
	Content string `json:"content" jsonschema:"the file's content"`
	Base64  bool   `json:"base64,omitempty" jsonschema:"content is base64-encoded binary"`
}

// ReadOutput is read_file's output.
type ReadOutput struct {
	Path    string `json:"path"`
	Content string `json:"content"`
	Base64  bool   `json:"base64"`
	Size    int    `json:"size"`
}

// ListOutput is list_files' output.
type ListOutput struct {
	Dir   string         `json:"dir"`
	Files []api.FileInfo `json:"files"`
}

// WriteOutput is write_file's output.
type WriteOutput struct {
	Path string `json:"path"`
	Size int    `json:"size"`
}

func connID(req *mcp.CallToolRequest) string {
	if req != nil && req.Session != nil {
		return req.Session.ID()
	}
	return ""
}

// session finds (or, with create, starts) the named session of this connection.
func (t *tools) session(ctx context.Context, req *mcp.CallToolRequest, name string, create bool, tier api.Tier) (*dispatch.Session, error) {
	if name == "" {
		return nil, errors.New("session is required: files live in a named session (run_python with the same session name sees them)")
	}
	key := connID(req) + "/" + name
	t.mu.Lock()
	defer t.mu.Unlock()
	if id, ok := t.sessions[key]; ok {
		if s, err := t.sb.Session(ctx, id); err == nil {
			if on := s.Info().Tier; tier != "" && tier != api.TierAuto && tier != on {
				return nil, fmt.Errorf("session %q is on the %s tier; tier %q applies when a session starts (use another session name)", name, on, tier)
			}
			return s, nil
		}
		delete(t.sessions, key) // closed or reaped; start again below if allowed
		if !create {
			return nil, fmt.Errorf("session %q has ended (idle too long, or its interpreter stopped); run_python with it starts a new one", name)
		}
	}
	if !create {
		return nil, fmt.Errorf("no session %q: run_python or write_file with it creates it", name)
	}
	s, err := t.sb.NewSession(ctx, api.SessionRequest{Tier: tier})
	if err != nil {
		return nil, err
	}
	t.sessions[key] = s.ID()
	return s, nil
}

func (t *tools) runPython(ctx context.Context, req *mcp.CallToolRequest, in RunInput) (*mcp.CallToolResult, *api.Result, error) {
	var res *api.Result
	if in.Session == "" {
		resp, err := t.sb.Run(ctx, api.RunRequest{Code: in.Code, Tier: api.Tier(in.Tier), Limits: api.Limits{TimeoutMS: in.TimeoutMS}}, dispatch.Output{})
		if err != nil {
			return nil, nil, err
		}
		res = &resp.Result
	} else {
		if in.TimeoutMS != 0 {
			return nil, nil, errors.New("timeout_ms applies to runs without a session; a session keeps the limits it was created with")
		}
		s, err := t.session(ctx, req, in.Session, true, api.Tier(in.Tier))
		if err != nil {
			return nil, nil, err
		}
		if res, err = s.Run(ctx, in.Code, dispatch.Output{}); err != nil {
			return nil, nil, err
		}
	}
	// Images go in the content, where clients show them; the structured result names no bytes (its
	// schema, inferred from api.Result, cannot say that []byte travels as base64).
	content := []mcp.Content{&mcp.TextContent{Text: summary(res)}}
	for _, a := range res.Artifacts {
		if strings.HasPrefix(a.MIME, "image/") {
			content = append(content, &mcp.ImageContent{Data: a.Data, MIMEType: a.MIME})
		}
	}
	structured := *res
	structured.Artifacts = nil
	return &mcp.CallToolResult{Content: content, IsError: res.Error != nil}, &structured, nil
}

// summary is the text content an agent reads first.
func summary(res *api.Result) string {
	out := res.Stdout
	if res.Stderr != "" {
		out += "\n[stderr]\n" + res.Stderr
	}
	if res.Error != nil {
		out += fmt.Sprintf("\n[%s] %s (exit code %d)", res.Error.Type, res.Error.Message, res.ExitCode)
	} else if res.ExitCode != 0 {
		out += fmt.Sprintf("\n[exit code %d]", res.ExitCode)
	}
	if out == "" {
		out = "(no output)"
	}
	return out
}

func (t *tools) writeFile(ctx context.Context, req *mcp.CallToolRequest, in WriteInput) (*mcp.CallToolResult, WriteOutput, error) {
	if err := nano.ValidatePath(in.Path); err != nil {
		return nil, WriteOutput{}, err
	}
	data := []byte(in.Content)
	if in.Base64 {
		var err error
		if data, err = base64.StdEncoding.DecodeString(in.Content); err != nil {
			return nil, WriteOutput{}, fmt.Errorf("content is not valid base64: %w", err)
		}
	}
	s, err := t.session(ctx, req, in.Session, true, api.TierAuto)
	if err != nil {
		return nil, WriteOutput{}, err
	}
	if err := s.WriteFile(ctx, in.Path, data); err != nil {
		return nil, WriteOutput{}, err
	}
	return nil, WriteOutput{Path: in.Path, Size: len(data)}, nil
}

func (t *tools) readFile(ctx context.Context, req *mcp.CallToolRequest, in FileInput) (*mcp.CallToolResult, ReadOutput, error) {
	if err := nano.ValidatePath(in.Path); err != nil {
		return nil, ReadOutput{}, err
	}
	s, err := t.session(ctx, req, in.Session, false, "")
	if err != nil {
		return nil, ReadOutput{}, err
	}
	data, err := s.ReadFile(ctx, in.Path, maxReadBytes)
	if err != nil {
		return nil, ReadOutput{}, err
	}
	out := ReadOutput{Path: in.Path, Size: len(data)}
	if utf8.Valid(data) {
		out.Content = string(data)
	} else {
		out.Content, out.Base64 = base64.StdEncoding.EncodeToString(data), true
	}
	// An image (a chart the program saved) is also shown as one, which is what an agent can look at.
	if mime := http.DetectContentType(data); strings.HasPrefix(mime, "image/") {
		return &mcp.CallToolResult{Content: []mcp.Content{
			&mcp.TextContent{Text: fmt.Sprintf("%s: %s, %d bytes", in.Path, mime, len(data))},
			&mcp.ImageContent{Data: data, MIMEType: mime},
		}}, out, nil
	}
	return nil, out, nil
}

func (t *tools) listFiles(ctx context.Context, req *mcp.CallToolRequest, in FileInput) (*mcp.CallToolResult, ListOutput, error) {
	if in.Path == "" {
		in.Path = "/"
	}
	if err := nano.ValidatePath(in.Path); err != nil {
		return nil, ListOutput{}, err
	}
	s, err := t.session(ctx, req, in.Session, false, "")
	if err != nil {
		return nil, ListOutput{}, err
	}
	files, err := s.ListFiles(ctx, in.Path)
	if err != nil {
		return nil, ListOutput{}, err
	}
	return nil, ListOutput{Dir: in.Path, Files: files}, nil
}
