package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// mcp serves the Model Context Protocol on stdin/stdout, with the hosted MCP servers' tools; logs go
// to stderr. `mcp add|list|rm` manage the hosted servers of an agentbox server over its API.
func (e *env) mcp(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "add":
			return e.mcpAdd(ctx, args[1:])
		case "list", "ls":
			return e.mcpList(ctx, args[1:])
		case "rm", "remove":
			return e.mcpRemove(ctx, args[1:])
		}
	}
	fset := flag.NewFlagSet("mcp", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	tf := addTierFlags(fset, "")
	policyFile := fset.String("policy", "", "network ceiling (TOML, docs/egress.md) that the tools' network arguments must stay inside; without it sandboxes are offline")
	dir := fset.String("mcp-dir", "", "hosted MCP servers' registrations (default: beside the heavy state root, shared with agentbox serve; \"off\": none)")
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
	var hosted mcpserver.Hosted
	if *dir != "off" {
		h, err := openHost(t, cmp.Or(*dir, mcpDir(*tf.stateDir)), nil, e.log)
		if err != nil {
			return err
		}
		defer h.Close()
		hosted = h
	}
	// On stdio the caller is the machine's operator: every registration in the directory is listed.
	srv, stop := mcpserver.NewGateway(dispatch.WithTenant(ctx, dispatch.Tenant{Admin: true}), t, version(), hosted)
	defer stop()
	err = srv.Run(ctx, &mcpserver.StdioTransport{Reader: e.stdin, Writer: e.stdout, Logger: e.log})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
