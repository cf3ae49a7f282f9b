package mcpserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// DefaultMaxMessageBytes caps one inbound message of a StdioTransport: room for write_file with
// some 20 MiB of base64 content.
const DefaultMaxMessageBytes = 32 << 20

// StdioTransport serves MCP as newline-delimited JSON-RPC over a reader and a writer (stdin and
// stdout for `agentbox mcp`). Unlike the SDK's IOTransport, which ends the connection on the first
// line it cannot decode, it answers a bad line with a JSON-RPC error and keeps serving: a client's
// one malformed message must not end its named sessions.
type StdioTransport struct {
	Reader io.Reader
	Writer io.Writer
	// MaxMessageBytes caps one line; a longer one is discarded and answered with an error. Zero
	// means DefaultMaxMessageBytes.
	MaxMessageBytes int
	// Logger receives a warning per refused line; nil discards them.
	Logger *slog.Logger
}

// Connect implements mcp.Transport. It may be called once.
func (t *StdioTransport) Connect(context.Context) (mcp.Connection, error) {
	limit := t.MaxMessageBytes
	if limit <= 0 {
		limit = DefaultMaxMessageBytes
	}
	log := t.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &lineConn{w: t.Writer, log: log, incoming: make(chan jsonrpc.Message), eof: make(chan struct{}), closed: make(chan struct{})}
	go c.readLoop(bufio.NewReaderSize(t.Reader, 64<<10), limit)
	return c, nil
}

// lineConn is StdioTransport's connection.
type lineConn struct {
	w   io.Writer
	log *slog.Logger

	writeMu sync.Mutex // serialises writes, so that lines never interleave

	incoming chan jsonrpc.Message // valid messages, in order
	eof      chan struct{}        // closed when the reader has ended; readErr says why
	readErr  error                // written before eof is closed
	closed   chan struct{}
	once     sync.Once
}

func (c *lineConn) SessionID() string { return "" }

func (c *lineConn) Read(ctx context.Context) (jsonrpc.Message, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case m := <-c.incoming:
		return m, nil
	case <-c.eof:
		return nil, c.readErr
	case <-c.closed:
		return nil, io.EOF
	}
}

func (c *lineConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := jsonrpc.EncodeMessage(msg)
	if err != nil {
		return fmt.Errorf("encoding a message: %w", err)
	}
	return c.writeLine(data)
}

func (c *lineConn) writeLine(data []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	select {
	case <-c.closed:
		return errors.New("connection closed")
	default:
	}
	_, err := c.w.Write(append(data, '\n'))
	return err
}

// Close stops Read. The reader goroutine ends at the input's end (stdin cannot be interrupted).
func (c *lineConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// readLoop reads lines until the input ends, passing valid messages on and answering the others.
func (c *lineConn) readLoop(r *bufio.Reader, limit int) {
	for {
		line, tooLong, err := readLine(r, limit)
		switch {
		case tooLong:
			c.refuse(nil, jsonrpc.CodeInvalidRequest, fmt.Sprintf("invalid request: message larger than %d bytes (one JSON-RPC message per line)", limit))
		case len(bytes.TrimSpace(line)) > 0:
			msg, id, code, why := parseLine(line)
			if msg == nil {
				c.refuse(id, code, why)
				break
			}
			select {
			case c.incoming <- msg:
			case <-c.closed:
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.EOF // what the SDK expects at a clean end
			}
			c.readErr = err
			close(c.eof)
			return
		}
	}
}

// readLine returns the next line without its end. A line longer than limit is read to its end and
// dropped (tooLong), so that it costs no more memory than limit.
func readLine(r *bufio.Reader, limit int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := r.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > limit+2 { // the line end may be \r\n
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if !tooLong && len(line) > limit {
			tooLong, line = true, nil
		}
		return line, tooLong, err
	}
}

// parseLine decodes one JSON-RPC message. When it cannot, it returns the error response's id (the
// message's own when it has a valid one, else null), code and message.
func parseLine(line []byte) (msg jsonrpc.Message, id json.RawMessage, code int64, why string) {
	var raw json.RawMessage
	if err := json.Unmarshal(line, &raw); err != nil {
		return nil, nil, jsonrpc.CodeParseError, "parse error: " + err.Error()
	}
	switch bytes.TrimSpace(line)[0] {
	case '{':
	case '[':
		return nil, nil, jsonrpc.CodeInvalidRequest, "invalid request: batches are not supported; send one JSON-RPC message per line"
	default:
		return nil, nil, jsonrpc.CodeInvalidRequest, "invalid request: a JSON-RPC message is a JSON object"
	}
	m, err := jsonrpc.DecodeMessage(line)
	if err != nil {
		var head struct {
			ID json.RawMessage `json:"id"`
		}
		json.Unmarshal(line, &head)
		if len(head.ID) > 0 && (head.ID[0] == '"' || head.ID[0] == '-' || head.ID[0] >= '0' && head.ID[0] <= '9') {
			id = head.ID
		}
		return nil, id, jsonrpc.CodeInvalidRequest, "invalid request: " + err.Error()
	}
	return m, nil, 0, ""
}

// refuse answers a line that is not a message with a JSON-RPC error response.
func (c *lineConn) refuse(id json.RawMessage, code int64, why string) {
	if id == nil {
		id = json.RawMessage("null")
	}
	if len(why) > 1024 {
		why = why[:1024] + "..."
	}
	c.log.Warn("mcp: refused an input line", "code", code, "reason", why)
	type wireError struct {
		Code    int64  `json:"code"`
		Message string `json:"message"`
	}
	data, err := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   wireError       `json:"error"`
	}{"2.0", id, wireError{code, why}})
	if err == nil {
		err = c.writeLine(data)
	}
	if err != nil {
		c.log.Warn("mcp: answering a refused line", "err", err)
	}
}
