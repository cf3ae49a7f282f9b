package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
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
	fset.BoolVar(&o.CheckedMemory, "checked-memory", false, "run nano with bounds-checked memory accesses instead of masked ones, to compare (serve --checked-memory)")
	load := fset.Bool("load", false, "instead: load-test a real `agentbox serve` over loopback")
	var lo bench.LoadOptions
	fset.IntVar(&lo.Clients, "clients", 100, "with --load: concurrent clients")
	fset.DurationVar(&lo.Duration, "load-duration", 0, "length of the load phase (default 30s with --load, 10s for the load row of the report)")
	fset.IntVar(&o.FirstRuns, "first-n", 5, "samples of the first `agentbox run` of a new process")
	noLoad := fset.Bool("no-load", false, "leave the load row out of the report")
	micro := fset.Bool("micro", false, "instead: time micro workloads (loops, calls, dict/str, json, re, sort) in nano and natively")
	rounds := fset.Int("rounds", 3, "with --micro: runs of each kernel on each side (the best is kept)")
	fset.IntVar(&lo.Queue, "server-queue", 0, "with --load: the server's --queue (default: its own default)")
	fset.IntVar(&lo.Concurrency, "server-concurrency", 0, "with --load: the server's --concurrency (default: its own default)")
	fset.DurationVar(&lo.ShortRunCPU, "server-short-run-cpu", 0, "with --load: the server's --short-run-cpu (default: its own default)")
	if _, err := parseInterspersed(fset, args); err != nil {
		return err
	}
	if *micro {
		if *rounds < 1 {
			return usagef("-rounds must be at least 1")
		}
		rep, err := bench.RunMicro(ctx, o.Python, *rounds, o.CheckedMemory, e.stderr)
		if err != nil {
			return fmt.Errorf("micro benchmark: %w", err)
		}
		if *asJSON {
			return json.NewEncoder(e.stdout).Encode(rep)
		}
		rep.Print(e.stdout)
		return nil
	}
	if *load {
		lo.CheckedMemory = o.CheckedMemory
		if lo.Duration == 0 {
			lo.Duration = 30 * time.Second
		}
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
	if o.Runs < 1 || o.ColdRuns < 1 || o.IdleCount < 1 || o.FirstRuns < 1 {
		return usagef("-n, -cold-n, -idle and -first-n must be at least 1")
	}
	if lo.Duration < 0 {
		return usagef("-load-duration must not be negative")
	}
	// The rows that start processes of their own (first run, load) run this executable.
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("benchmark: finding this executable: %w", err)
	}
	o.Binary, o.LoadClients, o.LoadDuration = exe, lo.Clients, lo.Duration
	if *noLoad {
		o.LoadDuration = -1
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
