//go:build linux

package nano

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestThreadWatch: a thread is lowered once it has used its quantum of CPU time, not for time it
// spends waiting.
func TestThreadWatch(t *testing.T) {
	cases := []struct {
		name    string
		work    func(w *threadWatch)
		demoted bool
	}{
		{"busy past the quantum is demoted", func(w *threadWatch) {
			// Spin until the watch acts, on CPU time (up to 20 s of it), however slow the machine is.
			for start := cpuTime(w.clock); cpuTime(w.clock)-start < 20*time.Second; {
				if n, err := threadNice(); err == nil && n == demotedNice {
					return
				}
			}
		}, true},
		{"waiting is not CPU time", func(w *threadWatch) { time.Sleep(50 * time.Millisecond) }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			type result struct {
				demoted bool
				nice    int
				err     error
			}
			got := make(chan result)
			go func() {
				runtime.LockOSThread() // never unlocked: a lowered thread ends with the goroutine
				w := watchThread(5 * time.Millisecond)
				c.work(w)
				demoted := w.stop()
				n, err := threadNice()
				got <- result{demoted, n, err}
			}()
			r := <-got
			if r.err != nil {
				t.Fatal(r.err)
			}
			wantNice := 0
			if c.demoted {
				wantNice = demotedNice
			}
			if r.demoted != c.demoted || r.nice != wantNice {
				t.Fatalf("demoted %v nice %d, want %v and %d", r.demoted, r.nice, c.demoted, wantNice)
			}
		})
	}
}

// TestLongRunsMakeWay: a run past ShortRunCPU is demoted and still finishes while short runs keep
// arriving (it is not starved); short runs are never demoted; and no lowered thread is left for the
// Go runtime to run other work on.
func TestLongRunsMakeWay(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{ShortRunCPU: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	for range 20 {
		if res, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); err != nil || res.Stdout != "1\n" {
			t.Fatalf("short run: %v %+v", err, res)
		}
	}
	if n := e.Stats().Demoted.Load(); n != 0 {
		t.Fatalf("%d short runs were demoted", n)
	}

	longDone := make(chan *api.Result)
	go func() {
		// Far more than 50 ms of CPU time: a few hundred ms in nano; a print(1) takes about 1 ms, and
		// the margin is for page faults and GC assists on a loaded machine.
		res, err := e.Run(ctx, api.RunRequest{Code: "n = 0\nfor i in range(2_000_000): n += i\nprint(n)", Limits: api.Limits{TimeoutMS: 300_000}}, tier.Stream{})
		if err != nil {
			t.Error(err)
		}
		longDone <- res
	}()
	var shorts sync.WaitGroup
	stop := make(chan struct{})
	for range 2 * runtime.GOMAXPROCS(0) {
		shorts.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if res, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); err != nil || res.Stdout != "1\n" {
					t.Errorf("short run beside a long one: %v %+v", err, res)
					return
				}
			}
		})
	}
	res := <-longDone
	close(stop)
	shorts.Wait()
	if res == nil || res.Stdout != "1999999000000\n" {
		t.Fatalf("long run: %+v", res)
	}
	if n := e.Stats().Demoted.Load(); n != 1 {
		t.Fatalf("%d runs demoted, want the long one only", n)
	}
	// The runtime retires a thread just after its locked goroutine has ended.
	waitUntil(t, func() bool { return len(loweredThreads(t)) == 0 }, "threads left at a lowered priority")
}

// loweredThreads lists the process's threads whose nice value is above zero, but for the main
// thread: the runtime cannot end that one, so a locked goroutine ending there parks it for good
// (runtime.mexit), and it runs nothing again.
func loweredThreads(t *testing.T) []string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil {
		t.Fatal(err)
	}
	main := filepath.Join("/proc/self/task", strconv.Itoa(os.Getpid()), "stat")
	var out []string
	for _, p := range tasks {
		if p == main {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		// Fields after the command name, which is in parentheses and may hold spaces: nice is the 19th
		// field of the line, the 17th after ")".
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		f := strings.Fields(rest)
		if n, err := strconv.Atoi(f[16]); err == nil && n > 0 {
			out = append(out, p)
		}
	}
	return out
}

// TestDemotedThreadIsRaisedAgain: where the process may raise priorities again (root, as in CI), a
// run's guest call stays on the caller's thread, and a demoted one has its priority back before the
// caller goes on.
func TestDemotedThreadIsRaisedAgain(t *testing.T) {
	if !mayRestoreNice() {
		t.Skip("this process may not raise a thread's priority (no CAP_SYS_NICE): guest calls hand off to threads of their own, which TestLongRunsMakeWay covers")
	}
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1, ShortRunCPU: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	runtime.LockOSThread() // the call runs on this thread, whose nice value the test reads
	defer runtime.UnlockOSThread()
	before, err := threadNice()
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.Run(ctx, api.RunRequest{Code: "n = 0\nfor i in range(1_000_000): n += i\nprint(n)", Limits: api.Limits{TimeoutMS: 300_000}}, tier.Stream{})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("long run: %v %+v", err, res)
	}
	after, err := threadNice()
	if err != nil {
		t.Fatal(err)
	}
	if n := e.Stats().Demoted.Load(); n != 1 {
		t.Fatalf("the long run was demoted %d times, want 1", n)
	}
	if after != before {
		t.Fatalf("the caller's thread runs at nice %d after the run, %d before", after, before)
	}
	if e.noRestore.Load() {
		t.Fatal("the engine gave up raising demoted threads")
	}
}
