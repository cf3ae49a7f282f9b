package nano

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// spin starts n runs that loop until ctx is cancelled (their limit is far away) and returns once all
// of them are executing; the returned channel gets each run's error as it ends.
func spin(t *testing.T, ctx context.Context, e *Engine, n int) <-chan error {
	t.Helper()
	ended := make(chan error, n)
	var started sync.WaitGroup
	for range n {
		started.Add(1)
		go func() {
			var once sync.Once
			_, err := e.Run(ctx, api.RunRequest{Code: "print('go', flush=True)\nwhile True: pass", Limits: api.Limits{TimeoutMS: 300_000}},
				tier.Stream{Stdout: func(string) { once.Do(started.Done) }})
			once.Do(started.Done) // refused or failed before printing
			ended <- err
		}()
	}
	started.Wait()
	return ended
}

// TestScheduling: short runs are admitted and finish while more long runs than cores execute,
// cancelling stops every guest however many share the cores, and the queue still refuses past its
// limit.
func TestScheduling(t *testing.T) {
	bg := context.Background()
	cores := runtime.GOMAXPROCS(0)
	t.Run("defaults admit many guests per core", func(t *testing.T) {
		cfg := withDefaults(Config{})
		if cfg.MaxConcurrent != defaultGuestsPerCore*cores || cfg.MaxQueue != defaultQueuePerW*cores ||
			cfg.MaxSleeping != defaultQueuePerW*cores || cfg.ShortRunCPU != defaultShortRunCPU {
			t.Fatalf("defaults: %+v", cfg)
		}
	})
	t.Run("a short run finishes beside long ones and cancelling stops them", func(t *testing.T) {
		e, err := New(bg, Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close(bg)
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		long := 2*cores + 1 // more busy guests than cores: FIFO slots of one per core would queue the short run
		ended := spin(t, ctx, e, long)
		// The bound is a safety net for a hung test, far above the run's cost, not a speed target.
		shortCtx, shortCancel := context.WithTimeout(bg, 60*time.Second)
		defer shortCancel()
		res, err := e.Run(shortCtx, api.RunRequest{Code: "print(1)"}, tier.Stream{})
		if err != nil || res.Stdout != "1\n" {
			t.Fatalf("short run beside %d long ones: %v %+v", long, err, res)
		}
		select {
		case err := <-ended:
			t.Fatalf("a long run ended before it was cancelled: %v", err)
		default:
		}
		cancel()
		for range long {
			if err := <-ended; !errors.Is(err, context.Canceled) {
				t.Fatalf("a cancelled long run ended with %v, want context.Canceled", err)
			}
		}
		waitUntil(t, func() bool { return len(e.slots) == 0 }, "slots held after every run ended")
	})
	t.Run("the queue refuses past its limit", func(t *testing.T) {
		e, err := New(bg, Config{PoolSize: -1, MaxConcurrent: 3, MaxQueue: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close(bg)
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		ended := spin(t, ctx, e, 3)
		queued := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{})
				queued <- err
			}()
		}
		waitUntil(t, func() bool { return e.QueueDepth() == 2 }, "two runs waiting")
		if _, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); errdefs.ClassOf(err) != errdefs.Overloaded {
			t.Fatalf("a run past the queue: %v, want overloaded", err)
		}
		cancel()
		for range 3 {
			<-ended
		}
		for range 2 {
			if err := <-queued; !errors.Is(err, context.Canceled) {
				t.Fatalf("a cancelled waiter: %v", err)
			}
		}
	})
}

func waitUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not reached in 30 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
