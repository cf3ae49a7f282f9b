package mcphost

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/nano"
)

// TestNanoServerSession: our stdlib server on the nano tier, one session cell per request: answers
// come back, and a crash or the memory limit ends only that request (the next gets a new session).
func TestNanoServerSession(t *testing.T) {
	ctx := context.Background()
	h := nanoHost(t, api.MCPLimits{MemoryLimitMB: 64})
	cases := []struct {
		name, tool, args string
		isError          bool
		want             string
	}{
		{"echo", "echo", `{"message":"hi"}`, false, "echo: hi"},
		{"a crash", "crash", `{}`, true, "ended without answering"},
		{"served after the crash", "add", `{"a":1,"b":2}`, false, "3"},
		{"the memory limit", "memory", `{}`, true, "MemoryLimitExceeded"},
		{"served after the memory limit", "add", `{"a":2,"b":2}`, false, "4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := h.Call(ctx, "py__"+tc.tool, json.RawMessage(tc.args))
			if err != nil || res.IsError != tc.isError || !strings.Contains(resultText(res), tc.want) {
				t.Fatalf("%v: isError %v %q, want %v %q", err, res.IsError, resultText(res), tc.isError, tc.want)
			}
		})
	}
}

// TestNanoCancelledCallStopsItsCell: a call the client gives up on stops its cell, so the next
// request is served at once rather than after the cell's own time limit.
func TestNanoCancelledCallStopsItsCell(t *testing.T) {
	ctx := context.Background()
	h := nanoHost(t, api.MCPLimits{CallTimeoutMS: 60000})
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if res, _ := h.Call(short, "py__hang", nil); !res.IsError || !strings.Contains(resultText(res), "cancelled") {
		t.Fatalf("%q", resultText(res))
	}
	start := time.Now()
	res, err := h.Call(ctx, "py__echo", json.RawMessage(`{"message":"next"}`))
	if err != nil || res.IsError || resultText(res) != "echo: next" {
		t.Fatalf("%v %q", err, resultText(res))
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the next call waited %v for the cancelled cell", d)
	}
}

// nanoHost is a host whose one server, "py", is our stdlib test server on a nano engine of its own,
// registered with limits; both end with the test.
func nanoHost(t *testing.T, limits api.MCPLimits) *Host {
	t.Helper()
	ctx := context.Background()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(ctx) })
	src, err := os.ReadFile("testdata/server.py")
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Dir: t.TempDir(), Launchers: map[api.Tier]Launcher{api.TierNano: &NanoLauncher{Engine: eng}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if _, err := h.Register(ctx, api.MCPServer{Name: "py", Tier: api.TierNano, Command: []string{"python3", "server.py"},
		Files: map[string]string{"server.py": string(src)}, Limits: limits}); err != nil {
		t.Fatal(err)
	}
	return h
}
