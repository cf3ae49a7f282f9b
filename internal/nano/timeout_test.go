package nano

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
)

// runaways are programs that never finish on their own, in Python code and in C loops inside the
// interpreter that never look at CPython's eval breaker: only the runtime's hard stop ends them.
var runaways = []struct{ name, code string }{
	{"python while loop", "while True: pass"},
	{"python loop with calls", "def f(x):\n    return x + 1\ni = 0\nwhile True:\n    i = f(i)"},
	{"python loop catching everything", "while True:\n    try:\n        while True: pass\n    except BaseException:\n        pass"},
	{"C loop in sum", "sum(range(10**12))"},
	{"C loop in regex backtracking", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')"},
	{"C loop in big-int arithmetic", "x = 10**(10**8)"},
	{"C loop in any over an endless iterator", "import itertools\nany(itertools.repeat(0))"},
}

// TestRunawayLoopsTimeOut: every runaway program is stopped at its deadline and reported as Timeout.
// The bound on the answer is generous (it only tells "stopped" from "ran to its own end").
func TestRunawayLoopsTimeOut(t *testing.T) {
	for _, c := range runaways {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			res := run(t, api.RunRequest{Code: c.code, Limits: api.Limits{TimeoutMS: 200}})
			took := time.Since(start)
			if !res.TimedOut || res.ExitCode != api.ExitTimeout || res.Error == nil || res.Error.Type != api.ErrTimeout {
				t.Fatalf("want a Timeout, got exit %d timed_out %v error %+v", res.ExitCode, res.TimedOut, res.Error)
			}
			if took > 20*time.Second {
				t.Fatalf("the run answered after %v, not at its 200 ms deadline", took)
			}
		})
	}
}

// TestRunawayTimeoutsLeakNothing: 1,000 timed-out C-level loops in a row leave goroutines, open
// files, guest memory regions and the process's memory flat (TestSleepTimeoutsLeakNothing does the
// same for sleeping and Python-level loops).
func TestRunawayTimeoutsLeakNothing(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	codes := []string{"sum(range(10**12))", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')"}
	runOne := func(i int) {
		res, err := e.Run(ctx, api.RunRequest{Code: codes[i%len(codes)], Limits: api.Limits{TimeoutMS: 2}}, tier.Stream{})
		if err != nil || !res.TimedOut {
			t.Fatalf("run %d: %v %+v", i, err, res)
		}
	}
	for i := 0; i < 20; i++ {
		runOne(i)
	}
	before := sample(t, e)
	const n = 1000
	for i := 0; i < n; i++ {
		runOne(i)
	}
	after := sample(t, e)
	t.Logf("%d timed-out runs: goroutines %d -> %d, fds %d -> %d, memory regions %d -> %d, heap in use %.1f -> %.1f MiB, RSS %.1f -> %.1f MiB",
		n, before.goroutines, after.goroutines, before.fds, after.fds, before.regions, after.regions,
		mib(before.heap), mib(after.heap), mib(before.rss), mib(after.rss))
	if after.goroutines > before.goroutines+2 {
		t.Errorf("goroutines grew from %d to %d", before.goroutines, after.goroutines)
	}
	if after.fds > before.fds+2 {
		t.Errorf("open files grew from %d to %d", before.fds, after.fds)
	}
	if after.regions > before.regions+1 {
		t.Errorf("guest memory regions grew from %d to %d", before.regions, after.regions)
	}
	if after.heap > before.heap+32<<20 || after.rss > before.rss+128<<20 {
		t.Errorf("memory grew: heap %.1f -> %.1f MiB, RSS %.1f -> %.1f MiB", mib(before.heap), mib(after.heap), mib(before.rss), mib(after.rss))
	}
}

// TestGCWhileGuestsSpin: forced collections while every CPU slot runs a spinning guest complete, and
// the guests are still stopped at their deadlines. Compiled code that neither exits to Go nor tells
// the scheduler it runs outside Go makes every stop-the-world wait for the guests, and with
// GOMAXPROCS=1 the deadline timers never fire: this test then hangs until its own bound.
func TestGCWhileGuestsSpin(t *testing.T) {
	for _, procs := range []int{1, 2} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", procs), func(t *testing.T) {
			old := runtime.GOMAXPROCS(procs)
			defer runtime.GOMAXPROCS(old)
			ctx := context.Background()
			e, err := New(ctx, Config{MaxConcurrent: 2, PoolSize: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close(ctx)

			var wg sync.WaitGroup
			results := make([]*api.Result, 4)
			errs := make([]error, len(results))
			for i := range results {
				wg.Add(1)
				go func() {
					defer wg.Done()
					code := runaways[i%len(runaways)].code
					results[i], errs[i] = e.Run(ctx, api.RunRequest{Code: code, Limits: api.Limits{TimeoutMS: 1500}}, tier.Stream{})
				}()
			}
			finished := make(chan struct{})
			go func() {
				wg.Wait()
				close(finished)
			}()
			gcs := make(chan int, 1)
			go func() {
				n := 0
				for {
					select {
					case <-finished:
						gcs <- n
						return
					default:
					}
					runtime.GC()
					n++
					time.Sleep(5 * time.Millisecond)
				}
			}()
			select {
			case <-finished:
			case <-time.After(60 * time.Second):
				t.Fatal("spinning guests and forced GCs deadlocked: no run answered within 60 s")
			}
			n := <-gcs
			for i, res := range results {
				if errs[i] != nil || !res.TimedOut {
					t.Errorf("run %d: want a Timeout, got %v %+v", i, errs[i], res)
				}
			}
			if n < 2 {
				t.Errorf("only %d forced GCs completed while the guests spun", n)
			}
			t.Logf("%d forced GCs completed while guests spun", n)
		})
	}
}
