package cli

import (
	"context"
	"errors"
	"flag"
	"io"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
)

// mcp serves the Model Context Protocol on stdin/stdout; logs go to stderr.
func (e *env) mcp(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("mcp", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	tf := addTierFlags(fset)
	if _, err := parseInterspersed(fset, args); err != nil {
		return err
	}
	t, err := tf.open(ctx, nano.Config{PoolSize: 2}, dispatch.Config{}, e.log)
	if err != nil {
		return err
	}
	defer t.close(context.Background())
	err = mcpserver.New(t, version()).Run(ctx, &mcp.IOTransport{Reader: nopReadCloser{e.stdin}, Writer: nopWriteCloser{e.stdout}})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

type nopReadCloser struct{ io.Reader }

func (nopReadCloser) Close() error { return nil }

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
