package mcphost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/tier"
)

// NanoRunner is what the nano launcher needs of the nano tier (*nano.Engine).
type NanoRunner interface {
	Run(ctx context.Context, req api.RunRequest, stream tier.Stream) (*api.Result, error)
}

// nanoSrv is where a nano server's other files are placed (nano's writable tree has no /srv).
const nanoSrv = "/home/user/srv"

// NanoLauncher runs a stdlib-only Python stdio server on the nano tier, one run per request: the
// nano tier runs a program with a fixed stdin, so each request is answered by a fresh run (restored
// from the interpreter's snapshot in milliseconds) whose stdin is the connection's initialize
// request, the initialized notification and the request, and whose stdout holds the answers. The
// server keeps no state between calls; servers that need state belong on the heavy tier.
type NanoLauncher struct {
	Engine NanoRunner
}

// Launch implements Launcher. Nothing runs until the first request (initialize).
func (l *NanoLauncher) Launch(ctx context.Context, spec *api.MCPServer, _ string) (LineConn, error) {
	main := strings.TrimPrefix(spec.Command[1], "/srv/")
	memory, call, _, maxLine := limitsOf(spec)
	c := &nanoConn{eng: l.Engine, maxLine: maxLine, out: make(chan []byte, 16), closed: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.req = api.RunRequest{Code: spec.Files[main], Filename: main, Tier: api.TierNano,
		Limits: api.Limits{TimeoutMS: int(call.Milliseconds()), MemoryLimitMB: memory, MaxOutputBytes: max(maxLine*4, 1<<20)}}
	for p, content := range spec.Files {
		if p != main {
			c.req.Files = append(c.req.Files, api.File{Path: path.Join(nanoSrv, p), Data: []byte(content)})
		}
	}
	return c, nil
}

type nanoConn struct {
	eng     NanoRunner
	req     api.RunRequest // the program; Stdin is set per run
	maxLine int
	ctx     context.Context // the runs'; cancelled by Close
	cancel  context.CancelFunc
	out     chan []byte // answer lines for ReadLine
	closed  chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu       sync.Mutex
	preamble []byte // the initialize request and initialized notification, replayed before each request; guarded by mu
}

// rpcHead is what the relay reads of a client message.
type rpcHead struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
}

func (c *nanoConn) WriteLine(ctx context.Context, b []byte) error {
	select {
	case <-c.closed:
		return errors.New("nano mcp server: closed")
	default:
	}
	var h rpcHead
	if err := json.Unmarshal(b, &h); err != nil {
		return fmt.Errorf("nano mcp server: %w", err)
	}
	line := append(append([]byte(nil), b...), '\n')
	c.mu.Lock()
	switch {
	case h.Method == "initialize":
		c.preamble = line
	case h.Method == "notifications/initialized":
		c.preamble = append(c.preamble, line...)
		c.mu.Unlock()
		return nil
	case len(h.ID) == 0: // other notifications (cancellations) have no run to reach
		c.mu.Unlock()
		return nil
	}
	stdin := append([]byte(nil), c.preamble...)
	if h.Method != "initialize" {
		stdin = append(stdin, line...)
	}
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.answer(h.ID, stdin)
	}()
	return nil
}

// answer runs the server with stdin and passes on its answer to the request id; when the run
// gives none, it answers an error itself.
func (c *nanoConn) answer(id json.RawMessage, stdin []byte) {
	req := c.req
	req.Stdin = stdin
	res, err := c.eng.Run(c.ctx, req, tier.Stream{})
	var reply []byte
	why := ""
	switch {
	case err != nil:
		why = err.Error()
	default:
		for _, line := range bytes.Split([]byte(res.Stdout), []byte("\n")) {
			if len(line) > c.maxLine {
				why = fmt.Sprintf("the server wrote a line longer than %d bytes", c.maxLine)
				break
			}
			var h rpcHead
			if json.Unmarshal(line, &h) == nil && h.Method == "" && bytes.Equal(bytes.TrimSpace(h.ID), bytes.TrimSpace(id)) {
				reply = line
			}
		}
		if reply == nil && why == "" {
			why = "the server ended without answering"
			if res.Error != nil {
				why += ": " + res.Error.Type + ": " + res.Error.Message
			}
			if s := strings.TrimSpace(res.Stderr); s != "" {
				why += "; stderr: " + limits.Text(s, 500)
			}
		}
	}
	if reply == nil {
		reply, _ = json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "error": map[string]any{"code": -32603, "message": "nano mcp server: " + limits.Text(why, 2048)}})
	}
	select {
	case c.out <- reply:
	case <-c.closed:
	}
}

func (c *nanoConn) ReadLine(ctx context.Context) ([]byte, error) {
	select {
	case b := <-c.out:
		return b, nil
	case <-c.closed:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *nanoConn) Close() {
	c.once.Do(func() {
		close(c.closed)
		c.cancel()
	})
	c.wg.Wait()
}
