// Package bench measures the nano tier on the machine it runs on: sandbox start-up (fresh restore,
// pool hit, and a snapshot-less cold start for comparison), throughput under concurrency, memory per
// idle sandbox and interpreter speed against the host's native python3. `agentbox bench` prints its
// report.
package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Options sizes a benchmark run. Zero fields take the defaults in brackets.
type Options struct {
	Runs       int           // samples for latency figures [1000]
	ColdRuns   int           // samples of the snapshot-less cold start [30]
	Duration   time.Duration // per throughput measurement [3s]
	IdleCount  int           // sandboxes held to measure memory per idle sandbox [50]
	Python     string        // native interpreter to compare with; "" finds python3 on PATH
	Concurrent []int         // caller counts for throughput [2, 16]
}

// Latency summarises samples.
type Latency struct {
	N      int     `json:"n"`
	Median float64 `json:"median_ms"`
	P99    float64 `json:"p99_ms"`
	Min    float64 `json:"min_ms"`
}

// Report is what Run measured.
type Report struct {
	FreshRestore Latency         `json:"fresh_restore_print"`
	PoolHit      Latency         `json:"pool_hit_print"`
	Cold         Latency         `json:"cold_start_print"`
	Throughput   map[int]float64 `json:"runs_per_second"` // by concurrent callers
	IdleRSSBytes int64           `json:"rss_per_idle_sandbox_bytes"`
	CPULoop      CPULoop         `json:"cpu_loop"`
}

// CPULoop compares a pure-Python loop in the sandbox with the host's python3.
type CPULoop struct {
	NanoMS   float64 `json:"nano_ms"`
	NativeMS float64 `json:"native_ms"`
	Ratio    float64 `json:"ratio"`
	Native   string  `json:"native"` // the interpreter measured, or why none was
}

// printCode is the program the latency figures run.
const printCode = "print(1)"

// loopCode is the CPU comparison: it prints its own elapsed time, so start-up is not counted.
const loopCode = `import time
t = time.perf_counter()
total = 0
for i in range(2_000_000):
    total += i * i % 7
d = {}
for i in range(200_000):
    d[str(i)] = i
print((time.perf_counter() - t) * 1000)
`

func (o *Options) defaults() {
	if o.Runs <= 0 {
		o.Runs = 1000
	}
	if o.ColdRuns <= 0 {
		o.ColdRuns = 30
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.IdleCount <= 0 {
		o.IdleCount = 50
	}
	if len(o.Concurrent) == 0 {
		o.Concurrent = []int{2, 16}
	}
}

// Run measures everything. progress, if not nil, receives one line per step.
func Run(ctx context.Context, o Options, progress io.Writer) (*Report, error) {
	o.defaults()
	say := func(format string, a ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", a...)
		}
	}
	rep := &Report{Throughput: map[int]float64{}}

	// Fresh restores: no pool, so every run pays the restore.
	say("fresh restore + print(1), pool bypassed: %d runs", o.Runs)
	noPool, err := nano.New(ctx, nano.Config{PoolSize: -1, RotateAfter: -1, RotateRuns: -1, MaxSessions: o.IdleCount + 1})
	if err != nil {
		return nil, err
	}
	defer noPool.Close(context.Background())
	if rep.FreshRestore, err = timeRuns(ctx, o.Runs, func() error { return runPrint(ctx, noPool) }); err != nil {
		return nil, err
	}

	say("cold start (no snapshot) + print(1): %d runs", o.ColdRuns)
	if rep.Cold, err = timeRuns(ctx, o.ColdRuns, func() error {
		code, err := noPool.ColdRun(ctx, printCode)
		if err == nil && code != 0 {
			err = fmt.Errorf("cold run exited %d", code)
		}
		return err
	}); err != nil {
		return nil, err
	}

	say("memory per idle sandbox: holding %d", o.IdleCount)
	if rep.IdleRSSBytes, err = idleRSS(ctx, noPool, o.IdleCount); err != nil {
		return nil, err
	}

	say("CPU loop against native python3")
	if rep.CPULoop, err = cpuLoop(ctx, noPool, o.Python); err != nil {
		return nil, err
	}

	pooled, err := nano.New(ctx, nano.Config{PoolSize: 8, RotateAfter: -1, RotateRuns: -1, MaxQueue: 1 << 16})
	if err != nil {
		return nil, err
	}
	defer pooled.Close(context.Background())
	say("pool hit + print(1): %d runs", o.Runs)
	var samples []time.Duration
	for i := 0; i < o.Runs; i++ {
		for pooled.PoolReady() == 0 { // measure hits only: wait for the refill
			time.Sleep(50 * time.Microsecond)
		}
		start := time.Now()
		if err := runPrint(ctx, pooled); err != nil {
			return nil, err
		}
		samples = append(samples, time.Since(start))
	}
	rep.PoolHit = summarise(samples)

	for _, n := range o.Concurrent {
		say("throughput with %d concurrent callers for %v", n, o.Duration)
		if rep.Throughput[n], err = throughput(ctx, pooled, n, o.Duration); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

func runPrint(ctx context.Context, e *nano.Engine) error {
	res, err := e.Run(ctx, api.RunRequest{Code: printCode}, tier.Stream{})
	if err != nil {
		return err
	}
	if res.Stdout != "1\n" || res.ExitCode != 0 {
		return fmt.Errorf("print(1) gave %q, exit %d", res.Stdout, res.ExitCode)
	}
	return nil
}

func timeRuns(ctx context.Context, n int, fn func() error) (Latency, error) {
	samples := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return Latency{}, err
		}
		start := time.Now()
		if err := fn(); err != nil {
			return Latency{}, err
		}
		samples = append(samples, time.Since(start))
	}
	return summarise(samples), nil
}

func summarise(samples []time.Duration) Latency {
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	n := len(samples)
	if n == 0 {
		return Latency{}
	}
	p99 := samples[min(n-1, (n*99+99)/100-1)]
	return Latency{N: n, Median: ms(samples[n/2]), P99: ms(p99), Min: ms(samples[0])}
}

func throughput(ctx context.Context, e *nano.Engine, callers int, d time.Duration) (float64, error) {
	var done atomic.Int64
	var firstErr error
	var once sync.Once
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if err := runPrint(ctx, e); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}

// idleRSS holds n sessions (each a restored sandbox that has run one cell) and divides the growth of
// the process's resident set by n.
func idleRSS(ctx context.Context, e *nano.Engine, n int) (int64, error) {
	before, err := rss()
	if err != nil {
		return 0, err
	}
	var sessions []tier.Session
	defer func() {
		for _, s := range sessions {
			s.Close(context.Background())
		}
	}()
	for i := 0; i < n; i++ {
		s, err := e.NewSession(ctx, api.Limits{}, nil)
		if err != nil {
			return 0, err
		}
		sessions = append(sessions, s)
		if _, err := s.Run(ctx, "x = 1", tier.Stream{}); err != nil {
			return 0, err
		}
	}
	after, err := rss()
	if err != nil {
		return 0, err
	}
	return (after - before) / int64(n), nil
}

func rss() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("reading resident memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/self/status")
}

func cpuLoop(ctx context.Context, e *nano.Engine, python string) (CPULoop, error) {
	var out CPULoop
	best := func(measure func() (float64, error)) (float64, error) {
		m := 0.0
		for i := 0; i < 3; i++ {
			v, err := measure()
			if err != nil {
				return 0, err
			}
			if i == 0 || v < m {
				m = v
			}
		}
		return m, nil
	}
	var err error
	out.NanoMS, err = best(func() (float64, error) {
		res, err := e.Run(ctx, api.RunRequest{Code: loopCode, Limits: api.Limits{TimeoutMS: 120000}}, tier.Stream{})
		if err != nil {
			return 0, err
		}
		if res.Error != nil {
			return 0, fmt.Errorf("CPU loop in the sandbox: %s: %s", res.Error.Type, res.Error.Message)
		}
		return strconv.ParseFloat(strings.TrimSpace(res.Stdout), 64)
	})
	if err != nil {
		return out, err
	}
	if python == "" {
		if python, err = exec.LookPath("python3"); err != nil {
			out.Native = "no python3 on PATH"
			return out, nil
		}
	}
	out.NativeMS, err = best(func() (float64, error) {
		b, err := exec.CommandContext(ctx, python, "-c", loopCode).Output()
		if err != nil {
			return 0, fmt.Errorf("running %s: %w", python, err)
		}
		return strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	})
	if err != nil {
		return out, err
	}
	if v, err := exec.CommandContext(ctx, python, "-c", "import sys; print(sys.version.split()[0])").Output(); err == nil {
		out.Native = python + " " + strings.TrimSpace(string(v))
	}
	out.Ratio = out.NanoMS / out.NativeMS
	return out, nil
}

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) {
	row := func(name string, l Latency) {
		fmt.Fprintf(w, "%-44s %10.3f %10.3f %8d\n", name, l.Median, l.P99, l.N)
	}
	fmt.Fprintf(w, "%-44s %10s %10s %8s\n", "start-up + print(1)", "median ms", "p99 ms", "n")
	row("fresh sandbox from snapshot (pool bypassed)", r.FreshRestore)
	row("pool hit", r.PoolHit)
	row("cold start, no snapshot (plain _start path)", r.Cold)
	fmt.Fprintln(w)
	keys := make([]int, 0, len(r.Throughput))
	for k := range r.Throughput {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%-44s %10.0f\n", fmt.Sprintf("throughput, %d concurrent callers (runs/s)", k), r.Throughput[k])
	}
	fmt.Fprintf(w, "%-44s %10.2f\n", "resident memory per idle sandbox (MiB)", float64(r.IdleRSSBytes)/(1<<20))
	if r.CPULoop.NativeMS > 0 {
		fmt.Fprintf(w, "%-44s %10.2f  (%.0f ms vs %.0f ms, %s)\n", "CPU loop, nano / native python3", r.CPULoop.Ratio,
			r.CPULoop.NanoMS, r.CPULoop.NativeMS, r.CPULoop.Native)
	} else {
		fmt.Fprintf(w, "%-44s %10.0f ms  (native: %s)\n", "CPU loop in nano", r.CPULoop.NanoMS, r.CPULoop.Native)
	}
}
