package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// mcpDir is where hosted MCP servers' registrations live by default: beside the heavy state root
// (which the heavy engine empties at its start and end), so that `agentbox serve` and `agentbox mcp`
// on one machine share them.
func mcpDir(stateDir string) string {
	if stateDir == "" {
		stateDir = defaultStateDir()
	}
	return filepath.Clean(stateDir) + "-mcp"
}

// openHost starts the registry of hosted MCP servers over the tiers that are on.
// alog, when not nil, records every relayed call.
func openHost(t *tiers, dir string, alog *audit.Log, log *slog.Logger) (*mcphost.Host, error) {
	launchers := map[api.Tier]mcphost.Launcher{api.TierNano: &mcphost.NanoLauncher{Engine: t.nano}}
	if t.heavy != nil {
		launchers[api.TierHeavy] = heavyLauncher(t.heavy, log)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mcp servers directory: %w", err)
	}
	cfg := mcphost.Config{Dir: dir, Launchers: launchers, Builtin: mcpserver.BuiltinTools, Version: version(),
		Scanner: mcpScanner{t.scan}, Logger: log}
	if alog != nil {
		cfg.Recorder = mcpRecorder{alog, log}
	}
	if t.net != nil {
		// A hosted server's own traffic passes the same ceiling, proxy and DLP as a sandbox's.
		cfg.Network = func(ctx context.Context, np *api.NetworkPolicy) (context.Context, error) {
			p, err := netpolicy.Compile(t.ceiling, np, "", nil, nil)
			if err != nil {
				return nil, fmt.Errorf("network policy: %w", err)
			}
			return netpolicy.WithGuard(ctx, netpolicy.NewGuard(p, func(e api.NetworkEvent) {
				log.Info("network", "mcp_server", true, "host", e.Host, "method", e.Method, "path", e.Path,
					"verdict", e.Verdict, "rule", e.Rule, "detectors", e.Detectors)
			})), nil
		}
	}
	return mcphost.New(cfg)
}

// mcpClient is the HTTP API client of `agentbox mcp add|list|rm`.
func (e *env) mcpClient(fset *flag.FlagSet) func() (*agentbox.Client, error) {
	url := fset.String("url", envOr("AGENTBOX_URL", "http://127.0.0.1:8080"), "the agentbox server (also AGENTBOX_URL)")
	key := fset.String("api-key", "", "bearer key (default AGENTBOX_API_KEY)")
	return func() (*agentbox.Client, error) {
		k := *key
		if k == "" {
			k = os.Getenv("AGENTBOX_API_KEY")
		}
		c, err := agentbox.New(*url, agentbox.WithAPIKey(k))
		if err != nil {
			return nil, usageError{err}
		}
		return c, nil
	}
}

// apiErr makes the server's refusal of a bad registration a usage error (exit 2), as a bad flag is.
func apiErr(err error) error {
	if errors.Is(err, agentbox.ErrInvalidArgument) || errors.Is(err, agentbox.ErrTooLarge) {
		return usageError{err}
	}
	return err
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// mcpAdd registers a server: `agentbox mcp add [flags] NAME -- COMMAND [ARG...]`, or with --spec a
// JSON registration (POST /v1/mcp/servers's body).
func (e *env) mcpAdd(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("mcp add", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	client := e.mcpClient(fset)
	specFile := fset.String("spec", "", "a JSON file with the whole registration (then no NAME or COMMAND)")
	tierName := fset.String("tier", "heavy", "heavy or nano")
	var files, pkgs, envs, allow, deny multiFlag
	fset.Var(&files, "file", "PATH=LOCALFILE: put LOCALFILE at /srv/PATH (repeatable)")
	fset.Var(&pkgs, "package", "npm:<name>[@version], installed on the host and mounted read-only (repeatable)")
	fset.Var(&envs, "env", "NAME=VALUE for the server (repeatable; never secrets)")
	fset.Var(&allow, "allow", "expose only these tools (repeatable)")
	fset.Var(&deny, "deny", "never expose these tools (repeatable)")
	dlp := fset.String("dlp", "", "block (default), redact, log or off")
	memory := fset.Int("memory", 0, "memory limit in MiB (default 512)")
	timeout := fset.Int("call-timeout-ms", 0, "time limit of one call (default 30000)")
	lazy := fset.Bool("lazy", false, "do not start it now; its tools are learnt on first use")
	before, command := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		before, command = args[:i], args[i+1:]
	}
	pos, err := parseInterspersed(fset, before)
	if err != nil {
		return err
	}
	var spec api.MCPServer
	if *specFile != "" {
		if len(pos) > 0 || len(command) > 0 {
			return usagef("mcp add: --spec takes the whole registration; no NAME or COMMAND")
		}
		b, err := os.ReadFile(*specFile)
		if err != nil {
			return usagef("mcp add: %w", err)
		}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			return usagef("mcp add: %s: %w", *specFile, err)
		}
	} else {
		if len(pos) != 1 || len(command) == 0 {
			return usagef("usage: agentbox mcp add [flags] NAME -- COMMAND [ARG...]")
		}
		spec = api.MCPServer{Name: pos[0], Command: command, Tier: api.Tier(*tierName), Packages: pkgs, DLP: *dlp, Lazy: *lazy,
			Tools: api.MCPToolFilter{Allow: allow, Deny: deny}, Limits: api.MCPLimits{MemoryLimitMB: *memory, CallTimeoutMS: *timeout}}
		for _, f := range files {
			dst, src, ok := strings.Cut(f, "=")
			if !ok {
				return usagef("mcp add: --file %q: want PATH=LOCALFILE", f)
			}
			b, err := os.ReadFile(src)
			if err != nil {
				return usagef("mcp add: --file: %w", err)
			}
			if spec.Files == nil {
				spec.Files = map[string]string{}
			}
			spec.Files[dst] = string(b)
		}
		for _, kv := range envs {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return usagef("mcp add: --env %q: want NAME=VALUE", kv)
			}
			if spec.Env == nil {
				spec.Env = map[string]string{}
			}
			spec.Env[k] = v
		}
	}
	c, err := client()
	if err != nil {
		return err
	}
	info, err := c.RegisterMCPServer(ctx, spec)
	if err != nil {
		return apiErr(err)
	}
	fmt.Fprintf(e.stdout, "registered %s (%s, %s): %s\n", info.Name, info.Tier, info.Status, strings.Join(info.ToolNames, " "))
	return nil
}

// mcpList prints the registered servers, or with --tools their tools.
func (e *env) mcpList(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("mcp list", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	client := e.mcpClient(fset)
	tools := fset.Bool("tools", false, "list the tools (server__tool) with their descriptions instead")
	asJSON := fset.Bool("json", false, "print the API's JSON")
	if pos, err := parseInterspersed(fset, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("usage: agentbox mcp list [--tools] [--json]")
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out any
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	if *tools {
		list, err := c.ListMCPTools(ctx)
		if err != nil {
			return err
		}
		out = list
		if !*asJSON {
			fmt.Fprintln(tw, "TOOL\tDESCRIPTION")
			for _, t := range list {
				fmt.Fprintf(tw, "%s\t%s\n", t.Name, firstLine(t.Description))
			}
		}
	} else {
		list, err := c.ListMCPServers(ctx)
		if err != nil {
			return err
		}
		out = list
		if !*asJSON {
			fmt.Fprintln(tw, "NAME\tTIER\tSTATUS\tTOOLS\tRESTARTS")
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", s.Name, s.Tier, s.Status, len(s.ToolNames), s.Restarts)
			}
		}
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	return tw.Flush()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// mcpRemove deletes registrations.
func (e *env) mcpRemove(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("mcp rm", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	client := e.mcpClient(fset)
	pos, err := parseInterspersed(fset, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("usage: agentbox mcp rm NAME...")
	}
	c, err := client()
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range pos {
		if err := c.DeleteMCPServer(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		fmt.Fprintf(e.stdout, "removed %s\n", name)
	}
	return errors.Join(errs...)
}
