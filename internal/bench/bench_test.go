package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRunSmall runs every measurement with tiny sample counts and checks the report is plausible:
// every row of the headline table, in text and in JSON.
func TestRunSmall(t *testing.T) {
	bin := buildAgentbox(t)
	rep, err := Run(context.Background(), Options{Runs: 5, ColdRuns: 2, Duration: 200 * time.Millisecond, IdleCount: 3, Concurrent: []int{2},
		Binary: bin, FirstRuns: 2, LoadClients: 4, LoadDuration: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string]Latency{"fresh": rep.FreshRestore, "pool": rep.PoolHit, "cold": rep.Cold, "first run": rep.FirstRun} {
		if l.N == 0 || l.Median <= 0 || l.P99 < l.Median || l.Min > l.Median {
			t.Errorf("%s latency %+v", name, l)
		}
	}
	if rep.Throughput[2] <= 0 {
		t.Errorf("throughput %v", rep.Throughput)
	}
	if rep.CPULoop.NanoMS <= 0 {
		t.Errorf("cpu loop %+v", rep.CPULoop)
	}
	if rep.IdlePSSBytes <= 0 || rep.IdleRSSBytes <= 0 {
		t.Errorf("memory per idle sandbox: PSS %d RSS %d", rep.IdlePSSBytes, rep.IdleRSSBytes)
	}
	if rep.Load == nil || rep.Load.Operations == 0 || rep.Load.Latency["print"].N == 0 {
		t.Errorf("load row %+v", rep.Load)
	}
	if len(rep.Skipped) != 0 {
		t.Errorf("rows skipped: %v", rep.Skipped)
	}
	var out bytes.Buffer
	rep.Print(&out)
	for _, want := range []string{"CPU loop", "fresh sandbox from snapshot + print(1), p50", "pool hit + print(1), p50",
		"throughput, 2 callers", "memory per idle sandbox, PSS", "ops/s and print p50/p99", "first `agentbox run`", "cold start"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"cpu_loop", "fresh_restore_print", "pool_hit_print", "runs_per_second", "pss_per_idle_sandbox_bytes", "load", "first_run_print"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("JSON report lacks %q: %s", k, b)
		}
	}
}

// TestRunWithoutBinarySaysWhatItSkipped: without an agentbox binary the process rows are named as
// skipped rather than printed as zeros.
func TestRunWithoutBinarySaysWhatItSkipped(t *testing.T) {
	rep, err := Run(context.Background(), Options{Runs: 2, ColdRuns: 1, Duration: 100 * time.Millisecond, IdleCount: 1, Concurrent: []int{1}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Load != nil || rep.FirstRun.N != 0 || len(rep.Skipped) == 0 {
		t.Fatalf("load %+v, first run %+v, skipped %v", rep.Load, rep.FirstRun, rep.Skipped)
	}
	var out bytes.Buffer
	rep.Print(&out)
	if !strings.Contains(out.String(), "skipped") {
		t.Errorf("report does not say what it skipped:\n%s", out.String())
	}
}

var built struct {
	once sync.Once
	dir  string
	err  error
	out  []byte
}

// buildAgentbox builds cmd/agentbox from this tree once per test process.
func buildAgentbox(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "agentbox-bench-")
		if built.err == nil {
			built.out, built.err = exec.Command("go", "build", "-o", filepath.Join(built.dir, "agentbox"), "github.com/entersandbox/agentbox/cmd/agentbox").CombinedOutput()
		}
	})
	if built.err != nil {
		t.Fatalf("building agentbox: %v\n%s", built.err, built.out)
	}
	return filepath.Join(built.dir, "agentbox")
}

func TestSummarise(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	l := summarise(s)
	if l.N != 100 || l.Median != 51 || l.P99 != 99 || l.Min != 1 {
		t.Fatalf("%+v", l)
	}
}

func TestStatCPUSeconds(t *testing.T) {
	cases := []struct {
		name, stat string
		want       float64
	}{
		{"plain command", "42 (agentbox) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0", 3},
		{"command with spaces and parentheses", "42 (a (b) c) R 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 9 0 100 0 0", 0.1},
		{"truncated line", "42 (agentbox) S 1", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := statCPUSeconds(c.stat); got != c.want {
				t.Fatalf("%v, want %v", got, c.want)
			}
		})
	}
}

// TestLoadSmall drives a real `agentbox serve` (built from this tree) with a few clients: every
// operation must succeed and the server must hold no more goroutines, files or sessions once idle.
func TestLoadSmall(t *testing.T) {
	bin := buildAgentbox(t)
	rep, err := RunLoad(context.Background(), LoadOptions{Binary: bin, Clients: 8, Duration: 3 * time.Second, Idle: 7 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Errors != 0 || rep.Operations == 0 {
		t.Fatalf("%d errors (first: %s), %d operations", rep.Errors, rep.FirstError, rep.Operations)
	}
	for _, op := range operations {
		if rep.Latency[op.name].N == 0 {
			t.Errorf("operation %s never ran", op.name)
		}
	}
	if rep.CPUPerOp <= 0 || rep.After.CPUSeconds <= rep.Before.CPUSeconds {
		t.Errorf("server CPU not read: %.2f ms per operation, %.2f s before, %.2f s after", rep.CPUPerOp, rep.Before.CPUSeconds, rep.After.CPUSeconds)
	}
	b, a := rep.Before, rep.After
	if a.Goroutines > b.Goroutines || a.OpenFDs > b.OpenFDs || a.Sessions != 0 {
		t.Fatalf("server did not return to rest: before %+v after %+v", b, a)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// TestRunMicroSmall: every kernel runs in the sandbox and natively and gets a ratio.
func TestRunMicroSmall(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("the micro benchmark test needs python3 on PATH")
	}
	rep, err := RunMicro(context.Background(), python, 1, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != len(Kernels) {
		t.Fatalf("%d rows for %d kernels", len(rep.Rows), len(Kernels))
	}
	for _, r := range rep.Rows {
		if r.NanoMS <= 0 || r.NativeMS <= 0 || r.Ratio <= 0 {
			t.Errorf("%+v", r)
		}
	}
	var out bytes.Buffer
	rep.Print(&out)
	if !strings.Contains(out.String(), "json") || !strings.Contains(out.String(), "ratio") {
		t.Errorf("table:\n%s", out.String())
	}
}
