// Package integration tests the heavy tier against the real runsc and root filesystem that
// build/heavy/build.sh installs (scripts/setup.sh runs it), as root. The tests run only with
// AGENTBOX_INTEGRATION=1, which CI sets; without it `go test` reports the package as not run and why.
package integration

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/tier"
)

var eng *heavy.Engine

// engState is eng's state directory: its bundles name the sandboxes that are eng's own (other tests'
// engines have sandboxes of their own at the same time).
var engState string

// afterAll are run after the tests, before eng closes: engines other tests made for themselves.
var afterAll []func()

// integrationEnv turns these tests on; CI sets it. They need root, runsc and the root filesystem, which
// a contributor's `go test ./...` on a laptop does not have, so without it they are not run (and say
// so); with it, a missing heavy tier fails them.
const integrationEnv = "AGENTBOX_INTEGRATION"

func TestMain(m *testing.M) {
	flag.Parse()
	on, err := strconv.ParseBool(cmp.Or(os.Getenv(integrationEnv), "0"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: want 1 (run the heavy integration tests) or 0\n", integrationEnv, os.Getenv(integrationEnv))
		os.Exit(2)
	}
	if dir := os.Getenv(crashHelperEnv); dir != "" {
		crashHelper(dir) // never returns: the parent test kills it
	}
	if !on {
		// -test.skip also covers benchmarks; the testing package then reports "no tests to run".
		fmt.Printf("heavy integration tests not run: set %s=1 (needs root, runsc and the root filesystem of build/heavy/build.sh)\n", integrationEnv)
		flag.Set("test.skip", ".")
		os.Exit(m.Run())
	}
	if engState, err = os.MkdirTemp("", "agentbox-heavy-it-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	eng, err = heavy.New(context.Background(), heavy.Config{PoolSize: 1, DiskMB: 64, StateDir: engState})
	if err != nil {
		os.RemoveAll(engState)
		fmt.Fprintf(os.Stderr, "heavy tier (%s=1 needs root, runsc and build/heavy/build.sh's root filesystem): %v\n", integrationEnv, err)
		os.Exit(1)
	}
	code := m.Run()
	for _, f := range afterAll {
		f()
	}
	eng.Close(context.Background())
	os.RemoveAll(engState)
	os.Exit(code)
}

func run(t *testing.T, req api.RunRequest) *api.Result {
	t.Helper()
	res, err := eng.Run(context.Background(), req, tier.Stream{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

func TestRun(t *testing.T) {
	cases := []struct {
		name    string
		code    string
		limits  api.Limits
		files   []api.File
		stdout  string
		exit    int
		errType string
		check   func(t *testing.T, r *api.Result)
	}{
		{name: "numpy", code: "import numpy as np\na = np.arange(12).reshape(3, 4)\nprint(a.sum(), a.T.shape, float(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]]))))",
			stdout: "66 (4, 3) 5.000000000000001\n"},
		{name: "pandas", code: "import pandas as pd\ndf = pd.read_csv('/data/sales.csv')\nprint(df.groupby('region')['amount'].sum().to_dict())",
			files:  []api.File{{Path: "/data/sales.csv", Data: []byte("region,amount\neast,10\nwest,5\neast,7\n")}},
			stdout: "{'east': 17, 'west': 5}\n"},
		{name: "scipy", code: "from scipy import optimize\nprint(round(optimize.brentq(lambda x: x**2 - 2, 0, 2), 6))", stdout: "1.414214\n"},
		{name: "chart as PNG", code: "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\nplt.title('t')\nplt.show()\nfig = plt.figure()\nplt.bar(['a', 'b'], [1, 2])",
			check: func(t *testing.T, r *api.Result) {
				if len(r.Artifacts) != 2 {
					t.Fatalf("%d artifacts, want 2 (one shown, one left open)", len(r.Artifacts))
				}
				for _, a := range r.ArtifactContents() {
					img, err := png.Decode(bytes.NewReader(a.Data))
					if err != nil || a.MIME != "image/png" || img.Bounds().Dx() < 100 {
						t.Fatalf("%s: not a usable PNG: %v", a.Name, err)
					}
				}
			}},
		{name: "exception", code: "import pandas as pd\npd.DataFrame({'a': [1]})['b']", exit: 1, errType: "KeyError"},
		{name: "sys.exit", code: "import sys; sys.exit(5)", exit: 5},
		{name: "C-level output is captured", code: "import os\nos.write(1, b'raw\\n')\nos.system('echo from-shell')", stdout: "raw\nfrom-shell\n"},
		{name: "no network", code: "import socket\ntry:\n    socket.create_connection(('10.0.0.1', 80), timeout=2)\nexcept OSError as e:\n    print('no network', type(e).__name__)\nimport os\nprint(sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else ['lo'])",
			check: func(t *testing.T, r *api.Result) {
				if !strings.Contains(r.Stdout, "no network") || strings.Contains(r.Stdout, "eth") {
					t.Fatalf("network reachable? %q", r.Stdout)
				}
			}},
		{name: "unprivileged, read-only root", code: "import os\nprint(os.getuid())\ntry:\n    open('/usr/evil', 'w')\nexcept OSError as e:\n    print(type(e).__name__)",
			check: func(t *testing.T, r *api.Result) {
				if r.Stdout != "1000\nOSError\n" && r.Stdout != "1000\nPermissionError\n" {
					t.Fatalf("%q", r.Stdout)
				}
			}},
		{name: "timeout", code: "while True: pass", limits: api.Limits{TimeoutMS: 1500}, exit: api.ExitTimeout, errType: api.ErrTimeout},
		{name: "memory limit", code: "import numpy as np\nx = np.ones((1024, 1024, 600))\nprint(x.sum())", limits: api.Limits{MemoryLimitMB: 256}, exit: api.ExitMemory, errType: api.ErrMemoryLimitExceeded},
		{name: "disk limit", code: "import errno\ntry:\n    open('/tmp/big', 'wb').write(b'x' * (100 << 20))\nexcept OSError as e:\n    print(e.errno == errno.ENOSPC)", stdout: "True\n"},
		{name: "pids limit", code: "import os\nn = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('refused after', n > 10, type(e).__name__)", stdout: "refused after True BlockingIOError\n",
			// A memory limit other than the default bypasses the pool: a cold sandbox without numpy and
			// pandas imported, so that 64 forked copies of it stay far below the memory limit.
			limits: api.Limits{MemoryLimitMB: 1536}},
		{name: "output limit", code: "while True: print('x' * 1000)", limits: api.Limits{MaxOutputBytes: 20000}, exit: 1, errType: api.ErrOutputLimitExceeded,
			check: func(t *testing.T, r *api.Result) {
				if !r.OutputTruncated {
					t.Fatal("output_truncated not set")
				}
			}},
		{name: "killed sandbox", code: "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
			check: func(t *testing.T, r *api.Result) {
				if r.Error == nil || (r.Error.Type != api.ErrMemoryLimitExceeded && r.Error.Type != api.ErrGuestCrash) {
					t.Fatalf("a sandbox that killed itself: %+v", r.Error)
				}
				if next := run(t, api.RunRequest{Code: "print('still serving')"}); next.Stdout != "still serving\n" {
					t.Fatalf("engine after a killed sandbox: %+v", next)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, api.RunRequest{Code: tc.code, Limits: tc.limits, Files: tc.files})
			if tc.check == nil && r.Stdout != tc.stdout {
				t.Errorf("stdout %q, want %q\nstderr: %s", r.Stdout, tc.stdout, r.Stderr)
			}
			if tc.name != "killed sandbox" && r.ExitCode != tc.exit {
				t.Errorf("exit %d, want %d; error %+v\nstderr: %s", r.ExitCode, tc.exit, r.Error, r.Stderr)
			}
			if tc.errType != "" && (r.Error == nil || r.Error.Type != tc.errType) {
				t.Errorf("error %+v, want %s", r.Error, tc.errType)
			}
			if tc.errType == "" && tc.exit == 0 && r.Error != nil && tc.name != "killed sandbox" {
				t.Errorf("unexpected error %+v", r.Error)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
			if r.Tier != api.TierHeavy {
				t.Errorf("tier %q", r.Tier)
			}
		})
	}
}

func TestNoHostFiles(t *testing.T) {
	marker := fmt.Sprintf("/tmp/agentbox-host-marker-%d", os.Getpid())
	os.WriteFile(marker, []byte("host secret"), 0o644)
	defer os.Remove(marker)
	r := run(t, api.RunRequest{Code: fmt.Sprintf("import os\nprint(os.path.exists(%q), os.path.exists('/root/.cache'), os.path.exists('/work'))", marker)})
	if r.Stdout != "False False False\n" {
		t.Fatalf("host files visible: %q %s", r.Stdout, r.Stderr)
	}
}

func TestSession(t *testing.T) {
	ctx := context.Background()
	s, err := eng.NewSession(ctx, api.Limits{TimeoutMS: 20000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if err := s.WriteFile(ctx, "/data/in.csv", []byte("x\n1\n2\n3\n")); err != nil {
		t.Fatal(err)
	}
	r, err := s.Run(ctx, "import pandas as pd\ndf = pd.read_csv('/data/in.csv')", tier.Stream{})
	if err != nil || r.Error != nil {
		t.Fatalf("%v %+v", err, r)
	}
	var streamed strings.Builder
	var mu sync.Mutex
	r, err = s.Run(ctx, "total = int(df.x.sum())\nprint(total)\nopen('/output/total.txt', 'w').write(str(total))",
		tier.Stream{Stdout: func(s string) { mu.Lock(); streamed.WriteString(s); mu.Unlock() }})
	if err != nil || r.Stdout != "6\n" || streamed.String() != "6\n" {
		t.Fatalf("%v %+v streamed %q", err, r, streamed.String())
	}
	data, err := s.ReadFile(ctx, "/output/total.txt", 0)
	if err != nil || string(data) != "6" {
		t.Fatalf("%q %v", data, err)
	}
	files, err := s.ListFiles(ctx, "/data")
	if err != nil || len(files) != 1 || files[0].Name != "in.csv" {
		t.Fatalf("%+v %v", files, err)
	}
	if _, err := s.ReadFile(ctx, "/data/missing", 0); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("missing file: %v", err)
	}
	if err := s.WriteFile(ctx, "/data/../etc/x", nil); errdefs.ClassOf(err) != errdefs.InvalidArgument {
		t.Fatalf("dotdot path: %v", err)
	}
	// A link planted by the guest resolves inside the sandbox, never on the host.
	s.Run(ctx, "import os\nos.symlink('/etc/passwd', '/data/link')", tier.Stream{})
	data, err = s.ReadFile(ctx, "/data/link", 0)
	if err != nil || !strings.Contains(string(data), "sandbox:x:1000") {
		t.Fatalf("link read %q %v (want the sandbox's own /etc/passwd)", data, err)
	}
	// A timeout ends the session.
	r, err = s.Run(ctx, "import time\ntime.sleep(60)", tier.Stream{})
	if err != nil || !r.TimedOut {
		t.Fatalf("%v %+v", err, r)
	}
	if _, err := s.Run(ctx, "print(1)", tier.Stream{}); !errors.Is(err, tier.ErrGone) {
		t.Fatalf("run after timeout: %v", err)
	}
}

func TestPoolEmptiesWhenIdle(t *testing.T) {
	ctx := context.Background()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: 1, PoolIdle: 15 * time.Second}) // longer than making the golden checkpoint
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("the pool to fill", func() bool { return e.PoolReady() == 1 })
	waitFor("the idle pool to empty", func() bool { return e.PoolReady() == 0 })
	if res, err := e.Run(ctx, api.RunRequest{Code: "print('woke')"}, tier.Stream{}); err != nil || res.Stdout != "woke\n" {
		t.Fatalf("%v %+v", err, res)
	}
	waitFor("a request to refill it", func() bool { return e.PoolReady() == 1 })
	if e.Stats.Restored.Load() == 0 {
		t.Fatal("the pool never refilled from the golden checkpoint")
	}
}

// cpuShares reads the CPU share of every running sandbox of eng's (cgroup v1 cpu.shares, or v2
// cpu.weight scaled to shares). Empty cgroups are left out: the sandbox is gone or going.
func cpuShares(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, pattern := range []string{"/sys/fs/cgroup/cpu/agentbox-*/cpu.shares", "/sys/fs/cgroup/agentbox-*/cpu.weight"} {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(engState, "bundles", filepath.Base(filepath.Dir(f)))); err != nil {
				continue // another engine's sandbox, or gone
			}
			if procs, err := os.ReadFile(filepath.Join(filepath.Dir(f), "cgroup.procs")); err != nil || len(bytes.TrimSpace(procs)) == 0 {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				continue // the sandbox went away meanwhile
			}
			n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if strings.HasSuffix(f, "cpu.weight") {
				n = n * 1024 / 100
			}
			out[filepath.Base(filepath.Dir(f))] = n
		}
	}
	return out
}

// TestRefillsYieldTheCPU: sandboxes being made for the pool run at a small CPU share, so that refills
// do not slow the requests in flight; the sandbox a request takes gets the full share.
func TestRefillsYieldTheCPU(t *testing.T) {
	ctx := context.Background()
	for eng.PoolReady() == 0 {
		time.Sleep(50 * time.Millisecond)
	}
	before := cpuShares(t)
	if len(before) == 0 {
		t.Fatal("no sandbox cgroup found under /sys/fs/cgroup")
	}
	for id, n := range before {
		if n >= 1024 {
			t.Fatalf("pooled sandbox %s has the full CPU share (%d)", id, n)
		}
	}
	s, err := eng.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	full := 0
	for id, n := range cpuShares(t) {
		if _, pooled := before[id]; pooled && n == 1024 {
			full++
		}
	}
	if full != 1 {
		t.Fatalf("%d pooled sandboxes got the full share after one was taken: %v", full, cpuShares(t))
	}
}
