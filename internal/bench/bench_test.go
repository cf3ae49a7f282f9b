package bench

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunSmall runs every measurement with tiny sample counts and checks the report is plausible.
func TestRunSmall(t *testing.T) {
	rep, err := Run(context.Background(), Options{Runs: 5, ColdRuns: 2, Duration: 200 * time.Millisecond, IdleCount: 3, Concurrent: []int{2}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string]Latency{"fresh": rep.FreshRestore, "pool": rep.PoolHit, "cold": rep.Cold} {
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
	var out bytes.Buffer
	rep.Print(&out)
	for _, want := range []string{"pool hit", "cold start", "runs/s", "per idle sandbox"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
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

// TestLoadSmall drives a real `agentbox serve` (built from this tree) with a few clients: every
// operation must succeed and the server must hold no more goroutines, files or sessions once idle.
func TestLoadSmall(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "agentbox")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/entersandbox/agentbox/cmd/agentbox").CombinedOutput(); err != nil {
		t.Fatalf("building agentbox: %v\n%s", err, out)
	}
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
	b, a := rep.Before, rep.After
	if a.Goroutines > b.Goroutines || a.OpenFDs > b.OpenFDs || a.Sessions != 0 {
		t.Fatalf("server did not return to rest: before %+v after %+v", b, a)
	}
}
