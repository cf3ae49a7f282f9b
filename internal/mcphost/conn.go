package mcphost

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/internal/limits"
)

// LineConn is a running server's stdio as newline-delimited JSON-RPC: what a Launcher returns.
type LineConn interface {
	// ReadLine returns the next line the server wrote (without its newline); io.EOF once it has
	// ended. A line over the cap is an error, after which no more lines come.
	ReadLine(ctx context.Context) ([]byte, error)
	// WriteLine sends one line (the newline is added).
	WriteLine(ctx context.Context, b []byte) error
	// Close stops the server; it may be called more than once.
	Close()
}

// ClientTransport is the MCP client transport over lc that the host uses (see transport); log
// receives the dropped lines (nil discards them). Benchmarks use it to call a server directly.
func ClientTransport(lc LineConn, log *slog.Logger) mcp.Transport {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &transport{lc: lc, log: log, dropped: new(atomic.Int64)}
}

// transport adapts a LineConn to the SDK's client side. Unlike the SDK's IOTransport, which ends
// the connection at the first undecodable line, it drops lines that are not JSON-RPC messages (a
// server's stray print) with a warning: the calls waiting for a real answer then end by their
// time limit, not with the whole connection.
type transport struct {
	lc  LineConn
	log *slog.Logger
	// dropped counts the lines dropped as malformed.
	dropped *atomic.Int64
}

func (t *transport) Connect(context.Context) (mcp.Connection, error) {
	return &conn{lc: t.lc, log: t.log, dropped: t.dropped, closed: make(chan struct{})}, nil
}

type conn struct {
	lc      LineConn
	log     *slog.Logger
	dropped *atomic.Int64
	readMu  sync.Mutex // one ReadLine at a time
	writeMu sync.Mutex // lines never interleave
	closed  chan struct{}
	once    sync.Once
}

func (c *conn) SessionID() string { return "" }

func (c *conn) Read(ctx context.Context) (jsonrpc.Message, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	// Close must unblock a waiting Read: the line is read under a context that Close cancels.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		line, err := c.lc.ReadLine(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				select {
				case <-c.closed:
					return nil, io.EOF
				default:
				}
			}
			return nil, err
		}
		if len(line) == 0 {
			continue
		}
		msg, err := jsonrpc.DecodeMessage(line)
		if err != nil {
			// Logged sparingly: a server printing junk in a loop must not flood the log.
			if n := c.dropped.Add(1); n <= 10 || n%1000 == 0 {
				c.log.Warn("mcp host: dropped a line from a server that is not a JSON-RPC message", "dropped", n, "err", err, "line", limits.Text(string(line), 200))
			}
			continue
		}
		return msg, nil
	}
}

func (c *conn) Write(ctx context.Context, msg jsonrpc.Message) error {
	b, err := jsonrpc.EncodeMessage(msg)
	if err != nil {
		return err
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	select {
	case <-c.closed:
		return errors.New("mcp host: connection closed")
	default:
	}
	return c.lc.WriteLine(ctx, b)
}

func (c *conn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.lc.Close()
	})
	return nil
}
