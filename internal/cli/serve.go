package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/cluster"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/server"
)

func (e *env) serve(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("serve", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	addr := fset.String("addr", "127.0.0.1:8080", "listen address")
	var keys multiFlag
	fset.Var(&keys, "api-key", "accepted bearer key (repeatable; also AGENTBOX_API_KEY)")
	keyFile := fset.String("api-key-file", "", "file with one accepted bearer key per line, optionally followed by admin, sessions=N, runs=N, queue=N (docs/http-api.md)")
	var adminKeys multiFlag
	fset.Var(&adminKeys, "admin-key", "accepted bearer key that sees and may act on every key's sessions (repeatable)")
	keySessions := fset.Int("key-sessions", 0, "sessions one API key may have open (default no cap of its own)")
	keyRuns := fset.Int("key-runs", 0, "runs one API key may have on a tier at once (default its fair share of the tier's slots)")
	keyQueue := fset.Int("key-queue", 0, "runs one API key may have waiting for its share before 429 (default 32 per slot of the tier, at most 64; negative: none)")
	budget := fset.Int("memory-budget", 0, "MiB of memory limits that open sessions and running programs may hold together before 429 (default 3/4 of the host's memory; negative: no budget)")
	pool := fset.Int("pool", 0, "restored sandboxes kept ready (default 4; negative disables)")
	concurrent := fset.Int("concurrency", 0, "nano runs executing at once, sharing the cores (default 32 per GOMAXPROCS)")
	shortCPU := fset.Duration("short-run-cpu", 0, "CPU time a nano run has at full priority before long runs make way for new ones (default 10ms; negative: all runs share the CPU equally)")
	checked := fset.Bool("checked-memory", false, "nano: bounds-check every guest memory access (out-of-bounds accesses trap, as Wasm specifies) instead of masking addresses into the sandbox's own memory; slower (docs/masked-memory.md)")
	queue := fset.Int("queue", 0, "runs waiting for a slot before 429 (default 32 per slot)")
	grace := fset.Duration("shutdown-grace", 30*time.Second, "how long in-flight requests may finish on shutdown")
	logJSON := fset.Bool("log-json", false, "log JSON lines instead of text")
	policyFile := fset.String("policy", "", "network ceiling (TOML, docs/egress.md): the hosts sandboxes may ever reach, hosts always denied, DLP defaults, rule packs, secrets; without it every sandbox is offline")
	tf := addTierFlags(fset, defaultStateDir())
	mcpDirFlag := fset.String("mcp-dir", "", "hosted MCP servers' registrations (default: the state root's path with -mcp appended; \"off\": no MCP hosting)")
	af := addAuditFlags(fset)
	cf := addClusterFlags(fset)
	if _, err := parseInterspersed(fset, args); err != nil {
		return err
	}
	if err := cf.check(); err != nil {
		return err
	}
	if *keySessions < 0 || *keyRuns < 0 {
		return usagef("--key-sessions and --key-runs must be 0 (no cap of its own) or more")
	}
	var ceiling *netpolicy.Ceiling
	if *policyFile != "" {
		var err error
		if ceiling, err = netpolicy.LoadCeiling(*policyFile); err != nil {
			return usagef("--policy: %w", err)
		}
	}
	if k := os.Getenv("AGENTBOX_API_KEY"); k != "" {
		keys = append(keys, k)
	}
	var keyed []server.APIKey
	for _, k := range adminKeys {
		keyed = append(keyed, server.APIKey{Key: k, Admin: true})
	}
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return usagef("--api-key-file: %w", err)
		}
		fromFile, err := server.ParseKeyFile(string(b))
		if err != nil {
			return usagef("--api-key-file %s: %w", *keyFile, err)
		}
		keyed = append(keyed, fromFile...)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if *logJSON {
		log = slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	dcfg := dispatch.Config{MemoryBudgetMB: *budget, NanoSlots: *concurrent, Ceiling: ceiling,
		TenantLimits: dispatch.TenantLimits{Sessions: *keySessions, Runs: *keyRuns, Queue: *keyQueue}}
	digest, policy, err := policyDigest(keys, keyed, dcfg, *tf.rules, tf)
	if err != nil {
		return err
	}
	// In a fleet the audit events are also published into one JetStream stream, once joined.
	var fleetAudit *cluster.AuditSink
	if *cf.nats != "" {
		fleetAudit = cluster.NewAuditSink()
		af.extraSinks = append(af.extraSinks, fleetAudit)
	}
	// The audit log opens first: the dispatcher's reaper records expiries into it.
	alog, closeSinks, err := af.open(ctx, *tf.stateDir, e.stdout, log)
	if err != nil {
		return err
	}
	if alog != nil {
		defer closeSinks()
		defer alog.Close()
		dcfg.OnSessionEnd = sessionExpired(alog, log)
		dcfg.NetworkSink = networkRecorder(alog, log)
	}
	// In a fleet a session that ends here has its record removed (the node joins after the
	// dispatcher starts, hence the late binding).
	var fleetNode atomic.Pointer[cluster.Node]
	dcfg.SessionClosed = func(id string) {
		if n := fleetNode.Load(); n != nil {
			n.SessionEnded(id)
		}
	}
	t, err := tf.open(ctx, nano.Config{PoolSize: *pool, MaxConcurrent: *concurrent, MaxQueue: *queue, ShortRunCPU: *shortCPU, CheckedMemory: *checked}, dcfg, log)
	if err != nil {
		return err
	}
	// MCP runs and session starts are recorded too.
	sandboxes := server.AuditMCP(t, alog, log)
	scfg := server.Config{Addr: *addr, APIKeys: keys, Keys: keyed, Logger: log, MCP: mcpserver.HTTPHandler(sandboxes, version()), Audit: alog}
	if t.net != nil {
		scfg.Collectors = []prometheus.Collector{t.net.proxy.Collector()}
	}
	var host *mcphost.Host
	if *mcpDirFlag != "off" {
		if host, err = openHost(t, cmp.Or(*mcpDirFlag, mcpDir(*tf.stateDir)), alog, log); err != nil {
			t.close(context.Background())
			return err
		}
		scfg.MCP, scfg.MCPServers = mcpserver.HTTPGateway(sandboxes, version(), host), host
	}
	fdigest, err := fleetDigest(digest, *policyFile)
	if err != nil {
		t.close(context.Background())
		return err
	}
	node, nats, err := cf.join(ctx, *addr, *tf.stateDir, fdigest, t.Dispatcher, t.heavy != nil, log)
	if err != nil {
		if host != nil {
			host.Close()
		}
		t.close(context.Background())
		return err
	}
	leave := func() {}
	if node != nil {
		scfg.Fleet = node
		scfg.Collectors = append(scfg.Collectors, node.ReplicationCollector())
		leave = sync.OnceFunc(func() {
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := node.Leave(lctx); err != nil {
				log.Warn("leaving the fleet", "err", err)
			}
		})
		defer func() {
			node.Close(context.Background()) // after the last audit event (server.stop) is published
			if nats != nil {
				nats.Shutdown()
			}
		}()
		defer leave()
		if alog != nil {
			if err := fleetAudit.Attach(ctx, node); err != nil {
				log.Warn("the fleet's audit stream; events stay in this host's log only", "err", err)
			}
		}
		// Records of this host id's sessions from its last run (they ended with it) go now; from here
		// on each session's record goes when it ends.
		fleetNode.Store(node)
		if n, err := node.SweepSessionRecords(ctx, func(id string) bool {
			_, err := t.Session(dispatch.WithTenant(ctx, dispatch.Tenant{Admin: true}), id)
			return err == nil
		}); err != nil {
			log.Warn("stale session records of this host stay (they answer 404)", "err", err)
		} else if n > 0 {
			log.Info("removed the records of this host's sessions that ended with its last run", "records", n)
		}
		log.Info("joined the fleet", "host", node.ID(), "nats", *cf.nats)
	}
	srv, err := server.New(t, scfg)
	if err != nil {
		if host != nil {
			host.Close()
		}
		t.close(context.Background())
		return usageError{err}
	}
	started := time.Now()
	if alog != nil {
		if err := recordPolicy(ctx, alog, digest, policy); err != nil {
			t.close(context.Background())
			return err
		}
		if err := alog.Record(ctx, audit.Event{Type: audit.TypeServerStart, Details: map[string]any{"version": version(), "addr": *addr,
			"auth": len(keys)+len(keyed) > 0, "keys": len(keys) + len(keyed), "heavy": t.heavy != nil, "policy_sha256": digest, "pid": os.Getpid()}}); err != nil {
			t.close(context.Background())
			return err
		}
		if *af.reportDir != "" {
			rctx, stopReports := context.WithCancel(context.Background())
			defer stopReports()
			go alog.ScheduleDaily(rctx, *af.reportDir, *af.reportHour)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("agentbox serving", "addr", *addr, "console", "http://"+*addr+"/ui/", "auth", len(keys)+len(keyed) > 0, "keys", len(keys)+len(keyed), "heavy", t.heavy != nil,
		"memory_budget_mb", t.Stats().MemoryBudgetMB, "network_ceiling", *policyFile, "audit_db", auditPath(alog))
	stopReason := "signal"
	select {
	case err = <-errc:
		stopReason = "error"
	case <-ctx.Done():
		log.Info("shutting down", "grace", *grace)
	}
	leave() // no more placements here; the others see this host go at once
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = errors.Join(err, serr)
	}
	if host != nil {
		host.Close() // its servers' sandboxes, before the engines close
	}
	if cerr := t.close(sctx); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if alog != nil {
		d := map[string]any{"reason": stopReason, "uptime_s": int64(time.Since(started).Seconds())}
		if err != nil {
			d["error"] = err.Error()
		}
		if rerr := alog.Record(context.Background(), audit.Event{Type: audit.TypeServerStop, Details: d}); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

func auditPath(l *audit.Log) string {
	if l == nil {
		return "off"
	}
	return l.Path()
}
