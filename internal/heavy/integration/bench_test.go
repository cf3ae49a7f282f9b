package integration

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
	"github.com/entersandbox/agentbox/internal/tier"
)

const pandasVersion = "import pandas; print(pandas.__version__)"

func benchRun(b *testing.B, e *heavy.Engine) {
	res, err := e.Run(context.Background(), api.RunRequest{Code: pandasVersion}, tier.Stream{})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("%v %+v", err, res)
	}
}

// BenchmarkPoolHit: a run in a pooled sandbox that has pandas imported already (refill not timed).
func BenchmarkPoolHit(b *testing.B) {
	e := pooledEngine(b)
	for b.Loop() {
		waitPool(b, e)
		benchRun(b, e)
	}
}

const chartCode = "import matplotlib.pyplot as plt\nplt.plot(range(100), [i * i for i in range(100)], label='sq')\nplt.title('t')\nplt.show()"

// BenchmarkChartPoolHit: a matplotlib chart (PNG, and its extracted data) from a pooled sandbox: the
// cost of the results machinery on heavy, next to BenchmarkPoolHit's plain run.
func BenchmarkChartPoolHit(b *testing.B) {
	e := pooledEngine(b)
	for b.Loop() {
		waitPool(b, e)
		res, err := e.Run(context.Background(), api.RunRequest{Code: chartCode}, tier.Stream{})
		if err != nil || res.ExitCode != 0 || len(res.Artifacts) != 1 {
			b.Fatalf("%v %+v", err, res)
		}
	}
}

// BenchmarkColdStart: start a sandbox, import pandas, run, destroy.
func BenchmarkColdStart(b *testing.B) {
	e, err := heavy.New(context.Background(), heavy.Config{PoolSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	for b.Loop() {
		benchRun(b, e)
	}
}

// benchTiers starts a heavy engine with a pool of 2 and a dispatcher over it and a nano engine.
func benchTiers(b *testing.B) (*heavy.Engine, *dispatch.Dispatcher) {
	ctx := context.Background()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: 2})
	if err != nil {
		b.Fatal(err)
	}
	nanoEng, err := nano.New(ctx, nano.Config{})
	if err != nil {
		e.Close(ctx)
		b.Fatal(err)
	}
	d := dispatch.New(nanoEng, dispatch.Config{Heavy: e})
	b.Cleanup(func() { d.Close(); nanoEng.Close(ctx); e.Close(ctx) })
	return e, d
}

// BenchmarkAPIPoolHit: the same run end to end through the HTTP API and the Go SDK, from the pool.
func BenchmarkAPIPoolHit(b *testing.B) {
	ctx := context.Background()
	e, d := benchTiers(b)
	srv, err := server.New(d, server.Config{})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	c, _ := agentbox.New(ts.URL)
	for b.Loop() {
		b.StopTimer()
		for e.PoolReady() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		b.StartTimer()
		res, err := c.Run(ctx, agentbox.RunBody{Tier: "heavy", Code: pandasVersion})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("%v %+v", err, res)
		}
	}
}

// BenchmarkPooledMemory reports the proportional set size (PSS) of one pooled sandbox: every runsc
// process of the engine (sentry, gofer, stubs), summed, over the pool size.
func BenchmarkPooledMemory(b *testing.B) {
	const n = 3
	dir, err := os.MkdirTemp("", "agentbox-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	e, err := heavy.New(context.Background(), heavy.Config{PoolSize: n, StateDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	for e.PoolReady() < n {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // the refiller's own checkpoint sandbox is gone by now
	for b.Loop() {
	}
	var pss int64
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(dir)) {
			continue
		}
		rollup, err := os.ReadFile(filepath.Join("/proc", p.Name(), "smaps_rollup"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(rollup), "\n") {
			if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				pss += kb << 10
			}
		}
	}
	b.ReportMetric(float64(pss)/n/(1<<20), "MiB/sandbox")
}

// BenchmarkPoolMiss: a run that finds the pool empty (an untimed run has just taken its only
// sandbox), so it restores the golden checkpoint, pays for paging pandas in, runs, and is destroyed.
func BenchmarkPoolMiss(b *testing.B) {
	e, err := heavy.New(context.Background(), heavy.Config{PoolSize: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	for b.Loop() {
		b.StopTimer()
		for e.PoolReady() == 0 {
			time.Sleep(20 * time.Millisecond)
		}
		benchRun(b, e) // takes the pooled sandbox
		b.StartTimer()
		benchRun(b, e)
	}
}

// BenchmarkSessionMove: the cell that moves an auto session from nano to heavy (a heavy sandbox from
// the pool, two files copied twice, three earlier cells replayed, then the cell itself); the session's
// creation, its nano cells and its teardown are not timed.
func BenchmarkSessionMove(b *testing.B) {
	ctx := context.Background()
	e, d := benchTiers(b)
	cells := []string{"rows = [i * i for i in range(100)]", "import json\ndoc = json.dumps(rows)", "open('/data/doc.json', 'w').write(doc)"}
	for b.Loop() {
		b.StopTimer()
		for e.PoolReady() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		s, err := d.NewSession(ctx, api.SessionRequest{})
		if err != nil {
			b.Fatal(err)
		}
		s.WriteFile(ctx, "/data/in.txt", []byte("x"))
		for _, c := range cells {
			if _, err := s.Run(ctx, c, dispatch.Output{}); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		res, err := s.Run(ctx, "import numpy as np\nprint(int(np.sum(rows)))", dispatch.Output{})
		b.StopTimer()
		if err != nil || res.Tier != api.TierHeavy || res.Stdout != "328350\n" {
			b.Fatalf("%v %+v", err, res)
		}
		s.Close()
		b.StartTimer()
	}
}

// pooledEngine is an engine keeping 2 started sandboxes, closed with the benchmark.
func pooledEngine(b *testing.B) *heavy.Engine {
	e, err := heavy.New(context.Background(), heavy.Config{PoolSize: 2})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(context.Background()) })
	return e
}

// waitPool waits, untimed, until a pooled sandbox is ready: refills are not what is measured.
func waitPool(b *testing.B, e *heavy.Engine) {
	b.StopTimer()
	for e.PoolReady() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	b.StartTimer()
}
