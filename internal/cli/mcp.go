package cli

import (
	"context"
	"errors"
	"flag"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// mcp serves the Model Context Protocol on stdin/stdout; logs go to stderr.
func (e *env) mcp(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("mcp", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	tf := addTierFlags(fset, "")
	policyFile := fset.String("policy", "", "network ceiling (TOML, docs/egress.md) that the tools' network arguments must stay inside; without it sandboxes are offline")
	if _, err := parseInterspersed(fset, args); err != nil {
		return err
	}
	var ceiling *netpolicy.Ceiling
	if *policyFile != "" {
		var err error
		if ceiling, err = netpolicy.LoadCeiling(*policyFile); err != nil {
			return usagef("--policy: %w", err)
		}
	}
	t, err := tf.open(ctx, nano.Config{PoolSize: 2}, dispatch.Config{Ceiling: ceiling}, e.log)
	if err != nil {
		return err
	}
	defer t.close(context.Background())
	err = mcpserver.New(t, version()).Run(ctx, &mcpserver.StdioTransport{Reader: e.stdin, Writer: e.stdout, Logger: e.log})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
