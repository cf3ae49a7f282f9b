package mcpserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// lockedWriter lets the test write raw lines to the server's stdin between the client's messages.
type lockedWriter struct {
	mu sync.Mutex
	w  io.WriteCloser
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) Close() error { return l.w.Close() }

// rpcError is an error response to a raw line.
type rpcError struct {
	ID    json.RawMessage `json:"id"`
	Error struct {
		Code    int64  `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// TestMCPStdioSurvivesMalformedLines drives the real `agentbox mcp` with a real MCP client, sends it
// lines that are not JSON-RPC requests in between, and checks each gets a JSON-RPC error while the
// connection, and the named session's state, live on.
func TestMCPStdioSurvivesMalformedLines(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "agentbox")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/entersandbox/agentbox/cmd/agentbox").CombinedOutput(); err != nil {
		t.Fatalf("building agentbox: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "mcp", "--heavy", "off")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	in := &lockedWriter{w: stdin}
	t.Cleanup(func() {
		in.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})

	// Answers to the raw lines (id null, or one of the "raw-" ids) go to the test; the rest to the client.
	toClient, fromServer := io.Pipe()
	refused := make(chan rpcError, 16)
	go func() {
		defer fromServer.Close()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			var head rpcError
			json.Unmarshal(sc.Bytes(), &head)
			if string(head.ID) == "null" || bytes.HasPrefix(head.ID, []byte(`"raw-`)) {
				refused <- head
				continue
			}
			fromServer.Write(append(sc.Bytes(), '\n'))
		}
	}()
	client := mcp.NewClient(&mcp.Implementation{Name: "agentbox-test", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := client.Connect(ctx, &mcp.IOTransport{Reader: toClient, Writer: in}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	run := func(code string) string {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"session": "main", "code": code}})
		if err != nil {
			t.Fatalf("run_python after the bad lines: %v", err)
		}
		return text(res)
	}
	run("n = 0")

	huge := `{"jsonrpc":"2.0","id":"raw-huge","method":"tools/call","params":{"name":"run_python","arguments":{"code":"` +
		strings.Repeat("A", 40<<20) + `"}}}`
	for i, tc := range []struct {
		name, line string
		code       int64
		id         string
		msg        string
	}{
		{"not JSON", `{not json`, -32700, "null", "parse error"},
		{"empty batch", `[]`, -32600, "null", "batch"},
		{"a batch", `[{"jsonrpc":"2.0","id":"raw-b","method":"ping"}]`, -32600, "null", "batch"},
		{"a number", `42`, -32600, "null", "JSON object"},
		{"a fragment", `"jsonrpc":"1.0"`, -32700, "null", "parse error"},
		{"JSON-RPC 1.0", `{"jsonrpc":"1.0","id":"raw-v1","method":"tools/list"}`, -32600, `"raw-v1"`, "version"},
		{"no version", `{"id":"raw-nov","method":"tools/list"}`, -32600, `"raw-nov"`, "version"},
		{"object id", `{"jsonrpc":"2.0","id":{"a":1},"method":"tools/list"}`, -32600, "null", "invalid request"},
		{"40 MiB line", huge, -32600, "null", "larger than"},
		{"binary garbage", "\x00\xff\xfe", -32700, "null", "parse error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := io.WriteString(in, tc.line+"\n"); err != nil {
				t.Fatalf("the server stopped reading: %v", err)
			}
			select {
			case e := <-refused:
				if e.Error.Code != tc.code || string(e.ID) != tc.id || !strings.Contains(e.Error.Message, tc.msg) {
					t.Fatalf("answer id %s code %d %q, want id %s code %d with %q", e.ID, e.Error.Code, e.Error.Message, tc.id, tc.code, tc.msg)
				}
			case err := <-exited:
				t.Fatalf("agentbox mcp exited: %v", err)
			case <-time.After(time.Minute):
				t.Fatal("no answer to the bad line")
			}
			// The named session kept its state.
			if got, want := run("n += 1\nprint(n)"), strconv.Itoa(i+1)+"\n"; got != want {
				t.Fatalf("session state after the bad line: %q, want %q", got, want)
			}
		})
	}
	select {
	case e := <-refused:
		t.Fatalf("an unexpected error answer: %+v", e)
	default:
	}
}
