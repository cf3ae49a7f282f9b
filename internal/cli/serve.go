package cli

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/internal/dispatch"
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
	tf := addTierFlags(fset)
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
	t, err := tf.open(ctx, nano.Config{PoolSize: *pool, MaxConcurrent: *concurrent, MaxQueue: *queue}, dispatch.Config{}, log)
	if err != nil {
		return err
	}
	srv, err := server.New(t, server.Config{Addr: *addr, APIKeys: keys, Logger: log, MCP: mcpserver.HTTPHandler(t, version())})
	if err != nil {
		t.close(context.Background())
		return usageError{err}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("agentbox serving", "addr", *addr, "auth", len(keys) > 0, "heavy", t.heavy != nil)
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
	if cerr := t.close(sctx); cerr != nil {
		err = errors.Join(err, cerr)
	}
	return err
}
