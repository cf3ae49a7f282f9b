// Package integration tests hosted MCP servers in real sandboxes: the MCP project's reference server
// (@modelcontextprotocol/server-everything, from npm) on the heavy tier, and our stdlib-only Python
// server on nano and heavy, through agentbox's gateway. They need root, runsc, the heavy root
// filesystem with Node (build/heavy/build.sh) and npm reaching its registry, and run only with
// AGENTBOX_INTEGRATION=1; without it `go test` reports the package as not run and why.
package integration

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
)

const integrationEnv = "AGENTBOX_INTEGRATION"

// everything is the reference server's package, pinned.
const everything = "npm:@modelcontextprotocol/server-everything@2026.8.31"

var (
	heavyEng *heavy.Engine
	nanoEng  *nano.Engine
	d        *dispatch.Dispatcher
)

func TestMain(m *testing.M) {
	flag.Parse()
	on, err := strconv.ParseBool(cmp.Or(os.Getenv(integrationEnv), "0"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: want 1 or 0\n", integrationEnv, os.Getenv(integrationEnv))
		os.Exit(2)
	}
	if !on {
		fmt.Printf("mcp hosting integration tests not run: set %s=1 (needs root, runsc, build/heavy/build.sh's root filesystem with Node, and npm)\n", integrationEnv)
		flag.Set("test.skip", ".")
		os.Exit(m.Run())
	}
	ctx := context.Background()
	heavyEng, err = heavy.New(ctx, heavy.Config{PoolSize: -1, DiskMB: 64})
	if err != nil {
		fmt.Fprintf(os.Stderr, "heavy tier (%s=1 needs root, runsc and the root filesystem): %v\n", integrationEnv, err)
		os.Exit(1)
	}
	if _, err := os.Stat(filepath.Join(rootfs(), "usr", "bin", "node")); err != nil {
		fmt.Fprintf(os.Stderr, "the heavy root filesystem has no Node (re-run build/heavy/build.sh): %v\n", err)
		os.Exit(1)
	}
	if nanoEng, err = nano.New(ctx, nano.Config{}); err != nil {
		fmt.Fprintf(os.Stderr, "nano tier: %v\n", err)
		os.Exit(1)
	}
	d = dispatch.New(nanoEng, dispatch.Config{Heavy: heavyEng})
	code := m.Run()
	d.Close()
	nanoEng.Close(ctx)
	heavyEng.Close(ctx)
	os.Exit(code)
}

func rootfs() string { return filepath.Join(heavy.CacheDir(), "rootfs") }

// testCardScanner is a stand-in DLP engine for these tests (internal/dlp is another branch): it
// finds runs of 13 to 19 digits, spaces or dashes allowed between them, that pass the Luhn check.
type testCardScanner struct{}

func (testCardScanner) Scan(text []byte) []mcphost.Finding {
	var out []mcphost.Finding
	for i := 0; i < len(text); i++ {
		if text[i] < '0' || text[i] > '9' {
			continue
		}
		var digits []int
		j, end := i, i
		for ; j < len(text) && len(digits) < 19; j++ {
			c := text[j]
			if c >= '0' && c <= '9' {
				digits = append(digits, int(c-'0'))
				end = j + 1
			} else if c != ' ' && c != '-' {
				break
			}
		}
		if len(digits) >= 13 && luhn(digits) {
			out = append(out, mcphost.Finding{Type: "credit_card", Rule: "luhn", Start: i, End: end})
			i = end - 1
		}
	}
	return out
}

func luhn(d []int) bool {
	sum := 0
	for i := range d {
		v := d[len(d)-1-i]
		if i%2 == 1 {
			if v *= 2; v > 9 {
				v -= 9
			}
		}
		sum += v
	}
	return sum%10 == 0
}

func (testCardScanner) Redact(text []byte, fs []mcphost.Finding) []byte {
	var out []byte
	last := 0
	for _, f := range fs {
		out = append(append(out, text[last:f.Start]...), "[REDACTED:"+f.Type+"]"...)
		last = f.End
	}
	return append(out, text[last:]...)
}

// events records the host's call events.
type events struct {
	mu  sync.Mutex
	all []mcphost.Event
}

func (e *events) RecordMCPCall(_ context.Context, ev mcphost.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) last(t *testing.T, server, tool string) mcphost.Event {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := len(e.all) - 1; i >= 0; i-- {
		if e.all[i].Server == server && e.all[i].Tool == tool {
			return e.all[i]
		}
	}
	t.Fatalf("no event for %s__%s", server, tool)
	return mcphost.Event{}
}

// newHost is a host over the shared engines with a private registry, and the events it records.
func newHost(t testing.TB) (*mcphost.Host, *events) {
	t.Helper()
	ev := &events{}
	h, err := mcphost.New(mcphost.Config{
		Dir: t.TempDir(),
		Launchers: map[api.Tier]mcphost.Launcher{
			api.TierHeavy: &mcphost.HeavyLauncher{Engine: heavyEng},
			api.TierNano:  &mcphost.NanoLauncher{Engine: nanoEng},
		},
		Builtin:    mcpserver.BuiltinTools,
		Scanner:    testCardScanner{},
		Recorder:   ev,
		MinBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, ev
}

// connect is an MCP client on the host's gateway, and a channel that receives a value per
// tools/list_changed notification.
func connect(t testing.TB, h *mcphost.Host) (*mcp.ClientSession, chan struct{}) {
	t.Helper()
	ctx := context.Background()
	srv, stop := mcpserver.NewGateway(ctx, d, "test", h)
	t.Cleanup(stop)
	st, ct := mcp.NewInMemoryTransports()
	ss, err := srv.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	changed := make(chan struct{}, 64)
	client := mcp.NewClient(&mcp.Implementation{Name: "test"}, &mcp.ClientOptions{ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}})
	cs, err := client.Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs, changed
}

func toolNames(t *testing.T, cs *mcp.ClientSession) []string {
	t.Helper()
	var names []string
	for tool, err := range cs.Tools(context.Background(), nil) {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, tool.Name)
	}
	return names
}

func call(t *testing.T, cs *mcp.ClientSession, name string, args any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return res
}

func text(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			b.WriteString(t.Text)
		}
	}
	return b.String()
}

func serverSource(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "testdata", "server.py"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestEverythingServerOnHeavy: the reference server from npm, in a heavy sandbox, through the
// gateway: its tools listed beside ours, echo and get-sum relayed, an image result, a card number
// in an argument blocked by DLP, the call events.
func TestEverythingServerOnHeavy(t *testing.T) {
	h, ev := newHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	info, err := h.Register(ctx, api.MCPServer{Name: "everything", Command: []string{"mcp-server-everything", "stdio"}, Packages: []string{everything},
		Tools: api.MCPToolFilter{Deny: []string{"get-env"}}})
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	if info.Status != mcphost.StatusRunning || !slices.Contains(info.ToolNames, "everything__echo") {
		t.Fatalf("registered: %+v", info)
	}
	cs, _ := connect(t, h)
	names := toolNames(t, cs)
	for _, want := range []string{"run_python", "everything__echo", "everything__get-sum", "everything__get-tiny-image"} {
		if !slices.Contains(names, want) {
			t.Errorf("gateway tools %v: no %s", names, want)
		}
	}
	t.Run("a denied tool is not listed", func(t *testing.T) {
		if slices.Contains(names, "everything__get-env") {
			t.Errorf("get-env is denied but listed: %v", names)
		}
	})
	t.Run("echo", func(t *testing.T) {
		res := call(t, cs, "everything__echo", map[string]any{"message": "hello from the gateway"})
		if res.IsError || !strings.Contains(text(res), "hello from the gateway") {
			t.Fatalf("echo: %+v %q", res, text(res))
		}
		e := ev.last(t, "everything", "echo")
		if e.Verdict != mcphost.VerdictAllowed || e.ArgsShape != `{"message":"string"}` || len(e.ArgsSHA256) != 64 || e.Duration <= 0 {
			t.Fatalf("event: %+v", e)
		}
	})
	t.Run("get-sum", func(t *testing.T) {
		res := call(t, cs, "everything__get-sum", map[string]any{"a": 2, "b": 40})
		if res.IsError || !strings.Contains(text(res), "42") {
			t.Fatalf("get-sum: %q", text(res))
		}
	})
	t.Run("parallel calls", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan string, 16)
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "everything__get-sum", Arguments: map[string]any{"a": i, "b": 1000}})
				if err != nil || res.IsError || !strings.Contains(text(res), strconv.Itoa(i+1000)) {
					errs <- fmt.Sprintf("call %d: %v %q", i, err, text(res))
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	})
	t.Run("an image result", func(t *testing.T) {
		res := call(t, cs, "everything__get-tiny-image", map[string]any{})
		var img *mcp.ImageContent
		for _, c := range res.Content {
			if i, ok := c.(*mcp.ImageContent); ok {
				img = i
			}
		}
		if img == nil || img.MIMEType != "image/png" || len(img.Data) < 8 || string(img.Data[1:4]) != "PNG" {
			t.Fatalf("no PNG image in %+v", res.Content)
		}
	})
	t.Run("a card number in an argument is blocked by DLP", func(t *testing.T) {
		res := call(t, cs, "everything__echo", map[string]any{"message": "my card is 4111 1111 1111 1111"})
		if !res.IsError || !strings.Contains(text(res), "credit_card") {
			t.Fatalf("not blocked: %q", text(res))
		}
		e := ev.last(t, "everything", "echo")
		if e.Verdict != mcphost.VerdictBlockedDLP || !slices.Contains(e.Findings, "args:credit_card") {
			t.Fatalf("event: %+v", e)
		}
	})
	t.Run("a denied tool's call is refused and recorded", func(t *testing.T) {
		// Not listed, so the gateway has no such tool: the host refuses it too when asked directly.
		res, err := h.Call(ctx, "everything__get-env", json.RawMessage(`{}`))
		if err != nil || !res.IsError || !strings.Contains(text(res), "not allowed") {
			t.Fatalf("get-env: %v %+v", err, res)
		}
		if e := ev.last(t, "everything", "get-env"); e.Verdict != mcphost.VerdictDenied {
			t.Fatalf("event: %+v", e)
		}
	})
}

// TestOurPythonServerOnNano: the stdlib-only server on the nano tier (one run per request).
func TestOurPythonServerOnNano(t *testing.T) {
	h, ev := newHost(t)
	ctx := context.Background()
	if _, err := h.Register(ctx, api.MCPServer{Name: "py", Tier: api.TierNano, Command: []string{"python3", "server.py"},
		Files: map[string]string{"server.py": serverSource(t)}, Limits: api.MCPLimits{CallTimeoutMS: 5000, MemoryLimitMB: 64}}); err != nil {
		t.Fatalf("Register: %v", err)
	}
	cs, _ := connect(t, h)
	if names := toolNames(t, cs); !slices.Contains(names, "py__echo") || !slices.Contains(names, "py__add") {
		t.Fatalf("tools: %v", names)
	}
	cases := []struct {
		name, tool string
		args       any
		want       string
		isError    bool
	}{
		{"echo", "py__echo", map[string]any{"message": "hi"}, "echo: hi", false},
		{"add", "py__add", map[string]any{"a": 2, "b": 3}, "5", false},
		{"a crash is a clean error", "py__crash", map[string]any{}, "ended without answering", true},
		{"a hang ends at the call limit", "py__hang", map[string]any{}, "did not answer hang within 5s", true},
		{"memory over the limit is a clean error", "py__memory", map[string]any{}, "MemoryLimitExceeded", true},
		{"malformed JSON-RPC is a clean error", "py__malformed", map[string]any{}, "", true},
		{"still serving after the faults", "py__add", map[string]any{"a": 40, "b": 2}, "42", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := call(t, cs, tc.tool, tc.args)
			if res.IsError != tc.isError || !strings.Contains(text(res), tc.want) {
				t.Fatalf("%s: isError %v, %q", tc.tool, res.IsError, text(res))
			}
		})
	}
	if e := ev.last(t, "py", "add"); e.Verdict != mcphost.VerdictAllowed || e.ArgsShape != `{"a":"number","b":"number"}` {
		t.Fatalf("event: %+v", e)
	}
}

// TestHeavyServerFaults: a server that crashes, hangs, floods stdout, answers malformed JSON-RPC or
// exceeds its memory gets a clean MCP error back to the client, the gateway stays up, another
// server's calls keep working, and the faulty one is started again for the next call.
func TestHeavyServerFaults(t *testing.T) {
	h, _ := newHost(t)
	ctx := context.Background()
	src := serverSource(t)
	for _, name := range []string{"faulty", "healthy"} {
		if _, err := h.Register(ctx, api.MCPServer{Name: name, Command: []string{"python3", "/srv/server.py"}, Files: map[string]string{"server.py": src},
			Limits: api.MCPLimits{CallTimeoutMS: 3000, MemoryLimitMB: 192}}); err != nil {
			t.Fatalf("Register %s: %v", name, err)
		}
	}
	cs, _ := connect(t, h)
	cases := []struct {
		name, tool string
		want       string // in the error's text
	}{
		{"crash", "crash", "exited unexpectedly"},
		{"hang", "hang", "did not answer hang within 3s"},
		{"stdout flood", "flood", "longer than"},
		{"malformed JSON-RPC", "malformed", "faulty"},
		{"memory exceeded", "memory", "MemoryLimitExceeded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			res := call(t, cs, "faulty__"+tc.tool, map[string]any{})
			if !res.IsError || !strings.Contains(text(res), tc.want) {
				t.Fatalf("%s: isError %v, %q (want %q)", tc.tool, res.IsError, text(res), tc.want)
			}
			if d := time.Since(start); d > time.Minute {
				t.Errorf("%s took %v", tc.tool, d)
			}
			if got := text(call(t, cs, "healthy__add", map[string]any{"a": 1, "b": 2})); got != "3" {
				t.Fatalf("the other server after %s: %q", tc.tool, got)
			}
			if got := text(call(t, cs, "faulty__echo", map[string]any{"message": "back"})); got != "echo: back" {
				t.Fatalf("the faulty server after %s: %q", tc.tool, got)
			}
			if names := toolNames(t, cs); !slices.Contains(names, "run_python") || !slices.Contains(names, "faulty__echo") {
				t.Fatalf("gateway tools after %s: %v", tc.tool, names)
			}
		})
	}
	info, err := h.Get(ctx, "faulty")
	// crash, hang (stopped at its limit), flood and memory ended the server; malformed's two bad
	// lines were dropped and the server kept.
	if err != nil || info.Restarts < 4 || info.DroppedLines != 2 {
		t.Fatalf("faulty: %+v %v", info, err)
	}
}

// TestHeavyServerConfinement: a hosted server runs as the unprivileged user, with its files
// read-only and no network interface but loopback.
func TestHeavyServerConfinement(t *testing.T) {
	h, _ := newHost(t)
	ctx := context.Background()
	if _, err := h.Register(ctx, api.MCPServer{Name: "probe", Command: []string{"python3", "/srv/server.py"}, Files: map[string]string{"server.py": serverSource(t)}}); err != nil {
		t.Fatal(err)
	}
	res, err := h.Call(ctx, "probe__probe", nil)
	if err != nil || res.IsError {
		t.Fatalf("%v %+v", err, res)
	}
	var got struct {
		UID         int      `json:"uid"`
		SrvWritable bool     `json:"srv_writable"`
		Interfaces  []string `json:"interfaces"`
	}
	if err := json.Unmarshal([]byte(text(res)), &got); err != nil {
		t.Fatalf("%q: %v", text(res), err)
	}
	if got.UID != 1000 || got.SrvWritable || !slices.Equal(got.Interfaces, []string{"lo"}) {
		t.Fatalf("confinement: %+v", got)
	}
}
