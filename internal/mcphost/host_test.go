package mcphost

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// fakeLauncher runs servers in process: each Launch builds an SDK server with the tools its
// registration's Env["TOOLS"] names (comma-separated; "hang" blocks, "crash" ends the connection,
// "card" returns a card number, anything else echoes its arguments), connected over pipes.
type fakeLauncher struct {
	launches atomic.Int64
	mu       sync.Mutex
	servers  []*mcp.Server // guarded by mu
	fail     atomic.Bool   // Launch fails
}

func (l *fakeLauncher) Launch(ctx context.Context, spec *api.MCPServer, _ string) (LineConn, error) {
	l.launches.Add(1)
	if l.fail.Load() {
		return nil, errors.New("launch refused by the test")
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "fake"}, nil)
	c := &pipeConn{}
	for _, name := range strings.Split(spec.Env["TOOLS"], ",") {
		addFakeTool(s, name, c)
	}
	l.mu.Lock()
	l.servers = append(l.servers, s)
	l.mu.Unlock()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c.in, c.out, c.closers = inW, bufio.NewReader(outR), []io.Closer{inR, inW, outR, outW}
	go s.Run(context.Background(), &mcp.IOTransport{Reader: inR, Writer: outW})
	return c, nil
}

func addFakeTool(s *mcp.Server, name string, c *pipeConn) {
	schema := json.RawMessage(`{"type":"object","properties":{"message":{"type":"string"}}}`)
	s.AddTool(&mcp.Tool{Name: name, InputSchema: schema}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		switch name {
		case "hang":
			<-ctx.Done()
			return nil, ctx.Err()
		case "crash":
			c.Close()
			return nil, errors.New("crashed")
		case "card":
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "card 4111 1111 1111 1111 on file"}}}, nil
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name + ":" + string(req.Params.Arguments)}}}, nil
	})
}

// pipeConn is a LineConn over in-process pipes.
type pipeConn struct {
	in      *io.PipeWriter
	out     *bufio.Reader
	closers []io.Closer
	once    sync.Once
}

func (c *pipeConn) ReadLine(ctx context.Context) ([]byte, error) {
	type r struct {
		b   []byte
		err error
	}
	ch := make(chan r, 1)
	go func() {
		b, err := c.out.ReadBytes('\n')
		ch <- r{[]byte(strings.TrimSuffix(string(b), "\n")), err}
	}()
	select {
	case x := <-ch:
		return x.b, x.err
	case <-ctx.Done():
		c.Close() // the pending read must not outlive the connection
		return nil, ctx.Err()
	}
}

func (c *pipeConn) WriteLine(_ context.Context, b []byte) error {
	_, err := c.in.Write(append(b, '\n'))
	return err
}

func (c *pipeConn) Close() {
	c.once.Do(func() {
		for _, cl := range c.closers {
			cl.Close()
		}
	})
}

// fakeScanner finds the digits "4111 1111 1111 1111" (a test card number).
type fakeScanner struct{}

const card = "4111 1111 1111 1111"

func (fakeScanner) Scan(text []byte) []Finding {
	var out []Finding
	s := string(text)
	for off := 0; ; {
		i := strings.Index(s[off:], card)
		if i < 0 {
			return out
		}
		out = append(out, Finding{Type: "credit_card", Rule: "test", Start: off + i, End: off + i + len(card)})
		off += i + len(card)
	}
}

func (fakeScanner) Redact(text []byte, fs []Finding) []byte {
	var out []byte
	last := 0
	for _, f := range fs {
		out = append(append(out, text[last:f.Start]...), "[REDACTED:"+f.Type+"]"...)
		last = f.End
	}
	return append(out, text[last:]...)
}

type recorded struct {
	mu  sync.Mutex
	all []Event
}

func (r *recorded) RecordMCPCall(_ context.Context, ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, ev)
}

func (r *recorded) last() Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.all) == 0 {
		return Event{}
	}
	return r.all[len(r.all)-1]
}

func newTestHost(t *testing.T, dir string, l *fakeLauncher) (*Host, *recorded) {
	t.Helper()
	rec := &recorded{}
	h, err := New(Config{Dir: dir, Launchers: map[api.Tier]Launcher{api.TierHeavy: l, api.TierNano: l}, Builtin: []string{"run_python", "x__shadow"},
		Scanner: fakeScanner{}, Recorder: rec, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, rec
}

func spec(name, tools string) api.MCPServer {
	return api.MCPServer{Name: name, Command: []string{"node", "/srv/index.js"}, Env: map[string]string{"TOOLS": tools}}
}

func resultText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			b.WriteString(t.Text)
		}
	}
	return b.String()
}

func TestValidateRegistration(t *testing.T) {
	ok := func(m func(*api.MCPServer)) api.MCPServer {
		s := api.MCPServer{Name: "files", Command: []string{"python3", "server.py"}, Files: map[string]string{"server.py": "pass"}}
		m(&s)
		return s
	}
	cases := []struct {
		name string
		spec api.MCPServer
		want string // in the error; empty: valid
	}{
		{"a plain heavy server", ok(func(*api.MCPServer) {}), ""},
		{"a nano server", ok(func(s *api.MCPServer) { s.Tier = api.TierNano }), ""},
		{"npm packages", ok(func(s *api.MCPServer) { s.Packages = []string{"npm:@scope/pkg@1.2.3", "npm:left-pad"} }), ""},
		{"empty name", ok(func(s *api.MCPServer) { s.Name = "" }), "name"},
		{"upper case name", ok(func(s *api.MCPServer) { s.Name = "Files" }), "name"},
		{"the separator in a name", ok(func(s *api.MCPServer) { s.Name = "a__b" }), `without "__"`},
		{"a reserved name", ok(func(s *api.MCPServer) { s.Name = "agentbox" }), "reserved"},
		{"an unknown tier", ok(func(s *api.MCPServer) { s.Tier = "gpu" }), "tier"},
		{"no command", ok(func(s *api.MCPServer) { s.Command = nil }), "command"},
		{"an absolute file path", ok(func(s *api.MCPServer) { s.Files = map[string]string{"/etc/x": ""} }), "files"},
		{"a file path escaping /srv", ok(func(s *api.MCPServer) { s.Files = map[string]string{"../x": ""} }), "files"},
		{"a package that is not npm", ok(func(s *api.MCPServer) { s.Packages = []string{"pip:requests"} }), "package"},
		{"a package with options", ok(func(s *api.MCPServer) { s.Packages = []string{"npm:--registry=http://x"} }), "package"},
		{"a bad env name", ok(func(s *api.MCPServer) { s.Env = map[string]string{"A-B": "1"} }), "env"},
		{"an unknown dlp mode", ok(func(s *api.MCPServer) { s.DLP = "maybe" }), "dlp"},
		{"a negative limit", ok(func(s *api.MCPServer) { s.Limits.IdleMS = -1 }), "negative"},
		{"a call timeout over the ceiling", ok(func(s *api.MCPServer) { s.Limits.CallTimeoutMS = 3600000 }), "call_timeout_ms"},
		{"a bad tool name in the filter", ok(func(s *api.MCPServer) { s.Tools.Deny = []string{"a b"} }), "tools"},
		{"a nano server that is not python", ok(func(s *api.MCPServer) { s.Tier = api.TierNano; s.Command = []string{"node", "server.py"} }), "nano"},
		{"a nano server whose file is missing", ok(func(s *api.MCPServer) { s.Tier = api.TierNano; s.Command = []string{"python3", "other.py"} }), "not one of files"},
		{"a nano server with packages", ok(func(s *api.MCPServer) { s.Tier = api.TierNano; s.Packages = []string{"npm:x"} }), "standard library"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(&tc.spec)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, errdefs.InvalidArgument) {
				t.Fatalf("want an invalid-argument error naming %q, got %v", tc.want, err)
			}
		})
	}
}

func TestRegistrationRefusesCollisions(t *testing.T) {
	cases := []struct {
		name   string
		first  *api.MCPServer
		second api.MCPServer
		want   string
	}{
		{"a name already registered", ptr(spec("a", "echo")), spec("a", "other"), "already registered"},
		{"a tool name another server exposes", ptr(spec("a", "_b")), spec("a_", "b"), "collides with server a's"},
		{"a tool name shadowing the gateway's own", nil, spec("x", "shadow"), "shadow the gateway's own tool"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newTestHost(t, t.TempDir(), &fakeLauncher{})
			ctx := context.Background()
			if tc.first != nil {
				if _, err := h.Register(ctx, *tc.first); err != nil {
					t.Fatal(err)
				}
			}
			_, err := h.Register(ctx, tc.second)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error naming %q, got %v", tc.want, err)
			}
			if _, gerr := h.Get(ctx, tc.second.Name); tc.first == nil && !errors.Is(gerr, errdefs.NotFound) {
				t.Fatalf("a refused registration is kept: %v", gerr)
			}
		})
	}
}

func TestExposedRefusesWhatTheGatewayCannotCarry(t *testing.T) {
	obj := json.RawMessage(`{"type":"object"}`)
	cases := []struct {
		name  string
		tools []*mcp.Tool
		want  string
	}{
		{"a schema that is not an object", []*mcp.Tool{{Name: "t", InputSchema: json.RawMessage(`{"type":"string"}`)}}, `type "object"`},
		{"no schema", []*mcp.Tool{{Name: "t"}}, `type "object"`},
		{"one tool listed twice", []*mcp.Tool{{Name: "t", InputSchema: obj}, {Name: "t", InputSchema: obj}}, "twice"},
		{"a name MCP does not allow", []*mcp.Tool{{Name: "a b", InputSchema: obj}}, "not a valid MCP tool name"},
		{"a name too long with the prefix", []*mcp.Tool{{Name: strings.Repeat("x", 127), InputSchema: obj}}, "not a valid MCP tool name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exposed("srv", api.MCPToolFilter{}, tc.tools); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
		})
	}
	t.Run("a denied tool is not checked", func(t *testing.T) {
		names, err := exposed("srv", api.MCPToolFilter{Deny: []string{"bad"}}, []*mcp.Tool{{Name: "bad"}, {Name: "ok", InputSchema: obj}})
		if err != nil || !slices.Equal(names, []string{"srv__ok"}) {
			t.Fatalf("%v %v", names, err)
		}
	})
}

func ptr[T any](v T) *T { return &v }

func TestRegistrationsSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	l := &fakeLauncher{}
	h, _ := newTestHost(t, dir, l)
	ctx := context.Background()
	if _, err := h.Register(ctx, spec("keep", "echo,more")); err != nil {
		t.Fatal(err)
	}
	h.Close()
	l2 := &fakeLauncher{}
	h2, _ := newTestHost(t, dir, l2)
	info, err := h2.Get(ctx, "keep")
	if err != nil || info.Status != StatusStopped || !slices.Equal(info.ToolNames, []string{"keep__echo", "keep__more"}) {
		t.Fatalf("after a restart: %+v %v", info, err)
	}
	if tools := h2.Tools(ctx); len(tools) != 2 || l2.launches.Load() != 0 {
		t.Fatalf("tools listed from the registry without a start: %+v, %d launches", tools, l2.launches.Load())
	}
	res, err := h2.Call(ctx, "keep__echo", json.RawMessage(`{"message":"hi"}`))
	if err != nil || res.IsError || l2.launches.Load() != 1 {
		t.Fatalf("first use starts it: %+v %v, %d launches", res, err, l2.launches.Load())
	}
	if err := h2.Delete(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	h2.Close()
	h3, _ := newTestHost(t, dir, &fakeLauncher{})
	if list := h3.List(ctx); len(list) != 0 {
		t.Fatalf("a deleted registration came back: %+v", list)
	}
}

func TestLazyRegistrationStartsOnFirstUse(t *testing.T) {
	l := &fakeLauncher{}
	h, _ := newTestHost(t, t.TempDir(), l)
	ctx := context.Background()
	s := spec("lazy", "echo")
	s.Lazy = true
	if _, err := h.Register(ctx, s); err != nil || l.launches.Load() != 0 {
		t.Fatalf("lazy registration started it: %v, %d launches", err, l.launches.Load())
	}
	res, err := h.Call(ctx, "lazy__echo", nil)
	if err != nil || res.IsError || l.launches.Load() != 1 {
		t.Fatalf("%+v %v %d", res, err, l.launches.Load())
	}
	if info, _ := h.Get(ctx, "lazy"); !slices.Equal(info.ToolNames, []string{"lazy__echo"}) {
		t.Fatalf("tools learnt at first start: %+v", info)
	}
}

func TestCallPolicy(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name        string
		dlp         string
		filter      api.MCPToolFilter
		tool, args  string
		wantError   bool
		wantText    string
		wantVerdict string
		wantFinding string
	}{
		{"an allowed call is relayed", "", api.MCPToolFilter{}, "echo", `{"message":"hi"}`, false, `echo:{"message":"hi"}`, VerdictAllowed, ""},
		{"a denied tool is refused", "", api.MCPToolFilter{Deny: []string{"echo"}}, "echo", `{}`, true, "not allowed", VerdictDenied, ""},
		{"a tool outside the allow list is refused", "", api.MCPToolFilter{Allow: []string{"card"}}, "echo", `{}`, true, "not allowed", VerdictDenied, ""},
		{"a card number in the arguments is blocked", api.DLPBlock, api.MCPToolFilter{}, "echo", `{"message":"` + card + `"}`, true, "blocked by DLP: the arguments contain credit_card", VerdictBlockedDLP, "args:credit_card"},
		{"a card number in the arguments is redacted", api.DLPRedact, api.MCPToolFilter{}, "echo", `{"message":"pay ` + card + `"}`, false, `echo:{"message":"pay [REDACTED:credit_card]"}`, VerdictRedacted, "args:credit_card"},
		{"a card number in a result is blocked", api.DLPBlock, api.MCPToolFilter{}, "card", `{}`, true, "the result contains credit_card", VerdictBlockedDLP, "result:credit_card"},
		{"a card number in a result is redacted", api.DLPRedact, api.MCPToolFilter{}, "card", `{}`, false, "card [REDACTED:credit_card] on file", VerdictRedacted, "result:credit_card"},
		{"log mode relays and records", api.DLPLog, api.MCPToolFilter{}, "card", `{}`, false, card, VerdictAllowed, "result:credit_card"},
		{"off mode does not scan", api.DLPOff, api.MCPToolFilter{}, "card", `{}`, false, card, VerdictAllowed, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, rec := newTestHost(t, t.TempDir(), &fakeLauncher{})
			s := spec("srv", "echo,card")
			s.DLP, s.Tools = tc.dlp, tc.filter
			if _, err := h.Register(ctx, s); err != nil {
				t.Fatal(err)
			}
			res, err := h.Call(ctx, "srv__"+tc.tool, json.RawMessage(tc.args))
			if err != nil {
				t.Fatal(err)
			}
			if res.IsError != tc.wantError || !strings.Contains(resultText(res), tc.wantText) {
				t.Fatalf("isError %v %q, want %v %q", res.IsError, resultText(res), tc.wantError, tc.wantText)
			}
			ev := rec.last()
			if ev.Verdict != tc.wantVerdict || ev.Server != "srv" || ev.Tool != tc.tool || len(ev.ArgsSHA256) != 64 {
				t.Fatalf("event %+v, want verdict %s", ev, tc.wantVerdict)
			}
			if (tc.wantFinding == "") != (len(ev.Findings) == 0) || tc.wantFinding != "" && !slices.Contains(ev.Findings, tc.wantFinding) {
				t.Fatalf("findings %v, want %q", ev.Findings, tc.wantFinding)
			}
		})
	}
}

func TestCallEventHasShapeNotData(t *testing.T) {
	h, rec := newTestHost(t, t.TempDir(), &fakeLauncher{})
	ctx := context.Background()
	if _, err := h.Register(ctx, spec("srv", "echo")); err != nil {
		t.Fatal(err)
	}
	args := `{"message":"secret text","n":3,"tags":["a","b"],"ok":true}`
	if _, err := h.Call(ctx, "srv__echo", json.RawMessage(args)); err != nil {
		t.Fatal(err)
	}
	ev := rec.last()
	if ev.ArgsShape != `{"message":"string","n":"number","ok":"boolean","tags":{"array":2,"of":"string"}}` || strings.Contains(ev.ArgsShape, "secret") {
		t.Fatalf("shape %s", ev.ArgsShape)
	}
	if sum := sha256.Sum256([]byte(args)); ev.ArgsSHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha %s", ev.ArgsSHA256)
	}
}

func TestUnknownToolIsNotFound(t *testing.T) {
	h, _ := newTestHost(t, t.TempDir(), &fakeLauncher{})
	for _, name := range []string{"nosuch__echo", "noseparator"} {
		if _, err := h.Call(context.Background(), name, nil); !errors.Is(err, errdefs.NotFound) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func TestCrashedServerIsRestartedWithBackoff(t *testing.T) {
	l := &fakeLauncher{}
	h, _ := newTestHost(t, t.TempDir(), l)
	ctx := context.Background()
	if _, err := h.Register(ctx, spec("srv", "echo,crash")); err != nil {
		t.Fatal(err)
	}
	res, _ := h.Call(ctx, "srv__crash", nil)
	if !res.IsError || !strings.Contains(resultText(res), "failed during crash") {
		t.Fatalf("crash: %q", resultText(res))
	}
	// Used a moment ago: it is started again in the background after the backoff.
	deadline := time.Now().Add(10 * time.Second)
	for l.launches.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if l.launches.Load() < 2 {
		t.Fatal("not restarted in the background")
	}
	res, err := h.Call(ctx, "srv__echo", json.RawMessage(`{}`))
	if err != nil || res.IsError {
		t.Fatalf("after the restart: %q %v", resultText(res), err)
	}
	info, _ := h.Get(ctx, "srv")
	if info.Restarts != 1 || !strings.Contains(info.LastError, "ended") || info.Status != StatusRunning {
		t.Fatalf("info %+v", info)
	}
}

func TestFailedStartsBackOff(t *testing.T) {
	l := &fakeLauncher{}
	h, _ := newTestHost(t, t.TempDir(), l)
	ctx := context.Background()
	s := spec("srv", "echo")
	s.Lazy = true
	if _, err := h.Register(ctx, s); err != nil {
		t.Fatal(err)
	}
	l.fail.Store(true)
	res, _ := h.Call(ctx, "srv__echo", nil)
	if !res.IsError || !strings.Contains(resultText(res), "launch refused") {
		t.Fatalf("%q", resultText(res))
	}
	// A second call within the backoff waits for it, bounded by its context, without launching.
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	res, _ = h.Call(short, "srv__echo", nil)
	if !res.IsError || !strings.Contains(resultText(res), "waiting") || l.launches.Load() != 1 {
		t.Fatalf("%q, %d launches", resultText(res), l.launches.Load())
	}
	if info, _ := h.Get(ctx, "srv"); info.Status != StatusFailed {
		t.Fatalf("status %s", info.Status)
	}
	l.fail.Store(false)
	res, _ = h.Call(ctx, "srv__echo", nil) // waits out the backoff, then starts
	if res.IsError || l.launches.Load() != 2 {
		t.Fatalf("%q, %d launches", resultText(res), l.launches.Load())
	}
}

func TestCallTimeoutStopsTheServer(t *testing.T) {
	l := &fakeLauncher{}
	h, _ := newTestHost(t, t.TempDir(), l)
	ctx := context.Background()
	s := spec("srv", "echo,hang")
	s.Limits.CallTimeoutMS = 100
	if _, err := h.Register(ctx, s); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, _ := h.Call(ctx, "srv__hang", nil)
	if !res.IsError || !strings.Contains(resultText(res), "did not answer hang within 100ms") || time.Since(start) > 10*time.Second {
		t.Fatalf("%q after %v", resultText(res), time.Since(start))
	}
	res, _ = h.Call(ctx, "srv__echo", nil)
	if res.IsError || l.launches.Load() != 2 {
		t.Fatalf("the next call: %q, %d launches", resultText(res), l.launches.Load())
	}
}

func TestIdleServerIsStopped(t *testing.T) {
	l := &fakeLauncher{}
	h, _ := newTestHost(t, t.TempDir(), l)
	ctx := context.Background()
	s := spec("srv", "echo")
	s.Limits.IdleMS = 50
	if _, err := h.Register(ctx, s); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, _ := h.Get(ctx, "srv")
		if info.Status == StatusStopped {
			if info.Restarts != 0 {
				t.Fatalf("an idle stop counted as a failure: %+v", info)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s", info.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if res, _ := h.Call(ctx, "srv__echo", nil); res.IsError || l.launches.Load() != 2 {
		t.Fatalf("restart on use: %q %d", resultText(res), l.launches.Load())
	}
}

func TestTenantsSeeTheirOwnServers(t *testing.T) {
	h, _ := newTestHost(t, t.TempDir(), &fakeLauncher{})
	alice := dispatch.WithTenant(context.Background(), dispatch.Tenant{ID: "alice"})
	bob := dispatch.WithTenant(context.Background(), dispatch.Tenant{ID: "bob"})
	admin := dispatch.WithTenant(context.Background(), dispatch.Tenant{ID: "root", Admin: true})
	if _, err := h.Register(alice, spec("mine", "echo")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		ctx  context.Context
		sees bool
	}{{"the owner", alice, true}, {"another key", bob, false}, {"an admin", admin, true}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Get(tc.ctx, "mine")
			res, cerr := h.Call(tc.ctx, "mine__echo", nil)
			if tc.sees != (err == nil) || tc.sees != (len(h.List(tc.ctx)) == 1) || tc.sees != (len(h.Tools(tc.ctx)) == 1) ||
				tc.sees != (cerr == nil && !res.IsError) {
				t.Fatalf("sees %v: get %v, call %v", tc.sees, err, cerr)
			}
		})
	}
	if err := h.Delete(bob, "mine"); !errors.Is(err, errdefs.NotFound) {
		t.Fatalf("another key deleted it: %v", err)
	}
	if err := h.Delete(admin, "mine"); err != nil {
		t.Fatal(err)
	}
}

func TestToolListChangesReachTheWatchers(t *testing.T) {
	l := &fakeLauncher{}
	h, _ := newTestHost(t, t.TempDir(), l)
	ctx := context.Background()
	changed := make(chan struct{}, 16)
	defer h.Watch(func() { changed <- struct{}{} })()
	if _, err := h.Register(ctx, spec("srv", "echo")); err != nil {
		t.Fatal(err)
	}
	<-changed
	l.mu.Lock()
	s := l.servers[0]
	l.mu.Unlock()
	addFakeTool(s, "added", nil) // the server sends tools/list_changed
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("tools now %+v", h.Tools(ctx))
		}
		if info, _ := h.Get(ctx, "srv"); slices.Contains(info.ToolNames, "srv__added") {
			return
		}
	}
}

// netLauncher records the context value the Network hook put there.
type netLauncher struct {
	fakeLauncher
	got atomic.Value
}

type netKey struct{}

func (l *netLauncher) Launch(ctx context.Context, spec *api.MCPServer, srv string) (LineConn, error) {
	if v := ctx.Value(netKey{}); v != nil {
		l.got.Store(v)
	}
	return l.fakeLauncher.Launch(ctx, spec, srv)
}

func TestNetworkPolicy(t *testing.T) {
	ctx := context.Background()
	withHosts := spec("net", "echo")
	withHosts.Network = &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com"}}}
	t.Run("a policy that allows hosts is refused without an egress data plane", func(t *testing.T) {
		h, _ := newTestHost(t, t.TempDir(), &fakeLauncher{})
		if _, err := h.Register(ctx, withHosts); err == nil || !strings.Contains(err.Error(), "no egress data plane") || !errors.Is(err, errdefs.InvalidArgument) {
			t.Fatalf("%v", err)
		}
	})
	t.Run("with one, the server starts under the policy's context", func(t *testing.T) {
		l := &netLauncher{}
		h, err := New(Config{Dir: t.TempDir(), Launchers: map[api.Tier]Launcher{api.TierHeavy: l},
			Network: func(ctx context.Context, p *api.NetworkPolicy) (context.Context, error) {
				return context.WithValue(ctx, netKey{}, p.Allow[0].Host), nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.Register(ctx, withHosts); err != nil {
			t.Fatal(err)
		}
		if got := l.got.Load(); got != "api.example.com" {
			t.Fatalf("launched under %v", got)
		}
	})
}

// slowLauncher blocks Launch until release is closed.
type slowLauncher struct {
	fakeLauncher
	release chan struct{}
}

func (l *slowLauncher) Launch(ctx context.Context, spec *api.MCPServer, srv string) (LineConn, error) {
	<-l.release
	return l.fakeLauncher.Launch(ctx, spec, srv)
}

// TestAbandonedRegistrationLeavesNothingRunning: a registration whose caller gave up while the
// server was starting is undone, and the start, when it completes, stops what it started.
func TestAbandonedRegistrationLeavesNothingRunning(t *testing.T) {
	l := &slowLauncher{release: make(chan struct{})}
	h, _ := newTestHost(t, t.TempDir(), &l.fakeLauncher)
	h.cfg.Launchers[api.TierHeavy] = l
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := h.Register(ctx, spec("slow", "echo")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v", err)
	}
	h.mu.Lock()
	s := h.servers["slow"]
	h.mu.Unlock()
	if s != nil {
		t.Fatal("an abandoned registration is kept")
	}
	close(l.release)
	deadline := time.Now().Add(5 * time.Second)
	for l.launches.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// The started instance is closed: its server's connection ends.
	l.mu.Lock()
	srv := l.servers
	l.mu.Unlock()
	for len(srv) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		l.mu.Lock()
		srv = l.servers
		l.mu.Unlock()
	}
	if len(srv) != 1 {
		t.Fatalf("%d servers launched", len(srv))
	}
	for {
		n := 0
		for range srv[0].Sessions() {
			n++
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the abandoned start's server is still connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
