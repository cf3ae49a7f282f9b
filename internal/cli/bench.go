package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/entersandbox/agentbox/internal/bench"
)

func (e *env) bench(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("bench", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	var o bench.Options
	fset.IntVar(&o.Runs, "n", 1000, "samples for each start-up figure")
	fset.IntVar(&o.ColdRuns, "cold-n", 30, "samples of the snapshot-less cold start")
	fset.DurationVar(&o.Duration, "duration", 0, "length of each throughput measurement (default 3s)")
	fset.IntVar(&o.IdleCount, "idle", 50, "sandboxes held to measure memory per idle sandbox")
	fset.StringVar(&o.Python, "python", "", "native interpreter for the CPU comparison (default: python3 on PATH)")
	asJSON := fset.Bool("json", false, "print the report as JSON")
	load := fset.Bool("load", false, "instead: load-test a real `agentbox serve` over loopback")
	var lo bench.LoadOptions
	fset.IntVar(&lo.Clients, "clients", 100, "with --load: concurrent clients")
	fset.DurationVar(&lo.Duration, "load-duration", 30*time.Second, "with --load: length of the load phase")
	fset.IntVar(&lo.Queue, "server-queue", 0, "with --load: the server's --queue (default: its own default)")
	if _, err := parseInterspersed(fset, args); err != nil {
		return err
	}
	if *load {
		rep, err := bench.RunLoad(ctx, lo, e.stderr)
		if err != nil {
			return fmt.Errorf("load benchmark: %w", err)
		}
		if *asJSON {
			return json.NewEncoder(e.stdout).Encode(rep)
		}
		rep.Print(e.stdout)
		return nil
	}
	if o.Runs < 1 || o.ColdRuns < 1 || o.IdleCount < 1 {
		return usagef("-n, -cold-n and -idle must be at least 1")
	}
	rep, err := bench.Run(ctx, o, e.stderr)
	if err != nil {
		return fmt.Errorf("benchmark: %w", err)
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(rep)
	}
	rep.Print(e.stdout)
	return nil
}
