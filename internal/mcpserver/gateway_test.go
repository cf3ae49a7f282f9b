package mcpserver

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// fakeHosted is a registry whose tools the test sets, per tenant ID.
type fakeHosted struct {
	mu    sync.Mutex
	tools map[string][]api.MCPTool // by tenant; guarded by mu
	watch func()                   // guarded by mu
	calls []string                 // "tenant:name:args"; guarded by mu
}

func (f *fakeHosted) Tools(ctx context.Context) []api.MCPTool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tools[dispatch.TenantOf(ctx).ID]
}

func (f *fakeHosted) Call(ctx context.Context, name string, args json.RawMessage) (*mcp.CallToolResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, dispatch.TenantOf(ctx).ID+":"+name+":"+string(args))
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "relayed " + name}}}, nil
}

func (f *fakeHosted) Watch(fn func()) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.watch
	f.watch = func() {
		if prev != nil {
			prev()
		}
		fn()
	}
	return func() {}
}

func (f *fakeHosted) set(tenant string, names ...string) {
	f.mu.Lock()
	if f.tools == nil {
		f.tools = map[string][]api.MCPTool{}
	}
	f.tools[tenant] = nil
	for _, n := range names {
		f.tools[tenant] = append(f.tools[tenant], api.MCPTool{Name: n, Description: "hosted " + n, InputSchema: json.RawMessage(`{"type":"object","properties":{"x":{"type":"number"}}}`)})
	}
	w := f.watch
	f.mu.Unlock()
	if w != nil {
		w()
	}
}

func listNames(t *testing.T, cs *mcp.ClientSession) []string {
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

func TestGatewayListsRelaysAndFollowsHostedTools(t *testing.T) {
	ctx := context.Background()
	f := &fakeHosted{}
	f.set("", "srv__one")
	s, stop := NewGateway(ctx, nil, "test", f)
	defer stop()
	st, ct := mcp.NewInMemoryTransports()
	ss, err := s.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	changed := make(chan struct{}, 16)
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t"}, &mcp.ClientOptions{ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
		changed <- struct{}{}
	}}).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	t.Run("hosted tools are listed beside the builtin ones", func(t *testing.T) {
		names := listNames(t, cs)
		for _, want := range append([]string{"srv__one"}, BuiltinTools...) {
			if !slices.Contains(names, want) {
				t.Fatalf("%v: no %s", names, want)
			}
		}
	})
	t.Run("a call is relayed with its arguments", func(t *testing.T) {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "srv__one", Arguments: map[string]any{"x": 1}})
		if err != nil || res.Content[0].(*mcp.TextContent).Text != "relayed srv__one" {
			t.Fatalf("%+v %v", res, err)
		}
		if f.calls[len(f.calls)-1] != `:srv__one:{"x":1}` {
			t.Fatalf("calls %v", f.calls)
		}
	})
	t.Run("a change is relayed as tools/list_changed", func(t *testing.T) {
		f.set("", "srv__two")
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatal("no tools/list_changed")
		}
		names := listNames(t, cs)
		if !slices.Contains(names, "srv__two") || slices.Contains(names, "srv__one") {
			t.Fatalf("after the change: %v", names)
		}
	})
}

func TestHTTPGatewayListsEachKeysOwnTools(t *testing.T) {
	ctx := context.Background()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{})
	t.Cleanup(func() { d.Close(); eng.Close(context.Background()) })
	f := &fakeHosted{}
	keys := []string{"key-alice-0123456789", "key-bob-0123456789"}
	f.set(server.TenantID(keys[0]), "alice__tool")
	f.set(server.TenantID(keys[1]), "bob__tool")
	srv, err := server.New(d, server.Config{APIKeys: keys, MCP: HTTPGateway(d, "test", f)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	for i, key := range keys {
		own, other := []string{"alice__tool", "bob__tool"}[i], []string{"bob__tool", "alice__tool"}[i]
		t.Run(own, func(t *testing.T) {
			tr := &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp", HTTPClient: &http.Client{Transport: bearer{key}}}
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "t"}, nil).Connect(ctx, tr, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			names := listNames(t, cs)
			if !slices.Contains(names, own) || slices.Contains(names, other) || !slices.Contains(names, "run_python") {
				t.Fatalf("key %d sees %v", i, names)
			}
		})
	}
}
