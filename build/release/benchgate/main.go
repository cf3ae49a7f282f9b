// Command benchgate is CI's benchmark gate: a short, fixed set of figures (nano fresh start, pool
// hit, throughput and CPU-loop ratio from `agentbox bench`, a print(1) through the HTTP API of a
// real `agentbox serve`, and the heavy pool hit from its Go benchmark), each measured -runs times and
// kept at its best (noise only ever makes a figure worse), compared with the committed baseline and
// printed as a table. It fails only on a clear regression: a figure more than -max times worse.
//
//	go run ./build/release/benchgate -bin bin/agentbox -baseline build/release/bench-baseline.json [-update]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Figure is one benchmark's result; Lower says whether smaller is better (latency) or larger
// (throughput).
type Figure struct {
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Lower bool    `json:"lower_is_better"`
}

// Baseline is the committed file.
type Baseline struct {
	Note    string            `json:"note"`
	Figures map[string]Figure `json:"figures"`
}

func main() {
	bin := flag.String("bin", "bin/agentbox", "the agentbox binary measured")
	basePath := flag.String("baseline", "build/release/bench-baseline.json", "the committed baseline")
	runs := flag.Int("runs", 3, "repetitions of each figure; the best is kept")
	maxRatio := flag.Float64("max", 1.5, "fail when a figure is this many times worse than the baseline")
	heavy := flag.Bool("heavy", true, "measure the heavy pool hit (needs root, runsc, AGENTBOX_INTEGRATION=1)")
	update := flag.Bool("update", false, "write the measured figures as the new baseline instead of comparing")
	flag.Parse()
	ctx := context.Background()
	got, err := measure(ctx, *bin, *runs, *heavy)
	if err != nil {
		fail(err)
	}
	if *update {
		b := Baseline{Note: fmt.Sprintf("best of %d runs, measured on %s; regenerate with -update", *runs, time.Now().UTC().Format("2006-01-02")), Figures: got}
		data, _ := json.MarshalIndent(b, "", "  ")
		if err := os.WriteFile(*basePath, append(data, '\n'), 0o644); err != nil {
			fail(fmt.Errorf("writing the baseline: %w", err))
		}
	}
	data, err := os.ReadFile(*basePath)
	if err != nil {
		fail(fmt.Errorf("reading the baseline: %w", err))
	}
	var base Baseline
	if err := json.Unmarshal(data, &base); err != nil {
		fail(fmt.Errorf("baseline %s: %w", *basePath, err))
	}
	rows, bad := compare(base.Figures, got, *maxRatio)
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "benchmark\tbaseline\tnow\tunit\tworse by\t\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%s\t%.2fx\t%s\t\n", r.name, r.base, r.now, r.unit, r.worse, r.verdict)
	}
	tw.Flush()
	if len(bad) > 0 {
		fail(fmt.Errorf("regressed more than %.1fx: %s", *maxRatio, strings.Join(bad, ", ")))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "benchgate:", err)
	os.Exit(1)
}

type row struct {
	name, unit, verdict string
	base, now, worse    float64
}

// compare gives each baseline figure's row and the names of those worse than maxRatio. A figure the
// baseline has but this run lacks is a failure too: the set is fixed.
func compare(base, got map[string]Figure, maxRatio float64) ([]row, []string) {
	var rows []row
	var bad []string
	names := make([]string, 0, len(base))
	for n := range base {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		b := base[n]
		g, ok := got[n]
		if !ok {
			rows = append(rows, row{name: n, unit: b.Unit, base: b.Value, now: math.NaN(), verdict: "MISSING"})
			bad = append(bad, n+" (not measured)")
			continue
		}
		worse := g.Value / b.Value
		if !b.Lower {
			worse = b.Value / g.Value
		}
		r := row{name: n, unit: b.Unit, base: b.Value, now: g.Value, worse: worse, verdict: "ok"}
		if worse > maxRatio || math.IsNaN(worse) || math.IsInf(worse, 0) {
			r.verdict = "REGRESSED"
			bad = append(bad, n)
		}
		rows = append(rows, r)
	}
	return rows, bad
}

// best keeps the better of two values of a figure.
func best(a, b Figure) Figure {
	if a.Unit == "" || (b.Lower && b.Value < a.Value) || (!b.Lower && b.Value > a.Value) {
		return b
	}
	return a
}

func measure(ctx context.Context, bin string, runs int, heavy bool) (map[string]Figure, error) {
	got := map[string]Figure{}
	for i := 0; i < runs; i++ {
		nano, err := nanoFigures(ctx, bin)
		if err != nil {
			return nil, err
		}
		httpMS, err := httpPrint(ctx, bin, 50)
		if err != nil {
			return nil, err
		}
		nano["http_print1_median"] = Figure{Value: httpMS, Unit: "ms", Lower: true}
		if heavy {
			ms, err := heavyPoolHit(ctx)
			if err != nil {
				return nil, err
			}
			nano["heavy_pool_hit"] = Figure{Value: ms, Unit: "ms", Lower: true}
		}
		for k, v := range nano {
			got[k] = best(got[k], v)
		}
	}
	return got, nil
}

// nanoFigures runs `agentbox bench --json` with small sample counts.
func nanoFigures(ctx context.Context, bin string) (map[string]Figure, error) {
	cmd := exec.CommandContext(ctx, bin, "bench", "--json", "-n", "200", "-cold-n", "2", "-idle", "5", "-duration", "2s")
	cmd.Stderr = io.Discard
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("agentbox bench: %w", err)
	}
	var rep struct {
		Fresh struct {
			Median float64 `json:"median_ms"`
		} `json:"fresh_restore_print"`
		Pool struct {
			Median float64 `json:"median_ms"`
		} `json:"pool_hit_print"`
		Throughput map[string]float64 `json:"runs_per_second"`
		CPU        struct {
			Ratio float64 `json:"ratio"`
		} `json:"cpu_loop"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("agentbox bench's report: %w", err)
	}
	// The most concurrent callers measured: the throughput the machine has.
	var perSec float64
	most := -1
	for k, v := range rep.Throughput {
		if n, err := strconv.Atoi(k); err == nil && n > most {
			most, perSec = n, v
		}
	}
	if most < 0 || rep.Fresh.Median <= 0 || rep.Pool.Median <= 0 {
		return nil, fmt.Errorf("agentbox bench's report lacks figures: %s", out)
	}
	figs := map[string]Figure{
		"nano_fresh_start_median": {Value: rep.Fresh.Median, Unit: "ms", Lower: true},
		"nano_pool_hit_median":    {Value: rep.Pool.Median, Unit: "ms", Lower: true},
		"nano_throughput":         {Value: perSec, Unit: "runs/s", Lower: false},
	}
	if rep.CPU.Ratio > 0 { // 0: no native python3 to compare with
		figs["nano_cpu_loop_ratio"] = Figure{Value: rep.CPU.Ratio, Unit: "x native", Lower: true}
	}
	return figs, nil
}

// httpPrint starts `agentbox serve` (nano only) on a free loopback port and times n sequential
// POST /v1/run of print(1); it returns the median in milliseconds.
func httpPrint(ctx context.Context, bin string, n int) (float64, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	// The state root goes in a directory of its own: the server keeps other directories beside it
	// (snapshots, hosted MCP servers), and removing this one removes them all.
	dir, err := os.MkdirTemp("", "benchgate-")
	if err != nil {
		return 0, fmt.Errorf("state directory: %w", err)
	}
	defer os.RemoveAll(dir)
	sctx, stop := context.WithCancel(ctx)
	srv := exec.CommandContext(sctx, bin, "serve", "--addr", addr, "--heavy", "off", "--state-dir", filepath.Join(dir, "state"))
	srv.Stderr = io.Discard
	if err := srv.Start(); err != nil {
		stop()
		return 0, fmt.Errorf("starting agentbox serve: %w", err)
	}
	defer func() {
		stop()     // kills the server
		srv.Wait() //nolint:errcheck // it was killed: its exit status says nothing
	}()
	body := []byte(`{"code":"print(1)","tier":"nano"}`)
	post := func() error {
		resp, err := http.Post("http://"+addr+"/v1/run", "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r struct {
			Stdout string `json:"stdout"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 || r.Stdout != "1\n" {
			return fmt.Errorf("POST /v1/run: status %d, stdout %q, %v", resp.StatusCode, r.Stdout, err)
		}
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for err := post(); err != nil; err = post() {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the server never answered: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	samples := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := post(); err != nil {
			return 0, err
		}
		samples = append(samples, float64(time.Since(t0).Microseconds())/1000)
	}
	slices.Sort(samples)
	return samples[len(samples)/2], nil
}

var nsPerOp = regexp.MustCompile(`BenchmarkPoolHit\S*\s+\d+\s+([0-9.]+) ns/op`)

// heavyPoolHit runs the heavy tier's pool-hit Go benchmark and returns its time per run in ms.
func heavyPoolHit(ctx context.Context) (float64, error) {
	if os.Getenv("AGENTBOX_INTEGRATION") != "1" {
		return 0, errors.New("the heavy pool hit needs AGENTBOX_INTEGRATION=1 (and root, runsc); pass -heavy=false to leave it out")
	}
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkPoolHit$", "-benchtime", "20x", "-count", "1", "./internal/heavy/integration")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("heavy BenchmarkPoolHit: %w\n%s", err, out)
	}
	m := nsPerOp.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("heavy BenchmarkPoolHit printed no ns/op:\n%s", out)
	}
	ns, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return 0, fmt.Errorf("heavy BenchmarkPoolHit: %w", err)
	}
	return ns / 1e6, nil
}
