// Package mcpserver exposes agentbox to AI agents over the Model Context Protocol, with the official Go
// SDK: `agentbox mcp` on stdio and `agentbox serve` at /mcp (streamable HTTP).
//
// Tools: run_python (code; optional named session whose variables and files persist; tier auto by
// default, so numpy or pandas code runs on the heavy tier where this host has it), write_file,
// read_file and list_files (on a named session's filesystem). Charts a run makes come back as image
// content. Session names are private to one MCP connection, and its sessions are closed when it ends.
package mcpserver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/limits"
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
	sb Sandboxes
	mu sync.Mutex
	// names are the connections' session names; guarded by mu, which is never held while a
	// session starts.
	names map[nameKey]*named
	// watched are the connections whose end is being waited for, to drop their names; guarded by mu.
	watched map[*mcp.ServerSession]bool
}

// nameKey is a session name within one MCP connection (conn is nil for calls outside one).
type nameKey struct {
	conn *mcp.ServerSession
	name string
}

// named is the engine session a name stands for. The call that reserved the name starts the session
// and then closes ready; id and err are set before, so that whoever waited on ready may read them.
type named struct {
	ready chan struct{}
	id    string
	err   error
	// turn lets one tool call at a time use the session: agents send parallel calls on one name,
	// and a dispatch session refuses a second request while it is busy (conflict) instead of queueing.
	turn chan struct{}
}

// New returns an MCP server with agentbox's tools.
func New(sb Sandboxes, version string) *mcp.Server {
	s, _ := newServer(sb, version)
	return s
}

func newServer(sb Sandboxes, version string) (*mcp.Server, *tools) {
	t := &tools{sb: sb, names: map[nameKey]*named{}, watched: map[*mcp.ServerSession]bool{}}
	s := mcp.NewServer(&mcp.Implementation{Name: "agentbox", Title: "agentbox Python sandbox", Version: version}, &mcp.ServerOptions{
		Instructions: "Run Python 3 in an isolated sandbox with no network. Code that imports only the standard library " +
			"runs on the fast nano tier; numpy, pandas, matplotlib, scipy and other third-party imports go to the heavy tier " +
			"when this server has it. Pass a session name to keep variables, imports and files between calls (a session " +
			"moves to the heavy tier with its state when it needs it); files live under /data, /output, /tmp and /home/user. " +
			"Figures a run shows or leaves open come back as PNG images.",
	})
	mcp.AddTool(s, &mcp.Tool{Name: "run_python", Description: "Run Python code in a sandbox and return stdout, stderr, the exit code and any error. " +
		"Without session, every call starts a fresh interpreter; with session, state persists across calls. " +
		"The sandbox is offline unless network (or task/intent) asks for hosts the server's ceiling allows; " +
		"network_events in the result say what it reached and what was denied. " +
		"Rich results (the final expression's value, display(), figures, DataFrames) come as images and text.",
		InputSchema: runInputSchema, OutputSchema: resultSchema}, capErrors(t.runPython))
	mcp.AddTool(s, &mcp.Tool{Name: "write_file", Description: "Write a file into a session's sandbox filesystem (parent directories are created)."}, capErrors(t.writeFile))
	mcp.AddTool(s, &mcp.Tool{Name: "read_file", Description: "Read a file from a session's sandbox filesystem (text, or base64 for binary content)."}, capErrors(t.readFile))
	mcp.AddTool(s, &mcp.Tool{Name: "list_files", Description: "List a directory of a session's sandbox filesystem."}, capErrors(t.listFiles))
	t.addStepTools(s)
	mcp.AddTool(s, &mcp.Tool{Name: "run_command", Description: runCommandDescription}, capErrors(t.runCommand))
	return s, t
}

// maxErrorText caps the text of a tool's error: errors may quote what a guest wrote, and an agent's
// context is no place for megabytes of it.
const maxErrorText = 4 << 10

// cappedError is an error whose text was cut to maxErrorText; it still unwraps to the original.
type cappedError struct {
	err  error
	text string
}

func (e *cappedError) Error() string { return e.text }
func (e *cappedError) Unwrap() error { return e.err }

// capErrors makes a tool handler's errors short enough for an agent to read.
func capErrors[In, Out any](h mcp.ToolHandlerFor[In, Out]) mcp.ToolHandlerFor[In, Out] {
	return func(ctx context.Context, req *mcp.CallToolRequest, in In) (*mcp.CallToolResult, Out, error) {
		res, out, err := h(ctx, req, in)
		if err != nil && len(err.Error()) > maxErrorText {
			err = &cappedError{err: err, text: limits.Text(err.Error(), maxErrorText)}
		}
		return res, out, err
	}
}

// HTTPHandler serves the tools over streamable HTTP.
func HTTPHandler(sb Sandboxes, version string) http.Handler {
	s := New(sb, version)
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
}

// runInputSchema is RunInput's schema, where a network rule may be a host string or an object, as in
// the HTTP API (api.HostRule decodes both).
var runInputSchema = func() *jsonschema.Schema {
	obj, err := jsonschema.ForType(reflect.TypeFor[api.HostRule](), nil)
	if err != nil {
		panic(err)
	}
	rule := &jsonschema.Schema{AnyOf: []*jsonschema.Schema{{Type: "string", Description: "a host: name, *.name, address or CIDR"}, obj}}
	s, err := jsonschema.For[RunInput](&jsonschema.ForOptions{TypeSchemas: map[reflect.Type]*jsonschema.Schema{reflect.TypeFor[api.HostRule](): rule}})
	if err != nil {
		panic(err)
	}
	return s
}()

// RunInput is run_python's input.
type RunInput struct {
	Code      string `json:"code" jsonschema:"Python source to run"`
	Session   string `json:"session,omitempty" jsonschema:"name of a session to run in (created on first use); omit for a fresh sandbox"`
	TimeoutMS int    `json:"timeout_ms,omitempty" jsonschema:"wall-clock limit in milliseconds (default 30000)"`
	Tier      string `json:"tier,omitempty" jsonschema:"auto (default: chosen from the imports), nano (standard library, fastest) or heavy (numpy, pandas, matplotlib...)"`
	// Network, Task and Intent are the run's (or the new session's) network; on a session that has
	// run cells, Network replaces its policy.
	Network *api.NetworkPolicy `json:"network,omitempty" jsonschema:"the network the sandbox may use, inside the server's ceiling: allow (hosts as {\"host\": \"pypi.org\"} objects, optionally with methods, paths), deny, dlp (block, redact, log, off), inspect_tls; omit for offline. On an existing session it replaces the session's policy."`
	Task    string             `json:"task,omitempty" jsonschema:"the trusted task text: http(s) URLs in it are granted read-only, inside the server's ceiling"`
	Intent  *api.Intent        `json:"intent,omitempty" jsonschema:"what the task needs: packages (pip names: the package index, read-only), urls (read-only), git (https remotes to fetch)"`
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

func connOf(req *mcp.CallToolRequest) *mcp.ServerSession {
	if req == nil {
		return nil
	}
	return req.Session
}

// session finds (or, with create, starts) the named session of this connection and waits for its
// turn on it; the caller calls done when its call is over. Only the name map is locked: a session
// starting (seconds on heavy) holds up only the calls that use the same name.
func (t *tools) session(ctx context.Context, req *mcp.CallToolRequest, name string, create bool, sreq api.SessionRequest) (s *dispatch.Session, done func(), err error) {
	s, _, done, err = t.sessionStarted(ctx, req, name, create, sreq)
	return s, done, err
}

// sessionStarted is session, also saying whether this call started it (with sreq).
func (t *tools) sessionStarted(ctx context.Context, req *mcp.CallToolRequest, name string, create bool, sreq api.SessionRequest) (s *dispatch.Session, started bool, done func(), err error) {
	s, n, started, err := t.find(ctx, req, name, create, sreq)
	if err != nil {
		return nil, false, nil, err
	}
	select {
	case n.turn <- struct{}{}:
		return s, started, func() { <-n.turn }, nil
	case <-ctx.Done():
		return nil, false, nil, ctx.Err()
	}
}

// find is session without the turn. sreq is the session to start (its tier, network, task and intent);
// an existing session must be on sreq.Tier, when one is given.
func (t *tools) find(ctx context.Context, req *mcp.CallToolRequest, name string, create bool, sreq api.SessionRequest) (*dispatch.Session, *named, bool, error) {
	tier := sreq.Tier
	if name == "" {
		return nil, nil, false, errors.New("session is required: files live in a named session (run_python with the same session name sees them)")
	}
	key := nameKey{connOf(req), name}
	for {
		t.mu.Lock()
		n, ok := t.names[key]
		if !ok {
			if !create {
				t.mu.Unlock()
				return nil, nil, false, fmt.Errorf("no session %q: run_python or write_file with it creates it", name)
			}
			n = &named{ready: make(chan struct{}), turn: make(chan struct{}, 1)}
			t.names[key] = n
			t.pruneLocked()
			t.watchLocked(key.conn)
			t.mu.Unlock()
			s, err := t.start(ctx, key, n, sreq)
			return s, n, true, err
		}
		t.mu.Unlock()
		select {
		case <-n.ready:
		case <-ctx.Done():
			return nil, nil, false, ctx.Err()
		}
		if n.err != nil {
			return nil, nil, false, n.err
		}
		if s, err := t.sb.Session(ctx, n.id); err == nil {
			if on := s.Info().Tier; tier != "" && tier != api.TierAuto && tier != on {
				return nil, nil, false, fmt.Errorf("session %q is on the %s tier; tier %q applies when a session starts (use another session name)", name, on, tier)
			}
			return s, n, false, nil
		}
		t.mu.Lock()
		if t.names[key] == n {
			delete(t.names, key) // closed or reaped; start again if allowed
		}
		t.mu.Unlock()
		if !create {
			return nil, nil, false, fmt.Errorf("session %q has ended (idle too long, or its interpreter stopped); run_python with it starts a new one", name)
		}
	}
}

// start starts the session for the name n has reserved.
func (t *tools) start(ctx context.Context, key nameKey, n *named, sreq api.SessionRequest) (*dispatch.Session, error) {
	s, err := t.sb.NewSession(ctx, sreq)
	t.mu.Lock()
	switch {
	case err != nil:
		n.err = err
		delete(t.names, key)
	case t.names[key] != n: // the connection ended meanwhile: nobody can name this session again
		n.err = errors.New("the MCP connection has ended")
	default:
		n.id = s.ID()
	}
	close(n.ready)
	t.mu.Unlock()
	if n.err != nil {
		if s != nil {
			s.Close()
		}
		return nil, n.err
	}
	return s, nil
}

// anyTenant looks up the tools' own sessions whatever key started them: the name map spans every
// connection (and so every key), and only the tools reach it.
var anyTenant = dispatch.WithTenant(context.Background(), dispatch.Tenant{Admin: true})

// pruneLocked drops the names whose sessions were closed or reaped.
func (t *tools) pruneLocked() {
	for key, n := range t.names {
		select {
		case <-n.ready:
			if _, err := t.sb.Session(anyTenant, n.id); err != nil {
				delete(t.names, key)
			}
		default: // starting
		}
	}
}

// watchLocked arranges for a connection's names to be dropped, and their sessions closed, when it
// ends: nobody else can name them.
func (t *tools) watchLocked(conn *mcp.ServerSession) {
	if conn == nil || t.watched[conn] {
		return
	}
	t.watched[conn] = true
	go func() {
		conn.Wait()
		t.forget(conn)
	}()
}

// forget drops a connection's names and closes their sessions.
func (t *tools) forget(conn *mcp.ServerSession) {
	t.mu.Lock()
	var ids []string
	for key, n := range t.names {
		if key.conn != conn {
			continue
		}
		delete(t.names, key)
		select {
		case <-n.ready:
			if n.err == nil {
				ids = append(ids, n.id)
			}
		default: // starting: start closes it when it sees the name gone
		}
	}
	delete(t.watched, conn)
	t.mu.Unlock()
	for _, id := range ids {
		if s, err := t.sb.Session(anyTenant, id); err == nil {
			s.Close()
		}
	}
}

// resultSchema is run_python's output schema: api.Result's, with an output's data and metadata
// values (json.RawMessage, which inference would take for bytes) allowed to be any JSON value.
var resultSchema = func() *jsonschema.Schema {
	s, err := jsonschema.For[api.Result](&jsonschema.ForOptions{TypeSchemas: map[reflect.Type]*jsonschema.Schema{
		reflect.TypeFor[json.RawMessage](): {},
	}})
	if err != nil {
		panic(err)
	}
	return s
}()

func (t *tools) runPython(ctx context.Context, req *mcp.CallToolRequest, in RunInput) (*mcp.CallToolResult, *api.Result, error) {
	var res *api.Result
	if in.Session == "" {
		resp, err := t.sb.Run(ctx, api.RunRequest{Code: in.Code, Tier: api.Tier(in.Tier), Limits: api.Limits{TimeoutMS: in.TimeoutMS},
			Network: in.Network, Task: in.Task, Intent: in.Intent}, dispatch.Output{})
		if err != nil {
			return nil, nil, err
		}
		res = &resp.Result
	} else {
		if in.TimeoutMS != 0 {
			return nil, nil, errors.New("timeout_ms applies to runs without a session; a session keeps the limits it was created with")
		}
		s, started, done, err := t.sessionStarted(ctx, req, in.Session, true, api.SessionRequest{Tier: api.Tier(in.Tier), Network: in.Network, Task: in.Task, Intent: in.Intent})
		if err != nil {
			return nil, nil, err
		}
		defer done()
		if !started {
			if in.Task != "" || in.Intent != nil {
				return nil, nil, fmt.Errorf("task and intent apply when session %q starts; pass network to change its policy", in.Session)
			}
			if in.Network != nil {
				// The session was there already: network replaces its policy (PATCH .../network).
				if err := s.SetNetwork(*in.Network); err != nil {
					return nil, nil, err
				}
			}
		}
		if res, err = s.Run(ctx, in.Code, dispatch.Output{}); err != nil {
			return nil, nil, err
		}
	}
	// Images go in the content, where clients show them; the structured result names no bytes (its
	// schema, inferred from api.Result, cannot say that []byte travels as base64).
	content := []mcp.Content{&mcp.TextContent{Text: summary(res)}}
	content = append(content, outputContent(res.Results)...)
	for _, a := range res.Artifacts {
		if a.Output == nil && strings.HasPrefix(a.MIME, "image/") { // a figure's image came with its output
			content = append(content, &mcp.ImageContent{Data: a.Data, MIMEType: a.MIME})
		}
	}
	structured := *res
	structured.Artifacts = nil
	structured.Results = withoutBinary(res.Results)
	return &mcp.CallToolResult{Content: content, IsError: res.Error != nil}, &structured, nil
}

// outputContent turns rich outputs into MCP content, in order: an image as image content (with the
// extracted chart, when there is one, as JSON text an agent can read without vision); a DataFrame's
// table as Markdown text; anything else as its best text (Markdown, JSON, plain text).
func outputContent(outs []api.Output) []mcp.Content {
	var content []mcp.Content
	for i := range outs {
		o := &outs[i]
		label := "[display]"
		if o.IsMainResult {
			label = "[result]"
		}
		shown := true
		if b := o.PNG(); b != nil {
			content = append(content, &mcp.ImageContent{Data: b, MIMEType: "image/png"})
		} else if b := o.JPEG(); b != nil {
			content = append(content, &mcp.ImageContent{Data: b, MIMEType: "image/jpeg"})
		} else {
			shown = false
		}
		var text string
		switch table, err := o.Table(); {
		case err == nil:
			text = table.Markdown()
		case o.Has(api.MIMEChart):
			text = "chart: " + string(o.Data[api.MIMEChart])
		case shown:
		case o.Markdown() != "":
			text = o.Markdown()
		case o.JSON() != nil:
			text = string(o.JSON())
		default:
			text = o.Text()
		}
		if text != "" {
			content = append(content, &mcp.TextContent{Text: label + "\n" + text})
		}
	}
	return content
}

// withoutBinary is outs without their base64 data (images, PDFs), which the content carries.
func withoutBinary(outs []api.Output) []api.Output {
	out := make([]api.Output, len(outs))
	for i, o := range outs {
		data := make(map[string]json.RawMessage, len(o.Data))
		for k, v := range o.Data {
			if k != "image/png" && k != "image/jpeg" && k != "application/pdf" {
				data[k] = v
			}
		}
		o.Data = data
		out[i] = o
	}
	return out
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
	if err := limits.CheckPath(in.Path); err != nil {
		return nil, WriteOutput{}, err
	}
	data := []byte(in.Content)
	if in.Base64 {
		var err error
		if data, err = base64.StdEncoding.DecodeString(in.Content); err != nil {
			return nil, WriteOutput{}, fmt.Errorf("content is not valid base64: %w", err)
		}
	}
	s, done, err := t.session(ctx, req, in.Session, true, api.SessionRequest{Tier: api.TierAuto})
	if err != nil {
		return nil, WriteOutput{}, err
	}
	defer done()
	if err := s.WriteFile(ctx, in.Path, data); err != nil {
		return nil, WriteOutput{}, err
	}
	return nil, WriteOutput{Path: in.Path, Size: len(data)}, nil
}

func (t *tools) readFile(ctx context.Context, req *mcp.CallToolRequest, in FileInput) (*mcp.CallToolResult, ReadOutput, error) {
	if err := limits.CheckPath(in.Path); err != nil {
		return nil, ReadOutput{}, err
	}
	s, done, err := t.session(ctx, req, in.Session, false, api.SessionRequest{})
	if err != nil {
		return nil, ReadOutput{}, err
	}
	defer done()
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
	if err := limits.CheckPath(in.Path); err != nil {
		return nil, ListOutput{}, err
	}
	s, done, err := t.session(ctx, req, in.Session, false, api.SessionRequest{})
	if err != nil {
		return nil, ListOutput{}, err
	}
	defer done()
	files, err := s.ListFiles(ctx, in.Path)
	if err != nil {
		return nil, ListOutput{}, err
	}
	return nil, ListOutput{Dir: in.Path, Files: files}, nil
}
