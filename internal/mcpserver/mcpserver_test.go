package mcpserver

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// connect returns an MCP client session over the named transport: "http" (streamable HTTP against
// the handler `agentbox serve` mounts) or "stdio" (the real `agentbox mcp` binary).
func connect(t *testing.T, transport string) *mcp.ClientSession {
	t.Helper()
	ctx := context.Background()
	var tr mcp.Transport
	switch transport {
	case "http":
		// Through the API server's /mcp route, behind its bearer-key auth, as `agentbox serve` mounts it.
		eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
		if err != nil {
			t.Fatal(err)
		}
		d := dispatch.New(eng, dispatch.Config{})
		t.Cleanup(func() { d.Close(); eng.Close(context.Background()) })
		srv, err := server.New(d, server.Config{APIKeys: []string{testKey}, MCP: HTTPHandler(d, "test")})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(srv.Handler())
		t.Cleanup(ts.Close)
		resp, err := http.Post(ts.URL+"/mcp", "application/json", strings.NewReader(`{}`))
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("/mcp without a key: %v %v", err, resp)
		}
		resp.Body.Close()
		tr = &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp", HTTPClient: &http.Client{Transport: bearer{testKey}}}
	case "stdio":
		bin := filepath.Join(t.TempDir(), "agentbox")
		build := exec.Command("go", "build", "-o", bin, "github.com/entersandbox/agentbox/cmd/agentbox")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building agentbox: %v\n%s", err, out)
		}
		cmd := exec.Command(bin, "mcp", "--heavy", "off") // heavy through MCP: internal/heavy/integration
		cmd.Stderr = os.Stderr
		tr = &mcp.CommandTransport{Command: cmd}
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "agentbox-test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, tr, nil)
	if err != nil {
		t.Fatalf("connecting over %s: %v", transport, err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

const testKey = "mcp-test-key-0123456789"

// bearer adds the API key to every request.
type bearer struct{ key string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return http.DefaultTransport.RoundTrip(r)
}

func callTool(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) (*mcp.CallToolResult, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var structured map[string]any
	if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		json.Unmarshal(b, &structured)
	}
	return res, structured
}

func text(res *mcp.CallToolResult) string {
	var parts []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

func TestTools(t *testing.T) {
	for _, transport := range []string{"http", "stdio"} {
		t.Run(transport, func(t *testing.T) {
			cs := connect(t, transport)
			ctx := context.Background()
			list, err := cs.ListTools(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			names := map[string]bool{}
			for _, tool := range list.Tools {
				names[tool.Name] = true
				if tool.InputSchema == nil {
					t.Errorf("%s has no input schema", tool.Name)
				}
			}
			for _, want := range []string{"run_python", "write_file", "read_file", "list_files", "run_command"} {
				if !names[want] {
					t.Errorf("tool %s missing (have %v)", want, names)
				}
			}

			res, out := callTool(t, cs, "run_python", map[string]any{"code": "print(sum(range(10)))"})
			if res.IsError || out["stdout"] != "45\n" || !strings.Contains(text(res), "45") || out["tier"] != "nano" || out["route_reason"] == nil {
				t.Fatalf("run_python: %+v %v", res, out)
			}
			res, out = callTool(t, cs, "run_python", map[string]any{"code": "1/0"})
			if !res.IsError || out["error"].(map[string]any)["type"] != "ZeroDivisionError" || !strings.Contains(text(res), "ZeroDivisionError") {
				t.Fatalf("failing program: %+v %v", res, out)
			}

			// A named session keeps state and files.
			if res, _ := callTool(t, cs, "write_file", map[string]any{"session": "s1", "path": "/data/in.txt", "content": "from the agent"}); res.IsError {
				t.Fatalf("write_file: %s", text(res))
			}
			callTool(t, cs, "run_python", map[string]any{"session": "s1", "code": "msg = open('/data/in.txt').read()"})
			res, out = callTool(t, cs, "run_python", map[string]any{"session": "s1", "code": "print(msg.upper())\nopen('/output/bin','wb').write(bytes([0,255]))"})
			if out["stdout"] != "FROM THE AGENT\n" {
				t.Fatalf("session state: %+v %v", res, out)
			}
			_, out = callTool(t, cs, "read_file", map[string]any{"session": "s1", "path": "/output/bin"})
			if out["base64"] != true || out["content"] != "AP8=" {
				t.Fatalf("read_file binary: %v", out)
			}
			// A PNG the program saved comes back as image content too.
			callTool(t, cs, "run_python", map[string]any{"session": "s1", "code": "import zlib, struct\n" +
				"def chunk(k, d): return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))\n" +
				"png = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 0, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(b'\\x00\\x00')) + chunk(b'IEND', b'')\n" +
				"open('/output/dot.png', 'wb').write(png)"})
			res, _ = callTool(t, cs, "read_file", map[string]any{"session": "s1", "path": "/output/dot.png"})
			if len(res.Content) != 2 {
				t.Fatalf("read_file of a PNG: %d contents", len(res.Content))
			}
			if img, ok := res.Content[1].(*mcp.ImageContent); !ok || img.MIMEType != "image/png" || !bytes.HasPrefix(img.Data, []byte("\x89PNG")) {
				t.Fatalf("read_file of a PNG: %T", res.Content[1])
			}
			_, out = callTool(t, cs, "list_files", map[string]any{"session": "s1", "path": "/data"})
			if files := out["files"].([]any); len(files) != 1 || files[0].(map[string]any)["name"] != "in.txt" {
				t.Fatalf("list_files: %v", out)
			}

			// Clear tool errors.
			for _, bad := range []struct {
				tool string
				args map[string]any
				want string
			}{
				{"read_file", map[string]any{"session": "nope", "path": "/data/x"}, "no session"},
				{"read_file", map[string]any{"session": "s1", "path": "/data/missing"}, "not exist"},
				{"write_file", map[string]any{"session": "s1", "path": "../etc/passwd", "content": "x"}, "absolute"},
				{"write_file", map[string]any{"session": "s1", "path": "/data/b", "content": "***", "base64": true}, "base64"},
				{"run_python", map[string]any{"code": "1", "timeout_ms": 999999999}, "maximum"},
				{"run_python", map[string]any{"code": "1", "tier": "gpu"}, "unknown tier"},
				{"run_python", map[string]any{"code": "1", "tier": "heavy"}, "not available"},
				{"run_python", map[string]any{"code": "1", "tier": "heavy", "session": "s1"}, "is on the nano tier"},
			} {
				res, _ := callTool(t, cs, bad.tool, bad.args)
				if !res.IsError || !strings.Contains(text(res), bad.want) {
					t.Errorf("%s %v: isError=%v %q, want an error containing %q", bad.tool, bad.args, res.IsError, text(res), bad.want)
				}
			}
		})
	}
}
