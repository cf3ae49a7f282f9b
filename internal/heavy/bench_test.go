package heavy

import (
	"context"
	"path/filepath"
	"testing"
)

// These benchmarks need runsc and the root filesystem (build/heavy/build.sh); they run only with
// -bench.

func benchEngine(b *testing.B) *Engine {
	b.Helper()
	e, err := New(context.Background(), Config{PoolSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(context.Background()) })
	return e
}

// BenchmarkRefillRestore: a pool refill from the golden checkpoint (restore plus warm-up).
func BenchmarkRefillRestore(b *testing.B) {
	e := benchEngine(b)
	ctx := context.Background()
	image := filepath.Join(e.cfg.StateDir, "golden")
	if err := e.checkpoint(ctx, image); err != nil {
		b.Fatal(err)
	}
	r := &refiller{image: image}
	b.ResetTimer()
	for b.Loop() {
		s, err := e.refill(ctx, r)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		e.destroy(s)
		b.StartTimer()
	}
}

// BenchmarkRefillCold: a pool refill by a cold start that imports numpy, pandas and matplotlib.
func BenchmarkRefillCold(b *testing.B) {
	e := benchEngine(b)
	ctx := context.Background()
	for b.Loop() {
		s, err := e.refill(ctx, &refiller{})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		e.destroy(s)
		b.StartTimer()
	}
}
