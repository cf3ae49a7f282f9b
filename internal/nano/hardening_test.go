package nano

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestSleepEndsAtDeadline (issue 9 #1): a program blocked in a sleep is stopped at the run's deadline
// and reported as timed out, with what it printed before kept. wazero's own sleep could not be cut
// short: a 500 ms limit used to answer after the whole 20 s.
func TestSleepEndsAtDeadline(t *testing.T) {
	cases := []struct {
		name string
		code string
	}{
		{"time.sleep", "import time\nprint('before', flush=True)\ntime.sleep(20)\nprint('after')"},
		{"select timeout", "import select\nprint('before', flush=True)\nselect.select([], [], [], 20)\nprint('after')"},
		{"sleep in a loop", "import time\nprint('before', flush=True)\nwhile True: time.sleep(0.001)"},
		{"sleep after catching", "import time\nprint('before', flush=True)\ntry:\n    time.sleep(20)\nexcept BaseException:\n    pass\ntime.sleep(20)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			res := run(t, api.RunRequest{Code: c.code, Limits: api.Limits{TimeoutMS: 500}})
			took := time.Since(start)
			t.Logf("500 ms limit: answered after %v", took.Round(time.Millisecond))
			if !res.TimedOut || res.ExitCode != api.ExitTimeout || res.Error == nil || res.Error.Type != api.ErrTimeout {
				t.Fatalf("want a timeout, got exit %d timed_out %v error %+v", res.ExitCode, res.TimedOut, res.Error)
			}
			if res.Stdout != "before\n" {
				t.Fatalf("stdout %q, want what was printed before the sleep", res.Stdout)
			}
			if took > 10*time.Second {
				t.Fatalf("a 500 ms limit answered after %v", took)
			}
		})

	}
	// Sleeps that fit in the limit still sleep, and the program goes on afterwards.
	start := time.Now()
	res := run(t, api.RunRequest{Code: "import time, select\ntime.sleep(0.1)\nselect.select([], [], [], 0.1)\nprint('after')", Limits: api.Limits{TimeoutMS: 5000}})
	if res.Stdout != "after\n" || res.Error != nil {
		t.Fatalf("short sleeps: %+v", res)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("two 100 ms sleeps took %v", took)
	}
}

// TestSleepEndsOnCancel (issue 9 #1): cancelling the caller's context (a SIGTERM of the CLI, a client
// that goes away) stops a sleeping program at once, as it stops a busy one; time.sleep(3600) used to
// ignore it. The limit is longer than the programs, so only the cancellation can end them early.
func TestSleepEndsOnCancel(t *testing.T) {
	lim := api.Limits{TimeoutMS: 60_000}
	for _, code := range []string{"import time; time.sleep(30)", "while True: pass"} {
		t.Run(code, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			start := time.Now()
			_, err := shared.Run(ctx, api.RunRequest{Code: code, Limits: lim}, tier.Stream{})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("cancellation took %v", d)
			}
			// The same in a session, whose interpreter is then gone.
			s, err := shared.NewSession(context.Background(), lim, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			ctx, cancel = context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			if _, err := s.Run(ctx, code, tier.Stream{}); !errors.Is(err, context.Canceled) {
				t.Fatalf("session: err = %v, want context.Canceled", err)
			}
		})
	}
}

// TestSleepingGuestFreesSlot (issue 9 #2): sleeping programs do not hold the engine's CPU slots, so
// they cannot lock other runs out; cancelling them (a client that disconnects) ends them at once and
// leaves every slot free.
func TestSleepingGuestFreesSlot(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1, MaxConcurrent: 2, MaxQueue: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	const sleepers = 4 // twice the slots
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, sleepers)
	for i := 0; i < sleepers; i++ {
		// One at a time: each starts once the one before is asleep (with no queue, a run that found
		// every slot taken would be refused).
		asleep := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			wake := func() { once.Do(func() { close(asleep) }) }
			_, err := e.Run(sctx, api.RunRequest{Code: "import time; print('z', flush=True); time.sleep(30)", Limits: api.Limits{TimeoutMS: 60_000}},
				tier.Stream{Stdout: func(string) { wake() }})
			wake()
			errs <- err
		}()
		<-asleep
		time.Sleep(20 * time.Millisecond) // from the print into the sleep
	}
	rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
	defer rcancel()
	res, err := e.Run(rctx, api.RunRequest{Code: "print(1)"}, tier.Stream{})
	if err != nil || res.Stdout != "1\n" {
		t.Fatalf("run beside %d sleeping programs: %v %+v", sleepers, err, res)
	}
	start := time.Now()
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled sleeper: err = %v, want context.Canceled", err)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("cancelled sleepers took %v to return", d)
	}
	if n := len(e.slots); n != 0 {
		t.Fatalf("%d slots still taken after every run ended", n)
	}
}

// TestCancelFreesSlot (issue 9 #2): a cancelled busy run gives its slot to the next one promptly.
func TestCancelFreesSlot(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1, MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	bctx, cancel := context.WithCancel(ctx)
	started := make(chan struct{})
	busy := make(chan error, 1)
	go func() {
		var once sync.Once
		_, err := e.Run(bctx, api.RunRequest{Code: "print('go', flush=True)\nwhile True: pass", Limits: api.Limits{TimeoutMS: 600_000}},
			tier.Stream{Stdout: func(string) { once.Do(func() { close(started) }) }})
		busy <- err
	}()
	<-started
	time.AfterFunc(200*time.Millisecond, cancel)
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	res, err := e.Run(rctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}) // queued behind the busy run
	if err != nil || res.Stdout != "1\n" {
		t.Fatalf("run after the busy one was cancelled: %v %+v", err, res)
	}
	if err := <-busy; !errors.Is(err, context.Canceled) {
		t.Fatalf("busy run: err = %v, want context.Canceled", err)
	}
}

// TestMaxSessionsHoldsUnderConcurrency (issue 9 #4, nano): the session cap is reserved before the
// interpreter is restored, so many NewSession calls at once never open more than MaxSessions, and the
// refused ones are overloaded errors.
func TestMaxSessionsHoldsUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	const max, callers = 3, 24
	e, err := New(ctx, Config{PoolSize: -1, MaxSessions: max})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	for round := 0; round < 2; round++ { // the second round shows closing releases the reservations
		var wg sync.WaitGroup
		var mu sync.Mutex
		var opened []tier.Session
		start := make(chan struct{})
		for i := 0; i < callers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				s, err := e.NewSession(ctx, api.Limits{}, nil)
				if err != nil {
					if errdefs.ClassOf(err) != errdefs.Overloaded {
						t.Errorf("refused session: %v, want overloaded", err)
					}
					return
				}
				mu.Lock()
				opened = append(opened, s)
				mu.Unlock()
			}()
		}
		close(start)
		wg.Wait()
		if len(opened) != max {
			t.Fatalf("round %d: %d sessions opened at once, want exactly %d", round, len(opened), max)
		}
		for _, s := range opened {
			s.Close(ctx)
		}
	}
}

// TestPwriteHugeOffset (issue 9 #15): os.pwrite at 2**63-1 used to crash the run (GuestCrash, stdout
// lost) because the offset overflowed past the filesystem's size check. It is an OSError now, EFBIG
// as POSIX says, and the run goes on.
func TestPwriteHugeOffset(t *testing.T) {
	code := `import errno, os
print("before", flush=True)
fd = os.open("/tmp/f", os.O_RDWR | os.O_CREAT)
os.write(fd, b"0123456789")
for name, call in [
    ("pwrite", lambda: os.pwrite(fd, b"x", 2**63 - 1)),
    ("pwrite end", lambda: os.pwrite(fd, b"xyz", 2**63 - 2)),
    ("ftruncate", lambda: os.ftruncate(fd, 2**63 - 1)),
    ("lseek", lambda: os.lseek(fd, 2**63 - 1, os.SEEK_CUR)),
]:
    try:
        call()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
print(os.pread(fd, 20, 0))
os.pwrite(fd, b"x", 2**63 - 1)
`
	res := run(t, api.RunRequest{Code: code})
	want := "before\npwrite EFBIG\npwrite end EFBIG\nftruncate EFBIG\nlseek EINVAL\nb'0123456789'\n"
	if res.Stdout != want {
		t.Fatalf("stdout %q, want %q (error %+v)", res.Stdout, want, res.Error)
	}
	if res.ExitCode != 1 || res.Error == nil || res.Error.Type != "OSError" || !strings.Contains(res.Error.Message, "too large") {
		t.Fatalf("uncaught pwrite: exit %d error %+v, want an OSError (file too large)", res.ExitCode, res.Error)
	}
}

// TestSleepTimeoutsLeakNothing (issue 9 bar): a thousand runs stopped at their deadline in a row, asleep
// or busy, leave goroutines, open files and memory where they were.
func TestSleepTimeoutsLeakNothing(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	for _, c := range []struct{ name, code string }{
		{"asleep", "import time; time.sleep(20)"},
		{"busy", "while True: pass"},
	} {
		t.Run(c.name, func(t *testing.T) {
			const n = 1000
			runOne := func() {
				res, err := e.Run(ctx, api.RunRequest{Code: c.code, Limits: api.Limits{TimeoutMS: 2}}, tier.Stream{})
				if err != nil || !res.TimedOut {
					t.Fatalf("%v %+v", err, res)
				}
			}
			for i := 0; i < 20; i++ {
				runOne()
			}
			before := sample(t, e)
			start := time.Now()
			for i := 0; i < n; i++ {
				runOne()
			}
			took := time.Since(start)
			after := sample(t, e)
			t.Logf("%d timed-out runs in %v: goroutines %d -> %d, fds %d -> %d, memory regions %d -> %d, heap in use %.1f -> %.1f MiB, RSS %.1f -> %.1f MiB",
				n, took.Round(time.Millisecond), before.goroutines, after.goroutines, before.fds, after.fds, before.regions, after.regions,
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
		})

	}
}

type usage struct {
	goroutines, fds int
	regions         int64 // guest memories mapped, in use or kept for reuse
	heap, rss       uint64
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// sample measures the process once the engine is idle: pool full, background work settled.
func sample(t *testing.T, e *Engine) usage {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.PoolReady() < e.cfg.PoolSize && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // stopped timers and watchdog goroutines finish
	// A collection that also hands freed spans back to the kernel: with a big heap left by earlier
	// tests, garbage waiting for the next GC or the scavenger would otherwise read as growth of RSS.
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var rss uint64
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		var size, res uint64
		if _, err := fmt.Sscan(string(b), &size, &res); err == nil {
			rss = res * uint64(os.Getpagesize())
		}
	}
	return usage{goroutines: runtime.NumGoroutine(), fds: len(ents), regions: e.regions.mapped.Load(), heap: ms.HeapInuse, rss: rss}
}

// TestRunnerReportsMissing (issue 9 #20): the runner says in a structured field what a program failed
// for want of, which the router's fallback reads instead of the error's text.
func TestRunnerReportsMissing(t *testing.T) {
	cases := []struct {
		name string
		code string
		want *api.Missing
	}{
		{"third-party module", "import numpy", &api.Missing{Module: "numpy"}},
		{"submodule", "import foo.bar", &api.Missing{Module: "foo"}},
		{"dynamic import", "__import__('pan' + 'das')", &api.Missing{Module: "pandas"}},
		{"unavailable module", "import ssl", &api.Missing{Module: "ssl", Feature: "tls"}},
		{"multiprocessing", "import multiprocessing", &api.Missing{Module: "multiprocessing", Feature: "processes"}},
		{"threads", "import threading\nthreading.Thread(target=print).start()", &api.Missing{Feature: "threads"}},
		{"network", "import socket\nsocket.create_connection(('example.com', 80))", &api.Missing{Feature: "network"}},
		{"subprocess", "import subprocess\nsubprocess.run(['ls'])", &api.Missing{Feature: "processes"}},
		{"caught and re-raised", "try:\n    import numpy\nexcept ImportError as e:\n    raise e", &api.Missing{Module: "numpy"}},
		{"wording alone", "raise ModuleNotFoundError(\"No module named 'numpy': not available in the nano tier\")", nil},
		{"other OSError", "import os\nos.open('/nope', os.O_RDONLY)", nil},
		{"cannot import name", "from os import nonexistent", nil},
		{"success", "print(1)", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := run(t, api.RunRequest{Code: c.code})
			switch {
			case c.want == nil && res.Missing != nil:
				t.Fatalf("missing %+v, want none (error %+v)", *res.Missing, res.Error)
			case c.want != nil && (res.Missing == nil || *res.Missing != *c.want):
				t.Fatalf("missing %+v, want %+v (error %+v)", res.Missing, *c.want, res.Error)
			}
		})

	}
}

// TestConcurrentStdlibReads (issue 9 #16): many sandboxes at once read and import from the standard
// library, which is one read-only layer shared by all of them. Under -race this shows any write to
// the shared nodes (the open-handle counter used to be one, changed under each sandbox's own lock).
func TestConcurrentStdlibReads(t *testing.T) {
	code := `import importlib, sys
with open("/usr/local/lib/python3.11/os.py") as f:
    n = len(f.read())
for name in ("fnmatch", "colorsys", "graphlib"):
    sys.modules.pop(name, None)
    importlib.import_module(name)
print(n > 0)`
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := shared.Run(context.Background(), api.RunRequest{Code: code}, tier.Stream{})
			switch {
			case err != nil:
				errs <- err
			case res.Stdout != "True\n":
				errs <- fmt.Errorf("stdout %q, error %+v", res.Stdout, res.Error)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestSleepersAreBounded (issue 9 #2): sleeping runs give their slot up only up to MaxSleeping, since
// each still holds a sandbox's memory; past it a sleeper keeps its slot, as a busy run does.
func TestSleepersAreBounded(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1, MaxConcurrent: 1, MaxQueue: -1, MaxSleeping: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		asleep := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			wake := func() { once.Do(func() { close(asleep) }) }
			e.Run(sctx, api.RunRequest{Code: "import time; print('z', flush=True); time.sleep(30)", Limits: api.Limits{TimeoutMS: 60_000}},
				tier.Stream{Stdout: func(string) { wake() }})
			wake()
		}()
		<-asleep
		time.Sleep(20 * time.Millisecond)
	}
	if got := e.sleeping.Load(); got != 1 {
		t.Fatalf("%d runs asleep without a slot, want 1", got)
	}
	if _, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); errdefs.ClassOf(err) != errdefs.Overloaded {
		t.Fatalf("run while the second sleeper keeps the only slot: %v, want overloaded", err)
	}
	cancel()
	wg.Wait()
	if res, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); err != nil || res.Stdout != "1\n" {
		t.Fatalf("after the sleepers were cancelled: %v %+v", err, res)
	}
	if got := e.sleeping.Load(); got != 0 {
		t.Fatalf("%d runs still counted asleep", got)
	}
}
