package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/mcphost"
)

// latencies reports the p50 and p99 of ds as benchmark metrics.
func latencies(b *testing.B, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(ds[min(len(ds)-1, len(ds)*99/100)].Microseconds()), "p99-µs")
}

// benchServers are the servers the relay benchmarks call: our Python server (heavy and nano) and
// the reference server (heavy), each with an echo tool.
func benchServers(b *testing.B) []api.MCPServer {
	src := serverSource(b)
	return []api.MCPServer{
		{Name: "pyheavy", Command: []string{"python3", "/srv/server.py"}, Files: map[string]string{"server.py": src}},
		{Name: "pynano", Tier: api.TierNano, Command: []string{"python3", "server.py"}, Files: map[string]string{"server.py": src}},
		{Name: "everything", Command: []string{"mcp-server-everything", "stdio"}, Packages: []string{everything}},
	}
}

// BenchmarkRelayedCall: one echo call through the gateway (MCP client -> gateway -> host: policy,
// DLP scan, record -> the server in its sandbox), against the same call made directly on a client
// connected to the server's sandbox. The difference is the relay's added latency.
func BenchmarkRelayedCall(b *testing.B) {
	ctx := context.Background()
	for _, spec := range benchServers(b) {
		h, _ := newHost(b)
		if _, err := h.Register(ctx, spec); err != nil {
			b.Fatal(err)
		}
		cs, _ := connect(b, h)
		args := map[string]any{"message": "hello"}
		b.Run(spec.Name+"/gateway", func(b *testing.B) {
			var ds []time.Duration
			for b.Loop() {
				start := time.Now()
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: spec.Name + "__echo", Arguments: args})
				if err != nil || res.IsError {
					b.Fatalf("%v %+v", err, res)
				}
				ds = append(ds, time.Since(start))
			}
			latencies(b, ds)
		})
		if spec.Tier == api.TierNano {
			continue // a nano server has no connection to call directly: each request is a run
		}
		b.Run(spec.Name+"/direct", func(b *testing.B) {
			srv := filepath.Join(b.TempDir(), "srv")
			if err := os.Mkdir(srv, 0o755); err != nil {
				b.Fatal(err)
			}
			for p, content := range spec.Files {
				if err := os.WriteFile(filepath.Join(srv, p), []byte(content), 0o644); err != nil {
					b.Fatal(err)
				}
			}
			lc, err := (&mcphost.HeavyLauncher{Engine: heavyEng}).Launch(ctx, &spec, srv)
			if err != nil {
				b.Fatal(err)
			}
			defer lc.Close()
			direct, err := mcp.NewClient(&mcp.Implementation{Name: "bench"}, nil).Connect(ctx, mcphost.ClientTransport(lc, nil), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer direct.Close()
			var ds []time.Duration
			for b.Loop() {
				start := time.Now()
				res, err := direct.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: args})
				if err != nil || res.IsError {
					b.Fatalf("%v %+v", err, res)
				}
				ds = append(ds, time.Since(start))
			}
			latencies(b, ds)
		})
	}
}

// BenchmarkColdStart: registering a server (sandbox start, MCP handshake, tool list) and its first
// call, per iteration; then warm calls are BenchmarkRelayedCall's.
func BenchmarkColdStart(b *testing.B) {
	ctx := context.Background()
	for _, spec := range benchServers(b) {
		b.Run(spec.Name, func(b *testing.B) {
			h, _ := newHost(b)
			i := 0
			for b.Loop() {
				s := spec
				s.Name = fmt.Sprintf("%s%d", spec.Name, i)
				i++
				if _, err := h.Register(ctx, s); err != nil {
					b.Fatal(err)
				}
				res, err := h.Call(ctx, s.Name+"__echo", json.RawMessage(`{"message":"hi"}`))
				if err != nil || res.IsError {
					b.Fatalf("%v %+v", err, res)
				}
				b.StopTimer()
				h.Delete(ctx, s.Name)
				b.StartTimer()
			}
		})
	}
}
