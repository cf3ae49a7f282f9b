package integration

import (
	"context"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/heavy"
)

const pandasVersion = "import pandas; print(pandas.__version__)"

func benchRun(b *testing.B, e *heavy.Engine) {
	res, err := e.Run(context.Background(), api.RunRequest{Code: pandasVersion}, heavy.Stream{})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("%v %+v", err, res)
	}
}

// BenchmarkPoolHit: a run in a pooled sandbox that has pandas imported already (refill not timed).
func BenchmarkPoolHit(b *testing.B) {
	e, err := heavy.New(context.Background(), heavy.Config{PoolSize: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	for b.Loop() {
		b.StopTimer()
		for e.PoolReady() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		b.StartTimer()
		benchRun(b, e)
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
