package nano

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestProcessTimeIsTheSandboxsCPUTime: time.process_time reads the sandbox's own CPU time through
// WASI's process CPU-time clock (wazero patch 0005). It starts near zero in a fresh sandbox, grows
// with work, hardly moves while the program sleeps, and a session's cells add up. Before, CPython fell
// back to wasi-libc's emulation and read a constant 9223372036.85.
func TestProcessTimeIsTheSandboxsCPUTime(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	floats := func(t *testing.T, r *api.Result, err error, n int) []float64 {
		t.Helper()
		if err != nil || r.Error != nil {
			t.Fatalf("%v %+v", err, r)
		}
		f := strings.Fields(r.Stdout)
		if len(f) != n {
			t.Fatalf("stdout %q", r.Stdout)
		}
		out := make([]float64, n)
		for i, s := range f {
			if out[i], err = strconv.ParseFloat(s, 64); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	r, err := e.Run(ctx, api.RunRequest{Code: `import time
assert time.get_clock_info("process_time").implementation == "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)", time.get_clock_info("process_time")
a = time.process_time()
sum(i * i for i in range(300_000))
b = time.process_time()
w = time.perf_counter(); time.sleep(0.2); w = time.perf_counter() - w
c = time.process_time()
print(a, b, c, w)`}, tier.Stream{})
	v := floats(t, r, err, 4)
	a, b, c, slept := v[0], v[1], v[2], v[3]
	if a < 0 || a > 5 || b <= a || c < b {
		t.Fatalf("process_time read %v, %v, %v: want a small start, growing with work", a, b, c)
	}
	if c-b >= slept {
		t.Fatalf("process_time advanced %v s over a sleep of %v s: it is not a CPU clock", c-b, slept)
	}

	s, err := e.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	r, err = s.Run(ctx, "import time\nsum(i * i for i in range(300_000))\nfirst = time.process_time()\nprint(first)", tier.Stream{})
	if first := floats(t, r, err, 1)[0]; first <= 0 {
		t.Fatalf("a session's process_time after work is %v", first)
	}
	r, err = s.Run(ctx, "print(time.process_time() - first)", tier.Stream{})
	if later := floats(t, r, err, 1)[0]; later <= 0 {
		t.Fatalf("the next cell's process_time is %v s past the first's: the cells' CPU time does not add up", later)
	}
}
