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

// NanoEngine is what the nano launcher needs of the nano tier (*nano.Engine).
type NanoEngine interface {
	NewSession(ctx context.Context, limits api.Limits, packages []string) (tier.Session, error)
}

// nanoSrv is where a nano server's files are placed (nano's writable tree has no /srv).
const nanoSrv = "/home/user/srv"

// NanoLauncher runs a stdlib-only Python stdio server on the nano tier. The nano tier runs programs
// with a fixed stdin, so a server cannot block on stdin between requests; instead one nano session
// per server compiles the server once, and each request is a cell that runs the compiled server with
// stdin holding the connection's initialize request, the initialized notification and the request,
// and reads the answer from its stdout. Measured (internal/mcphost/integration, docs/mcp-hosting.md):
// a cell is under a millisecond where a fresh run per request (snapshot restore) took 10 to 30 ms.
// Each request executes the server's code afresh (new globals), so a server keeps no state between
// calls; servers that need it belong on the heavy tier. Requests are served one at a time, as a stdio
// server would.
type NanoLauncher struct {
	Engine NanoEngine
}

// Launch implements Launcher. The session starts with the first request (initialize).
func (l *NanoLauncher) Launch(ctx context.Context, spec *api.MCPServer, _ string) (LineConn, error) {
	memory, call, _, maxLine := limitsOf(spec)
	c := &nanoConn{eng: l.Engine, maxLine: maxLine, main: path.Join(nanoSrv, strings.TrimPrefix(spec.Command[1], "/srv/")), files: spec.Files,
		limits: api.Limits{TimeoutMS: int(call.Milliseconds()), MemoryLimitMB: memory, MaxOutputBytes: max(maxLine*4, 1<<20)},
		out:    make(chan []byte, 16), closed: make(chan struct{}), running: map[string]context.CancelFunc{}, turn: make(chan struct{}, 1)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// nanoSetup is the first cell of a server's session: it compiles the server and defines the
// function each request's cell calls.
const nanoSetup = `import sys as _agentbox_sys
_agentbox_sys.path.insert(0, %[1]s)
_agentbox_src = compile(open(%[2]s).read(), %[2]s, "exec")
def _agentbox_serve(stdin):
    import io, os, sys
    sys.stdin = io.StringIO(stdin)
    os.chdir(%[1]s)
    try:
        exec(_agentbox_src, {"__name__": "__main__", "__file__": %[2]s})
    except SystemExit:
        pass
    finally:
        sys.stdin = io.StringIO("")
        sys.stdout.flush()
`

type nanoConn struct {
	eng     NanoEngine
	main    string            // the server's file in the session
	files   map[string]string // relative to nanoSrv
	limits  api.Limits
	maxLine int
	ctx     context.Context // the cells'; cancelled by Close
	cancel  context.CancelFunc
	out     chan []byte // answer lines for ReadLine
	closed  chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu       sync.Mutex
	preamble []byte                        // the initialize request and initialized notification, replayed before each request; guarded by mu
	running  map[string]context.CancelFunc // requests being answered, by id; guarded by mu

	turn chan struct{} // holds a token while a request uses the session: one at a time
	sess tier.Session  // nil until the first request, and after one ended it; guarded by turn
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
	case h.Method == "notifications/cancelled":
		// The client gave up on a request: stop its cell (or its wait for the session).
		var n struct {
			Params struct {
				RequestID json.RawMessage `json:"requestId"`
			} `json:"params"`
		}
		if json.Unmarshal(b, &n) == nil {
			if cancel, ok := c.running[string(bytes.TrimSpace(n.Params.RequestID))]; ok {
				cancel()
			}
		}
		c.mu.Unlock()
		return nil
	case len(h.ID) == 0: // other notifications have no cell to reach
		c.mu.Unlock()
		return nil
	}
	stdin := append([]byte(nil), c.preamble...)
	if h.Method != "initialize" {
		stdin = append(stdin, line...)
	}
	key := string(bytes.TrimSpace(h.ID))
	rctx, cancel := context.WithCancel(c.ctx)
	c.running[key] = cancel
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.answer(rctx, h.ID, stdin)
		c.mu.Lock()
		delete(c.running, key)
		c.mu.Unlock()
		cancel()
	}()
	return nil
}

// answer runs the server with stdin in the session and passes on its answer to the request id;
// when the run gives none, it answers an error itself.
func (c *nanoConn) answer(ctx context.Context, id json.RawMessage, stdin []byte) {
	res, err := c.serve(ctx, stdin)
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

// serve runs one request's cell, starting the session first if there is none. A session that the
// cell ended (a crash, the memory or time limit) is dropped: the next request starts another.
func (c *nanoConn) serve(ctx context.Context, stdin []byte) (*api.Result, error) {
	select {
	case c.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-c.turn }()
	if c.sess == nil {
		s, err := c.start()
		if err != nil {
			return nil, err
		}
		c.sess = s
	}
	arg, _ := json.Marshal(string(stdin)) // a JSON string is a Python string literal
	res, err := c.sess.Run(ctx, "_agentbox_serve("+string(arg)+")\n", tier.Stream{})
	if err != nil || !c.sess.Alive() || res.Error != nil {
		c.sess.Close(context.Background())
		c.sess = nil
	}
	return res, err
}

// start opens the server's session: its files, then the setup cell.
func (c *nanoConn) start() (tier.Session, error) {
	s, err := c.eng.NewSession(c.ctx, c.limits, nil)
	if err != nil {
		return nil, fmt.Errorf("nano session: %w", err)
	}
	for p, content := range c.files {
		if err := s.WriteFile(c.ctx, path.Join(nanoSrv, p), []byte(content)); err != nil {
			s.Close(context.Background())
			return nil, fmt.Errorf("nano session: writing %s: %w", p, err)
		}
	}
	dir, _ := json.Marshal(nanoSrv)
	main, _ := json.Marshal(c.main)
	res, err := s.Run(c.ctx, fmt.Sprintf(nanoSetup, dir, main), tier.Stream{})
	if err == nil && res.Error != nil {
		err = fmt.Errorf("%s: %s", res.Error.Type, limits.Text(res.Error.Message, 1024))
	}
	if err != nil {
		s.Close(context.Background())
		return nil, fmt.Errorf("nano session: compiling the server: %w", err)
	}
	return s, nil
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
	c.turn <- struct{}{}
	if c.sess != nil {
		c.sess.Close(context.Background())
		c.sess = nil
	}
	<-c.turn
}
