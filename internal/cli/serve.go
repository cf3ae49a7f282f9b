package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

func (e *env) serve(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("serve", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	addr := fset.String("addr", "127.0.0.1:8080", "listen address")
	var keys multiFlag
	fset.Var(&keys, "api-key", "accepted bearer key (repeatable; also AGENTBOX_API_KEY)")
	keyFile := fset.String("api-key-file", "", "file with one accepted bearer key per line")
	pool := fset.Int("pool", 0, "restored sandboxes kept ready (default 4; negative disables)")
	concurrent := fset.Int("concurrency", 0, "runs executing at once (default GOMAXPROCS)")
	queue := fset.Int("queue", 0, "runs waiting for a slot before 429 (default 32 per slot)")
	grace := fset.Duration("shutdown-grace", 30*time.Second, "how long in-flight requests may finish on shutdown")
	logJSON := fset.Bool("log-json", false, "log JSON lines instead of text")
	heavyMode := fset.String("heavy", "auto", "heavy tier: auto (on when installed), on, off")
	heavyPool := fset.Int("heavy-pool", 0, "started heavy sandboxes kept ready (default 2; negative disables)")
	packageIndex := fset.String("package-index", "", "PEP 503 index URL that heavy-tier `packages` are fetched from (on the host)")
	rulesFile := fset.String("rules", "", "routing rules (TOML) for tier auto, over the shipped ones")
	if _, err := parseInterspersed(fset, args); err != nil {
		return err
	}
	if k := os.Getenv("AGENTBOX_API_KEY"); k != "" {
		keys = append(keys, k)
	}
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return usagef("--api-key-file: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				keys = append(keys, line)
			}
		}
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if *logJSON {
		log = slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	eng, err := nano.New(ctx, nano.Config{PoolSize: *pool, MaxConcurrent: *concurrent, MaxQueue: *queue, Logger: log})
	if err != nil {
		return err
	}
	rules, err := loadRules(*rulesFile)
	if err != nil {
		eng.Close(context.Background())
		return usageError{err}
	}
	cfg := server.Config{Addr: *addr, APIKeys: keys, Logger: log, MCP: mcpserver.HTTPHandler(eng, version()), Rules: rules}
	var hv *heavy.Engine
	switch *heavyMode {
	case "off":
	case "auto", "on":
		hv, err = heavy.New(ctx, heavy.Config{PoolSize: *heavyPool, PackageIndex: *packageIndex, Logger: log})
		switch {
		case err == nil:
			cfg.Heavy = hv
		case *heavyMode == "auto" && errors.Is(err, heavy.ErrNotInstalled):
			log.Info("heavy tier off", "reason", err)
		default:
			eng.Close(context.Background())
			return err
		}
	default:
		eng.Close(context.Background())
		return usagef("--heavy %q: want auto, on or off", *heavyMode)
	}
	srv, err := server.New(eng, cfg)
	if err != nil {
		eng.Close(context.Background())
		if hv != nil {
			hv.Close(context.Background())
		}
		return usageError{err}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("agentbox serving", "addr", *addr, "auth", len(keys) > 0, "heavy", hv != nil)
	select {
	case err = <-errc:
	case <-ctx.Done():
		log.Info("shutting down", "grace", *grace)
	}
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = errors.Join(err, serr)
	}
	if cerr := eng.Close(sctx); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing engine: %w", cerr))
	}
	if hv != nil {
		if cerr := hv.Close(sctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing heavy engine: %w", cerr))
		}
	}
	return err
}
