// Package bench measures the nano tier on the machine it runs on: sandbox start-up (fresh restore,
// pool hit, and a snapshot-less cold start for comparison), throughput under concurrency, memory per
// idle sandbox and interpreter speed against the host's native python3. `agentbox bench` prints its
// report.
package bench

import (
	"bufio"
	"context"
	"errors"
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
	// Binary is the agentbox executable for the rows that need processes of their own: the first
	// `agentbox run` and the load test. Empty skips those rows (the report says so).
	Binary       string
	FirstRuns    int           // samples of the first `agentbox run` of a new process [5]
	LoadClients  int           // clients of the load row [100]
	LoadDuration time.Duration // of the load row's load phase [10s]; negative skips the load row
	// CheckedMemory runs the nano engines (and the load row's server) with bounds-checked memory
	// accesses instead of masked ones (nano.Config.CheckedMemory), for comparison.
	CheckedMemory bool
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
	// IdlePSSBytes is the growth of the process's proportional set size per idle sandbox: pages
	// shared copy-on-write with the snapshot count once across the sandboxes sharing them.
	IdlePSSBytes int64   `json:"pss_per_idle_sandbox_bytes"`
	CPULoop      CPULoop `json:"cpu_loop"`
	// FirstRun is a new `agentbox run -` process running print(1), from start to exit, with the
	// caches (compilation cache, saved snapshot) as set-up leaves them; FirstRunFirst is the first
	// sample alone, which may have had to fill them.
	FirstRun      Latency `json:"first_run_print"`
	FirstRunFirst float64 `json:"first_run_first_sample_ms"`
	// Load is a short `agentbox bench --load` (nil: skipped, see Skipped).
	Load *LoadReport `json:"load,omitempty"`
	// CheckedMemory: nano ran with bounds-checked memory accesses (--checked-memory), not masked ones.
	CheckedMemory bool `json:"checked_memory"`
	// Skipped names the rows not measured and why.
	Skipped []string `json:"skipped,omitempty"`
}

// CPULoop compares a pure-Python loop in the sandbox with the host's python3, in CPU milliseconds.
type CPULoop struct {
	NanoMS   float64 `json:"nano_ms"`
	NativeMS float64 `json:"native_ms"`
	Ratio    float64 `json:"ratio"`
	Native   string  `json:"native"` // the interpreter measured, or why none was
}

// printCode is the program the latency figures run.
const printCode = "print(1)"

// loopCode is the CPU comparison, timed by CPU time less an empty program's (see cpuTimer). It ran
// at module level, as here, before the kernels of --micro existed; it is kept so figures compare.
const loopCode = `total = 0
for i in range(2_000_000):
    total += i * i % 7
d = {}
for i in range(200_000):
    d[str(i)] = i
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
	if o.FirstRuns <= 0 {
		o.FirstRuns = 5
	}
	if o.LoadClients <= 0 {
		o.LoadClients = 100
	}
	if o.LoadDuration == 0 {
		o.LoadDuration = 10 * time.Second
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
	rep := &Report{Throughput: map[int]float64{}, CheckedMemory: o.CheckedMemory}

	// Fresh restores: no pool, so every run pays the restore.
	say("fresh restore + print(1), pool bypassed: %d runs", o.Runs)
	noPool, err := nano.New(ctx, nano.Config{PoolSize: -1, RotateAfter: -1, RotateRuns: -1, MaxSessions: o.IdleCount + 1, CheckedMemory: o.CheckedMemory})
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
	if rep.IdleRSSBytes, rep.IdlePSSBytes, err = idleMemory(ctx, noPool, o.IdleCount); err != nil {
		return nil, err
	}

	say("CPU loop against native python3")
	if rep.CPULoop, err = cpuLoop(ctx, noPool, o.Python); err != nil {
		return nil, err
	}

	pooled, err := nano.New(ctx, nano.Config{PoolSize: 8, RotateAfter: -1, RotateRuns: -1, MaxQueue: 1 << 16, CheckedMemory: o.CheckedMemory})
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
	// The engines are closed before the rows that start processes, which would compete with them.
	pooled.Close(ctx)
	noPool.Close(ctx)

	if o.Binary == "" {
		rep.Skipped = append(rep.Skipped, "first agentbox run and load: no agentbox binary given")
		return rep, nil
	}
	say("first agentbox run of a new process: %d runs", o.FirstRuns)
	if rep.FirstRun, rep.FirstRunFirst, err = firstRuns(ctx, o.Binary, o.FirstRuns); err != nil {
		return nil, err
	}
	if o.LoadDuration < 0 {
		rep.Skipped = append(rep.Skipped, "load: skipped on request")
		return rep, nil
	}
	if rep.Load, err = RunLoad(ctx, LoadOptions{Binary: o.Binary, Clients: o.LoadClients, Duration: o.LoadDuration, Idle: time.Second, CheckedMemory: o.CheckedMemory}, progress); err != nil {
		return nil, fmt.Errorf("load row: %w", err)
	}
	return rep, nil
}

// firstRuns times n new processes of `binary run -` running print(1), start to exit.
func firstRuns(ctx context.Context, binary string, n int) (Latency, float64, error) {
	var first float64
	samples := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		cmd := exec.CommandContext(ctx, binary, "run", "-")
		cmd.Stdin = strings.NewReader(printCode + "\n")
		start := time.Now()
		out, err := cmd.Output()
		d := time.Since(start)
		if err != nil {
			return Latency{}, 0, fmt.Errorf("%s run: %w", binary, err)
		}
		if string(out) != "1\n" {
			return Latency{}, 0, fmt.Errorf("%s run printed %q, not 1", binary, out)
		}
		if i == 0 {
			first = float64(d.Microseconds()) / 1000
		}
		samples = append(samples, d)
	}
	return summarise(samples), first, nil
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

// idleMemory holds n sessions (each a restored sandbox that has run one cell) and divides the growth
// of the process's resident and proportional set sizes by n.
func idleMemory(ctx context.Context, e *nano.Engine, n int) (rss, pss int64, err error) {
	before, err := readMemory()
	if err != nil {
		return 0, 0, err
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
			return 0, 0, err
		}
		sessions = append(sessions, s)
		if _, err := s.Run(ctx, "x = 1", tier.Stream{}); err != nil {
			return 0, 0, err
		}
	}
	after, err := readMemory()
	if err != nil {
		return 0, 0, err
	}
	return (after.rss - before.rss) / int64(n), (after.pss - before.pss) / int64(n), nil
}

type memReading struct{ rss, pss int64 }

// readMemory reads the process's resident and proportional set sizes from /proc/self/smaps_rollup.
func readMemory() (memReading, error) {
	var m memReading
	f, err := os.Open("/proc/self/smaps_rollup")
	if err != nil {
		return m, fmt.Errorf("reading memory use: %w", err)
	}
	defer f.Close()
	found := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "Rss" && name != "Pss") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return m, fmt.Errorf("reading memory use: %q: %w", sc.Text(), err)
		}
		if name == "Rss" {
			m.rss = kb << 10
		} else {
			m.pss = kb << 10
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("reading memory use: %w", err)
	}
	if found != 2 {
		return m, errors.New("reading memory use: no Rss and Pss in /proc/self/smaps_rollup")
	}
	return m, nil
}

// cpuLoop times loopCode in the sandbox and in the native interpreter by CPU time (see RunMicro),
// alternating the two so that both see the same machine, and keeps the best of each.
func cpuLoop(ctx context.Context, e *nano.Engine, python string) (CPULoop, error) {
	var out CPULoop
	if python == "" {
		var err error
		if python, err = exec.LookPath("python3"); err != nil {
			out.Native = "no python3 on PATH"
			python = ""
		}
	}
	ct := cpuTimer{e: e, python: python}
	for i := 0; i < cpuRounds; i++ {
		nanoMS, nativeMS, err := ct.round(ctx, loopCode)
		if err != nil {
			return out, fmt.Errorf("CPU loop %w", err)
		}
		if i == 0 || nanoMS < out.NanoMS {
			out.NanoMS = nanoMS
		}
		if i == 0 || nativeMS < out.NativeMS {
			out.NativeMS = nativeMS
		}
	}
	if python == "" {
		return out, nil
	}
	out.Native = python
	if v, err := exec.CommandContext(ctx, python, "-c", "import sys; print(sys.version.split()[0])").Output(); err == nil {
		out.Native = python + " " + strings.TrimSpace(string(v))
	}
	out.Ratio = out.NanoMS / out.NativeMS
	return out, nil
}

// cpuRounds is how many times each side of the CPU comparison runs.
const cpuRounds = 4

// Print writes the report: the headline figures first (the rows of issue 11's table), then the
// details.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "%-52s %s (nano memory accesses %s)\n", "figure", "value", accessMode(r.CheckedMemory))
	fig := func(name, format string, a ...any) {
		fmt.Fprintf(w, "%-52s "+format+"\n", append([]any{name}, a...)...)
	}
	if r.CPULoop.NativeMS > 0 {
		fig("CPU loop, nano / native python3", "%.2fx (%.0f ms vs %.0f ms, %s)", r.CPULoop.Ratio, r.CPULoop.NanoMS, r.CPULoop.NativeMS, r.CPULoop.Native)
	} else {
		fig("CPU loop in nano", "%.0f ms (native: %s)", r.CPULoop.NanoMS, r.CPULoop.Native)
	}
	fig("fresh sandbox from snapshot + print(1), p50", "%.3f ms", r.FreshRestore.Median)
	fig("pool hit + print(1), p50", "%.3f ms", r.PoolHit.Median)
	keys := make([]int, 0, len(r.Throughput))
	for k := range r.Throughput {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		fig(fmt.Sprintf("throughput, %d callers", k), "%.0f runs/s", r.Throughput[k])
	}
	fig("memory per idle sandbox, PSS", "%.2f MiB (RSS %.2f MiB)", float64(r.IdlePSSBytes)/(1<<20), float64(r.IdleRSSBytes)/(1<<20))
	if l := r.Load; l != nil {
		p := l.Latency["print"]
		fig(fmt.Sprintf("load (%d clients, mixed), ops/s and print p50/p99", l.Clients), "%.0f ops/s, %.1f / %.1f ms (%d errors, %d answered 429)", l.PerSecond, p.Median, p.P99, l.Errors, l.Overloaded)
	}
	if r.FirstRun.N > 0 {
		fig("first `agentbox run` of a new process, p50", "%.0f ms (first sample %.0f ms, n %d)", r.FirstRun.Median, r.FirstRunFirst, r.FirstRun.N)
	}
	for _, s := range r.Skipped {
		fig("skipped", "%s", s)
	}
	fmt.Fprintln(w)

	row := func(name string, l Latency) {
		fmt.Fprintf(w, "%-44s %10.3f %10.3f %8d\n", name, l.Median, l.P99, l.N)
	}
	fmt.Fprintf(w, "%-44s %10s %10s %8s\n", "start-up + print(1)", "median ms", "p99 ms", "n")
	row("fresh sandbox from snapshot (pool bypassed)", r.FreshRestore)
	row("pool hit", r.PoolHit)
	row("cold start, no snapshot (plain _start path)", r.Cold)
	if r.FirstRun.N > 0 {
		row("first agentbox run (new process)", r.FirstRun)
	}
	if r.Load != nil {
		fmt.Fprintln(w)
		r.Load.Print(w)
	}
}
