package nano

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
)

func benchEngine(b *testing.B, cfg Config) *Engine {
	b.Helper()
	cfg.RotateAfter, cfg.RotateRuns = -1, -1
	e, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(context.Background()) })
	return e
}

func benchPrint(b *testing.B, e *Engine) {
	res, err := e.Run(context.Background(), api.RunRequest{Code: "print(1)"}, tier.Stream{})
	if err != nil || res.Stdout != "1\n" {
		b.Fatalf("%v %+v", err, res)
	}
}

// BenchmarkFreshRestore: a new sandbox from the snapshot plus print(1), pool bypassed.
func BenchmarkFreshRestore(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: -1})
	for b.Loop() {
		benchPrint(b, e)
	}
}

// BenchmarkPoolHit: print(1) in a sandbox taken ready from the pool (the refill is not timed).
func BenchmarkPoolHit(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: 4})
	for b.Loop() {
		b.StopTimer()
		for e.PoolReady() == 0 {
			time.Sleep(20 * time.Microsecond)
		}
		b.StartTimer()
		benchPrint(b, e)
	}
}

// BenchmarkColdStart: the plain _start path (no snapshot), for comparison.
func BenchmarkColdStart(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: -1})
	for b.Loop() {
		if code, err := e.ColdRun(context.Background(), "print(1)"); err != nil || code != 0 {
			b.Fatal(code, err)
		}
	}
}

// BenchmarkThroughput: runs per second with 2 and 16 concurrent callers.
func BenchmarkThroughput(b *testing.B) {
	for _, callers := range []int{2, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			e := benchEngine(b, Config{PoolSize: 8, MaxQueue: 1 << 16})
			b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					benchPrint(b, e)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "runs/s")
		})

	}
}
