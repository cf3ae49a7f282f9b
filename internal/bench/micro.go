package bench

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Kernel is one pyperformance-style micro workload: Python code whose body is timed in-process.
type Kernel struct {
	Name string
	Body string // indented by four spaces inside the timing function
}

// Kernels are the micro workloads of `agentbox bench --micro`: the interpreter's hot paths one at a
// time (bytecode loops, calls, dict and str operations, json and re in C).
var Kernels = []Kernel{
	{"loops: for/while, int arithmetic", `
    t = 0
    for i in range(1_500_000):
        t += i * i % 7
    i = 0
    while i < 500_000:
        i += 1`},
	{"calls: functions and methods", `
    def f(a, b):
        return a + b
    class C:
        def m(self, x):
            return x
    c = C()
    for i in range(300_000):
        f(i, 1)
        c.m(i)`},
	{"dict and str: build, look up, format", `
    d = {}
    for i in range(200_000):
        d["k" + str(i)] = i
    s = 0
    for i in range(200_000):
        s += d["k" + str(i)]
    ",".join(f"{k}={v}" for k, v in d.items())`},
	{"json: dumps and loads", `
    import json
    doc = [{"id": i, "name": "item %d" % i, "tags": ["a", "b", "c"], "v": i / 3} for i in range(5000)]
    for _ in range(8):
        json.loads(json.dumps(doc))`},
	{"re: compile-once search and sub", `
    import re
    text = "the quick brown fox jumps over the lazy dog 12345 " * 2000
    r = re.compile(r"(\w+) (\d+)")
    for _ in range(20):
        r.findall(text)
    re.sub(r"o+", "0", text)`},
	{"sort: list of tuples with a key", `
    import random
    rnd = random.Random(1)
    xs = [(rnd.random(), i) for i in range(100_000)]
    for _ in range(3):
        sorted(xs, key=lambda t: t[0])`},
}

// kernelProgram wraps a kernel in a function (locals are faster than globals, as in pyperformance).
func kernelProgram(k Kernel) string {
	return "def _kernel():" + k.Body + "\n_kernel()\n"
}

// MicroRow is one kernel's best CPU time in the sandbox and natively.
type MicroRow struct {
	Name     string  `json:"name"`
	NanoMS   float64 `json:"nano_ms"`
	NativeMS float64 `json:"native_ms"`
	Ratio    float64 `json:"ratio"`
}

// MicroReport is what RunMicro measured.
type MicroReport struct {
	Native string     `json:"native"`
	Rounds int        `json:"rounds"`
	Rows   []MicroRow `json:"kernels"`
	// CheckedMemory: nano ran with bounds-checked memory accesses (--checked-memory), not masked ones.
	CheckedMemory bool `json:"checked_memory"`
}

// RunMicro times every kernel in a nano sandbox and in the native interpreter python ("" finds
// python3 on PATH), alternating the two rounds times and keeping the best of each. Times are CPU
// time (user + system) rather than wall time, so that other load on the machine inflates them less:
// the engine process's for a sandbox run, the child's for a native one, each minus the same side's
// run of an empty kernel (start-up, imports of the wrapper). checked runs nano with bounds-checked
// memory accesses (nano.Config.CheckedMemory).
func RunMicro(ctx context.Context, python string, rounds int, checked bool, progress io.Writer) (*MicroReport, error) {
	if rounds <= 0 {
		rounds = 3
	}
	if python == "" {
		p, err := exec.LookPath("python3")
		if err != nil {
			return nil, fmt.Errorf("micro benchmarks need a native python3: %w", err)
		}
		python = p
	}
	e, err := nano.New(ctx, nano.Config{PoolSize: -1, RotateAfter: -1, RotateRuns: -1, CheckedMemory: checked})
	if err != nil {
		return nil, err
	}
	defer e.Close(context.Background())
	rep := &MicroReport{Native: python, Rounds: rounds, CheckedMemory: checked}
	if v, err := exec.CommandContext(ctx, python, "-c", "import sys; print(sys.version.split()[0])").Output(); err == nil {
		rep.Native = python + " " + strings.TrimSpace(string(v))
	}
	ct := cpuTimer{e: e, python: python}
	for _, k := range Kernels {
		if progress != nil {
			fmt.Fprintf(progress, "micro: %s\n", k.Name)
		}
		code := kernelProgram(k)
		row := MicroRow{Name: k.Name}
		for i := 0; i < rounds; i++ {
			nanoMS, nativeMS, err := ct.round(ctx, code)
			if err != nil {
				return nil, fmt.Errorf("kernel %q %w", k.Name, err)
			}
			if i == 0 || nanoMS < row.NanoMS {
				row.NanoMS = nanoMS
			}
			if i == 0 || nativeMS < row.NativeMS {
				row.NativeMS = nativeMS
			}
		}
		row.Ratio = row.NanoMS / row.NativeMS
		rep.Rows = append(rep.Rows, row)
	}
	return rep, nil
}

// cpuTimer measures programs by CPU time in a sandbox of e and in the native interpreter python.
type cpuTimer struct {
	e      *nano.Engine
	python string
}

// emptyProgram is what each side's start-up is measured with.
var emptyProgram = kernelProgram(Kernel{Body: "\n    pass"})

// round runs code once on each side, sandbox first, and returns the CPU milliseconds each spent
// beyond an empty program's.
func (c cpuTimer) round(ctx context.Context, code string) (nanoMS, nativeMS float64, err error) {
	if nanoMS, err = c.less(ctx, c.inNano, code); err != nil {
		return 0, 0, err
	}
	if c.python == "" {
		return nanoMS, 0, nil
	}
	nativeMS, err = c.less(ctx, c.native, code)
	return nanoMS, nativeMS, err
}

func (c cpuTimer) less(ctx context.Context, run func(context.Context, string) (float64, error), code string) (float64, error) {
	base, err := run(ctx, emptyProgram)
	if err != nil {
		return 0, err
	}
	v, err := run(ctx, code)
	if err != nil {
		return 0, err
	}
	return max(v-base, 0.001), nil
}

func (c cpuTimer) inNano(ctx context.Context, code string) (float64, error) {
	before := selfCPU()
	res, err := c.e.Run(ctx, api.RunRequest{Code: code, Limits: api.Limits{TimeoutMS: 120000}}, tier.Stream{})
	if err != nil {
		return 0, err
	}
	if res.Error != nil {
		return 0, fmt.Errorf("in the sandbox: %s: %s", res.Error.Type, res.Error.Message)
	}
	return ms(selfCPU() - before), nil
}

func (c cpuTimer) native(ctx context.Context, code string) (float64, error) {
	cmd := exec.CommandContext(ctx, c.python, "-c", code)
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("with %s: %w", c.python, err)
	}
	return ms(cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()), nil
}

// accessMode names how nano's memory accesses were compiled.
func accessMode(checked bool) string {
	if checked {
		return "bounds-checked"
	}
	return "masked"
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Print writes the micro report as a table, ratios last.
func (r *MicroReport) Print(w io.Writer) {
	fmt.Fprintf(w, "%-40s %10s %10s %8s   (native: %s, best of %d, %s memory accesses)\n", "kernel", "nano ms", "native ms", "ratio", r.Native, r.Rounds, accessMode(r.CheckedMemory))
	for _, row := range r.Rows {
		fmt.Fprintf(w, "%-40s %10.1f %10.1f %7.2fx\n", row.Name, row.NanoMS, row.NativeMS, row.Ratio)
	}
}
