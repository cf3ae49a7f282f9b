package mcpserver

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/netpolicy/netpolicytest"
)

func TestRunPythonNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	c, err := netpolicy.ParseCeiling("policy.toml", []byte(`allow = ["pypi.org", "files.pythonhosted.org", "example.com"]`))
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(netpolicytest.Engine{Engine: eng, BytesOut: 120, BytesIn: 4096}, dispatch.Config{Ceiling: c})
	t.Cleanup(func() { d.Close(); eng.Close(context.Background()) })
	ct, st := mcp.NewInMemoryTransports()
	if _, err := New(d, "test").Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	event := func(structured map[string]any) string {
		evs, _ := structured["network_events"].([]any)
		if len(evs) != 1 {
			return ""
		}
		e := evs[0].(map[string]any)
		return e["verdict"].(string) + " " + e["rule"].(string)
	}
	cases := []struct {
		name  string
		args  map[string]any
		event string // "" for none
		err   string
	}{
		{"offline", map[string]any{"code": "print(1)"}, "", ""},
		{"allowed", map[string]any{"code": "print(1)", "network": map[string]any{"allow": []any{map[string]any{"host": "pypi.org"}}}}, "allowed allow:pypi.org", ""},
		{"bad rule key", map[string]any{"code": "print(1)", "network": map[string]any{"allow": []any{map[string]any{"host": "pypi.org", "no_inspec": true}}}}, "", "no_inspec"},
		{"allowed as a string", map[string]any{"code": "print(1)", "network": map[string]any{"allow": []any{"pypi.org"}}}, "allowed allow:pypi.org", ""},
		{"intent", map[string]any{"code": "print(1)", "intent": map[string]any{"packages": []any{"rich"}}}, "allowed grant:intent.packages:pypi.org/simple", ""},
		{"outside the ceiling", map[string]any{"code": "print(1)", "network": map[string]any{"allow": []any{map[string]any{"host": "evil.com"}}}}, "", "ceiling:allow"},
		{"session starts open", map[string]any{"code": "print(1)", "session": "s", "network": map[string]any{"allow": []any{map[string]any{"host": "pypi.org"}}}}, "allowed allow:pypi.org", ""},
		{"session keeps its policy", map[string]any{"code": "print(1)", "session": "s"}, "allowed allow:pypi.org", ""},
		{"network on a running session replaces it", map[string]any{"code": "print(1)", "session": "s", "network": map[string]any{"allow": []any{map[string]any{"host": "example.com"}}}}, "denied default:deny", ""},
		{"task on a running session", map[string]any{"code": "print(1)", "session": "s", "task": "see https://pypi.org/"}, "", "task and intent apply when session"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, structured := callTool(t, cs, "run_python", tc.args)
			if tc.err != "" {
				if !res.IsError || !strings.Contains(text(res), tc.err) {
					t.Fatalf("want an error with %q, got %q", tc.err, text(res))
				}
				return
			}
			if res.IsError || event(structured) != tc.event {
				t.Fatalf("error %v %q; event %q, want %q (%v)", res.IsError, text(res), event(structured), tc.event, structured["network_events"])
			}
		})
	}
}
