package nano

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/vfs"
)

var shared *Engine

// fuzzing reports whether this process only fuzzes (the coordinator or a worker): the shared engine
// the tests need is then not built, so that workers start at once.
func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

func TestMain(m *testing.M) {
	flag.Parse()
	if fuzzing() {
		os.Exit(m.Run())
	}
	ctx := context.Background()
	var err error
	shared, err = New(ctx, Config{FS: vfs.Limits{MaxBytes: 8 << 20, MaxFiles: 200}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the nano engine:", err)
		os.Exit(1)
	}
	code := m.Run()
	shared.Close(ctx)
	os.Exit(code)
}

func run(t *testing.T, req api.RunRequest) *api.Result {
	t.Helper()
	res, err := shared.Run(context.Background(), req, tier.Stream{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

// TestRun is the end-to-end table: each case runs real Python in a fresh sandbox.
func TestRun(t *testing.T) {
	type want struct {
		stdout    []string // substrings of stdout
		stderr    []string // substrings of stderr
		exit      int
		errType   string // "" means no error
		errMsg    string // substring of error.message
		timedOut  bool
		memory    bool
		truncated bool
	}
	cases := []struct {
		name   string
		code   string
		limits api.Limits
		files  []api.File
		stdin  string
		want   want
	}{
		{name: "print", code: `print("hello", 1+1)`, want: want{stdout: []string{"hello 2\n"}}},
		{name: "json", code: `import json; d=json.loads('{"a":[1,2,{"b":null}]}'); print(json.dumps(d, sort_keys=True))`,
			want: want{stdout: []string{`{"a": [1, 2, {"b": null}]}`}}},
		{name: "re", code: `import re; print(re.findall(r"\d+", "a1b22c333"), re.sub(r"(\w+)@(\w+)", r"\2 at \1", "me@host"))`,
			want: want{stdout: []string{"['1', '22', '333'] host at me"}}},
		{name: "datetime", code: `import datetime as d; print(d.date(2024,3,1) - d.timedelta(days=1), d.datetime(2020,1,1,tzinfo=d.timezone.utc).isoformat())`,
			want: want{stdout: []string{"2024-02-29 2020-01-01T00:00:00+00:00"}}},
		{name: "collections", code: `from collections import Counter, deque, OrderedDict; print(Counter("abracadabra").most_common(2)); q=deque([1,2]); q.appendleft(0); print(list(q))`,
			want: want{stdout: []string{"[('a', 5), ('b', 2)]", "[0, 1, 2]"}}},
		{name: "decimal", code: `from decimal import Decimal, getcontext; getcontext().prec=30; print(Decimal(1)/Decimal(7)); print(Decimal("0.1")+Decimal("0.2"))`,
			want: want{stdout: []string{"0.142857142857142857142857142857", "0.3\n"}}},
		{name: "statistics", code: `import statistics as s; print(s.mean([1,2,3,4]), s.median([3,1,2]), round(s.stdev([2,4,4,4,5,5,7,9]),4))`,
			want: want{stdout: []string{"2.5 2 2.1381"}}},
		{name: "sqlite3", code: "import sqlite3\nc=sqlite3.connect('/tmp/t.db')\nc.execute('create table t(x int, s text)')\nc.executemany('insert into t values(?,?)',[(i,str(i)) for i in range(100)])\nc.commit()\nprint(c.execute('select sum(x), count(*) from t').fetchone())\nc.execute(\"create virtual table f using fts5(body)\")\nc.execute(\"insert into f values('the quick brown fox')\")\nprint(c.execute(\"select count(*) from f where f match 'quick'\").fetchone()[0])\nprint(sqlite3.connect(':memory:').execute(\"select json_extract('{\\\"a\\\":5}','$.a')\").fetchone()[0])",
			want: want{stdout: []string{"(4950, 100)", "\n1\n", "5\n"}}},
		{name: "zlib bz2 lzma", code: "import zlib, bz2, lzma\nd=b'x'*10000\nprint(len(zlib.compress(d))<100, zlib.decompress(zlib.compress(d))==d, bz2.decompress(bz2.compress(d))==d, lzma.decompress(lzma.compress(d))==d)",
			want: want{stdout: []string{"True True True True"}}},
		{name: "hashlib", code: `import hashlib; print(hashlib.sha256(b"abc").hexdigest()); print(hashlib.md5(b"").hexdigest())`,
			want: want{stdout: []string{"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "d41d8cd98f00b204e9800998ecf8427e"}}},
		{name: "unicode", code: `s="héllo wörld ✓ 日本語 🐍"; print(s, len(s), s.upper()); print(s.encode("utf-8")[:6])`,
			want: want{stdout: []string{"héllo wörld ✓ 日本語 🐍 19 HÉLLO WÖRLD ✓ 日本語 🐍", `b'h\xc3\xa9llo'`}}},
		{name: "vfs write then read", code: "import os\nos.makedirs('/tmp/a/b', exist_ok=True)\nwith open('/tmp/a/b/f.txt','w') as f: f.write('line1\\nline2\\n')\nwith open('/tmp/a/b/f.txt','a') as f: f.write('line3\\n')\nprint(open('/tmp/a/b/f.txt').read().splitlines(), sorted(os.listdir('/tmp/a/b')))\nos.rename('/tmp/a/b/f.txt','/tmp/a/g.txt')\nprint(os.path.exists('/tmp/a/b/f.txt'), os.stat('/tmp/a/g.txt').st_size)\nos.remove('/tmp/a/g.txt'); os.rmdir('/tmp/a/b'); print(os.listdir('/tmp/a'))",
			want: want{stdout: []string{"['line1', 'line2', 'line3'] ['f.txt']", "False 18", "[]"}}},
		{name: "seek truncate", code: "f=open('/tmp/s','w+b'); f.write(b'0123456789'); f.seek(3); print(f.read(2)); f.truncate(4); f.seek(0); print(f.read()); f.seek(8); f.write(b'!'); f.seek(0); print(f.read())",
			want: want{stdout: []string{"b'34'", "b'0123'", `b'0123\x00\x00\x00\x00!'`}}},
		{name: "symlink stays inside", code: "import os\nos.symlink('/../../../etc', '/tmp/l')\nprint(os.readlink('/tmp/l'), os.path.isdir('/tmp/l'))\nos.symlink('/data', '/tmp/d'); open('/tmp/d/x','w').write('via link'); print(open('/data/x').read())",
			want: want{stdout: []string{"/../../../etc False", "via link"}}},
		{name: "files placed", code: "import csv\nrows=list(csv.DictReader(open('/data/in.csv')))\nprint(sum(int(r['n']) for r in rows), rows[0]['name'])",
			files: []api.File{{Path: "/data/in.csv", Data: []byte("name,n\nann,3\nbob,4\n")}},
			want:  want{stdout: []string{"7 ann"}}},
		{name: "stdin", code: `import sys; print(input().upper(), sys.stdin.read().split())`, stdin: "first\nsecond third\n",
			want: want{stdout: []string{"FIRST ['second', 'third']"}}},
		{name: "no host files", code: "import os\nprint(sorted(os.listdir('/')))\nfor p in ['/etc/passwd', '/proc/self/environ', '../../../../etc/hostname', '/root']:\n    print(p, os.path.exists(p))",
			want: want{stdout: []string{"['data', 'dev', 'home', 'output', 'tmp', 'usr']", "/etc/passwd False", "/proc/self/environ False", "../../../../etc/hostname False", "/root False"}}},
		{name: "no network", code: "import socket, urllib.request\nfor f in [lambda: socket.socket().connect(('127.0.0.1', 22)), lambda: socket.create_connection(('example.com', 80)), lambda: urllib.request.urlopen('http://127.0.0.1/')]:\n    try:\n        f(); print('CONNECTED')\n    except OSError as e:\n        print('refused', type(e).__name__)",
			want: want{stdout: []string{"refused OSError\nrefused OSError\nrefused URLError"}}},
		{name: "environment is empty", code: `import os, sys; print(dict(os.environ), sys.argv)`, want: want{stdout: []string{"{} ['main.py']"}}},
		{name: "syntax error has line", code: "x = 1\ny = (\nprint(x", want: want{exit: 1, errType: "SyntaxError", errMsg: "(main.py, line 3)", stderr: []string{"SyntaxError"}}},
		{name: "zero division", code: "def f(a):\n    return a / 0\nf(1)", want: want{exit: 1, errType: "ZeroDivisionError", errMsg: "division by zero", stderr: []string{`File "main.py", line 3, in <module>`, `line 2, in f`, "return a / 0"}}},
		{name: "custom exception", code: "class Boom(Exception): pass\nraise Boom('bad thing')", want: want{exit: 1, errType: "Boom", errMsg: "bad thing"}},
		{name: "exception chain", code: "try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('wrapped') from e", want: want{exit: 1, errType: "ValueError", stderr: []string{"KeyError: 'k'", "direct cause"}}},
		{name: "sys.exit 0", code: "import sys; print('bye'); sys.exit()", want: want{stdout: []string{"bye"}}},
		{name: "sys.exit 3", code: "import sys; sys.exit(3)", want: want{exit: 3}},
		{name: "sys.exit message", code: "import sys; sys.exit('fatal: no input')", want: want{exit: 1, stderr: []string{"fatal: no input"}}},
		{name: "os._exit", code: "import os; print('flushed?', flush=True); os._exit(7)", want: want{exit: 7, stdout: []string{"flushed?"}}},
		{name: "recursion error", code: "def f(n): return f(n+1)\nf(0)", want: want{exit: 1, errType: "RecursionError"}},
		{name: "c stack overflow", code: "import sys\nsys.setrecursionlimit(10**6)\na=[]\nfor i in range(10**5): a=[a]\nrepr(a)", want: want{exit: api.ExitCrash, errType: api.ErrGuestCrash, errMsg: "WebAssembly trap"}},
		{name: "timeout", code: "while True: pass", limits: api.Limits{TimeoutMS: 300}, want: want{exit: api.ExitTimeout, errType: api.ErrTimeout, timedOut: true, errMsg: "300 ms"}},
		{name: "timeout in sleep", code: "import time; print('start', flush=True); time.sleep(30)", limits: api.Limits{TimeoutMS: 300}, want: want{exit: api.ExitTimeout, errType: api.ErrTimeout, timedOut: true, stdout: []string{"start"}}},
		{name: "sleep works", code: "import time\nt=time.monotonic(); time.sleep(0.2); d=time.monotonic()-t\nprint(0.19 < d < 1.0)", want: want{stdout: []string{"True"}}},
		{name: "memory limit", code: "x = bytearray(200 * 1024 * 1024)\nprint('allocated')", limits: api.Limits{MemoryLimitMB: 64},
			want: want{exit: api.ExitMemory, errType: api.ErrMemoryLimitExceeded, memory: true, errMsg: "64 MiB"}},
		{name: "memory limit caught", code: "try:\n    x = bytearray(200 * 1024 * 1024)\nexcept MemoryError:\n    print('caught')", limits: api.Limits{MemoryLimitMB: 64},
			want: want{stdout: []string{"caught"}, memory: true}},
		{name: "memory grows in small steps", code: "l=[]\nwhile True: l.append('x' * 100000)", limits: api.Limits{MemoryLimitMB: 48},
			want: want{exit: api.ExitMemory, errType: api.ErrMemoryLimitExceeded, memory: true}},
		{name: "output limit", code: "while True: print('spam' * 100)", limits: api.Limits{MaxOutputBytes: 10000},
			want: want{exit: 1, errType: api.ErrOutputLimitExceeded, truncated: true, stdout: []string{"spamspam", api.TruncationMarker}}},
		{name: "quota bytes ENOSPC", code: "import errno\ntry:\n    open('/tmp/big','wb').write(b'x' * (20 << 20))\nexcept OSError as e:\n    print(e.errno == errno.ENOSPC, e.strerror)",
			want: want{stdout: []string{"True No space left on device"}}},
		{name: "quota files ENOSPC", code: "import errno\ntry:\n    for i in range(1000): open(f'/tmp/f{i}','w').close()\nexcept OSError as e:\n    print(e.errno == errno.ENOSPC, i > 100)",
			want: want{stdout: []string{"True True"}}},
		{name: "allowed modules", code: "import json, math\nprint(json.dumps([math.pi]))\nimport os", limits: api.Limits{AllowedModules: []string{"json", "math"}},
			want: want{exit: 1, errType: "ImportError", errMsg: "'os' is not allowed", stdout: []string{"[3.14"}}},
		{name: "allowed modules import_module", code: "import importlib\nimportlib.import_module('socket')", limits: api.Limits{AllowedModules: []string{"importlib"}},
			want: want{exit: 1, errType: "ImportError", errMsg: "'socket' is not allowed"}},
		{name: "allowed modules stdlib internals", code: "import json\nprint(json.loads('[1]'), json.dumps({'a': 1}, indent=1).count('\\n'))", limits: api.Limits{AllowedModules: []string{"json"}},
			want: want{stdout: []string{"[1] 2"}}},
		{name: "ssl unavailable", code: "import ssl", want: want{exit: 1, errType: "ModuleNotFoundError", errMsg: "nano tier"}},
		{name: "ctypes unavailable", code: "import ctypes", want: want{exit: 1, errType: "ModuleNotFoundError", errMsg: "nano tier"}},
		{name: "threads unavailable", code: "import threading\nthreading.Thread(target=print).start()", want: want{exit: 1, errType: "RuntimeError", errMsg: "nano tier"}},
		{name: "subprocess unavailable", code: "import subprocess\nsubprocess.run(['ls'])", want: want{exit: 1, errType: "OSError", errMsg: "not support processes"}},
		{name: "user module import", code: "open('/home/user/helper.py','w').write('def twice(x): return 2*x\\n')\nimport helper\nprint(helper.twice(21))",
			want: want{stdout: []string{"42"}}},
		{name: "stderr separate", code: "import sys; print('out'); print('err', file=sys.stderr)", want: want{stdout: []string{"out\n"}, stderr: []string{"err\n"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res := run(t, api.RunRequest{Code: tc.code, Limits: tc.limits, Files: tc.files, Stdin: []byte(tc.stdin)})
			w := tc.want
			if res.ExitCode != w.exit {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", res.ExitCode, w.exit, res.Stdout, res.Stderr)
			}
			for _, s := range w.stdout {
				if !strings.Contains(res.Stdout, s) {
					t.Errorf("stdout lacks %q:\n%s\nstderr: %s", s, res.Stdout, res.Stderr)
				}
			}
			for _, s := range w.stderr {
				if !strings.Contains(res.Stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, res.Stderr)
				}
			}
			switch {
			case w.errType == "" && res.Error != nil:
				t.Errorf("unexpected error %+v\nstderr: %s", res.Error, res.Stderr)
			case w.errType != "" && res.Error == nil:
				t.Errorf("no error, want %s", w.errType)
			case w.errType != "" && (res.Error.Type != w.errType || !strings.Contains(res.Error.Message, w.errMsg)):
				t.Errorf("error %s: %q, want %s containing %q", res.Error.Type, res.Error.Message, w.errType, w.errMsg)
			}
			if res.TimedOut != w.timedOut || res.MemoryExceeded != w.memory || res.OutputTruncated != w.truncated {
				t.Errorf("flags timed_out=%v memory_exceeded=%v output_truncated=%v, want %v %v %v",
					res.TimedOut, res.MemoryExceeded, res.OutputTruncated, w.timedOut, w.memory, w.truncated)
			}
			if res.Tier != api.TierNano || res.DurationMS <= 0 {
				t.Errorf("tier %q duration %v", res.Tier, res.DurationMS)
			}
		})

	}
}

func TestIsolationBetweenRuns(t *testing.T) {
	first := run(t, api.RunRequest{Code: "import builtins, sys, json\nbuiltins.leak = 1\nsys.modules['json'].leak = 2\nopen('/tmp/left','w').write('x')\nsecret = 'first-run'\nprint('ok')"})
	if first.Error != nil {
		t.Fatalf("first run: %+v", first.Error)
	}
	second := run(t, api.RunRequest{Code: "import builtins, json, os\nprint(hasattr(builtins, 'leak'), hasattr(json, 'leak'), os.path.exists('/tmp/left'), 'secret' in globals())"})
	if strings.TrimSpace(second.Stdout) != "False False False False" {
		t.Fatalf("state leaked between runs: %q %s", second.Stdout, second.Stderr)
	}
}

func TestEntropyDiffersBetweenRuns(t *testing.T) {
	code := "import random, os, uuid\nprint(random.random(), os.urandom(8).hex(), uuid.uuid4())"
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		res := run(t, api.RunRequest{Code: code})
		fields := strings.Fields(res.Stdout)
		if len(fields) != 3 {
			t.Fatalf("output %q", res.Stdout)
		}
		for _, f := range fields {
			if seen[f] {
				t.Fatalf("value %s repeated across runs", f)
			}
			seen[f] = true
		}
	}
}

// The str-hash secret is fixed inside a snapshot; rotation replaces it.
func TestHashSecretRotates(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1, RotateRuns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	hashes := map[string]bool{}
	for i := 0; i < 4; i++ {
		before := e.Stats().Snapshots.Load()
		res, err := e.Run(ctx, api.RunRequest{Code: "print(hash('agentbox'))"}, tier.Stream{})
		if err != nil || res.Error != nil {
			t.Fatalf("run: %v %+v", err, res)
		}
		hashes[strings.TrimSpace(res.Stdout)] = true
		deadline := time.Now().Add(10 * time.Second)
		for e.Stats().Snapshots.Load() == before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if len(hashes) < 3 {
		t.Fatalf("str hash took %d distinct values over 4 rotated snapshots: %v", len(hashes), hashes)
	}
}

func TestRealClock(t *testing.T) {
	res := run(t, api.RunRequest{Code: "import time; print(time.time())"})
	var guest float64
	fmt.Sscan(res.Stdout, &guest)
	if d := time.Since(time.Unix(0, int64(guest*1e9))); d < -time.Second || d > 5*time.Second {
		t.Fatalf("guest clock is %v off the host's", d)
	}
}

func TestConcurrentRunsDoNotMix(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code := fmt.Sprintf("import sys\nfor k in range(200): print(%d, k)\nprint('err', %d, file=sys.stderr)", i, i)
			res, err := shared.Run(context.Background(), api.RunRequest{Code: code}, tier.Stream{})
			if err != nil {
				errs <- err
				return
			}
			lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
			if len(lines) != 200 {
				errs <- fmt.Errorf("run %d: %d lines", i, len(lines))
				return
			}
			for k, l := range lines {
				if l != fmt.Sprintf("%d %d", i, k) {
					errs <- fmt.Errorf("run %d line %d: %q", i, k, l)
					return
				}
			}
			if res.Stderr != fmt.Sprintf("err %d\n", i) {
				errs <- fmt.Errorf("run %d stderr %q", i, res.Stderr)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestInvalidRequests(t *testing.T) {
	cases := []struct {
		name string
		req  api.RunRequest
		want string
	}{
		{"memory above max", api.RunRequest{Code: "1", Limits: api.Limits{MemoryLimitMB: 1 << 20}}, "memory_limit_mb"},
		{"memory below min", api.RunRequest{Code: "1", Limits: api.Limits{MemoryLimitMB: 1}}, "minimum"},
		{"negative timeout", api.RunRequest{Code: "1", Limits: api.Limits{TimeoutMS: -5}}, "negative"},
		{"bad module name", api.RunRequest{Code: "1", Limits: api.Limits{AllowedModules: []string{"os; rm"}}}, "not a module name"},
		{"relative file path", api.RunRequest{Code: "1", Files: []api.File{{Path: "data/x"}}}, "absolute"},
		{"dotdot file path", api.RunRequest{Code: "1", Files: []api.File{{Path: "/data/../../etc/x"}}}, `".."`},
		{"NUL in path", api.RunRequest{Code: "1", Files: []api.File{{Path: "/data/a\x00b"}}}, "NUL"},
		{"other tier", api.RunRequest{Code: "1", Tier: api.TierHeavy}, "not served"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := shared.Run(context.Background(), tc.req, tier.Stream{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if errdefs.ClassOf(err) != errdefs.InvalidArgument {
				t.Fatalf("class %v, want invalid_argument", errdefs.ClassOf(err))
			}
		})

	}
}

func TestOverloadIsRefused(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1, MaxConcurrent: 1, MaxQueue: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	started := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Busy, not asleep: a sleeping program gives its slot up.
		e.Run(ctx, api.RunRequest{Code: "import time; print('go', flush=True)\nt = time.time()\nwhile time.time() - t < 1: pass"}, tier.Stream{Stdout: func(string) {
			select {
			case <-started:
			default:
				close(started)
			}
		}})
	}()
	<-started
	_, err = e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{})
	if errdefs.ClassOf(err) != errdefs.Overloaded {
		t.Fatalf("second run while the only slot is busy: err %v, want overloaded", err)
	}
	<-done
	if res, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); err != nil || res.Stdout != "1\n" {
		t.Fatalf("after the slot freed: %v %+v", err, res)
	}
}

func TestStreamDeliversOutputInOrder(t *testing.T) {
	var mu sync.Mutex
	var got strings.Builder
	res, err := shared.Run(context.Background(), api.RunRequest{Code: "for i in range(3): print(i, flush=True)"},
		tier.Stream{Stdout: func(b string) { mu.Lock(); got.WriteString(b); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != "0\n1\n2\n" || res.Stdout != got.String() {
		t.Fatalf("streamed %q, result %q", got.String(), res.Stdout)
	}
}

func TestSession(t *testing.T) {
	ctx := context.Background()
	s, err := shared.NewSession(ctx, api.Limits{TimeoutMS: 2000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	steps := []struct{ code, out string }{
		{"import math\nx = 21\nopen('/data/notes.txt','w').write('kept')", ""},
		{"def double(v): return v * 2\nprint(double(x))", "42\n"},
		{"print(math.sqrt(16), open('/data/notes.txt').read())", "4.0 kept\n"},
	}
	for i, st := range steps {
		res, err := s.Run(ctx, st.code, tier.Stream{})
		if err != nil || res.Error != nil || res.Stdout != st.out {
			t.Fatalf("cell %d: err %v result %+v", i, err, res)
		}
	}
	if err := s.WriteFile(ctx, "/data/up.txt", []byte("uploaded")); err != nil {
		t.Fatal(err)
	}
	res, _ := s.Run(ctx, "print(open('/data/up.txt').read()); 1/0", tier.Stream{})
	if res.Stdout != "uploaded\n" || res.Error == nil || !strings.Contains(res.Error.Traceback, "<cell-4>") {
		t.Fatalf("upload or error in cell: %+v", res)
	}
	res, _ = s.Run(ctx, "print(x)", tier.Stream{}) // an exception does not end the session
	if res.Stdout != "21\n" {
		t.Fatalf("session lost state after an exception: %+v", res)
	}
	if !s.Alive() {
		t.Fatal("a live session is not alive")
	}
	if !registered(shared, s) {
		t.Fatal("a live session is not in the engine's registry")
	}
	// A timeout kills the interpreter, so the session ends and says so.
	res, err = s.Run(ctx, "while True: pass", tier.Stream{})
	if err != nil || !res.TimedOut {
		t.Fatalf("timeout in session: %v %+v", err, res)
	}
	if _, err := s.Run(ctx, "print(x)", tier.Stream{}); !errors.Is(err, tier.ErrGone) || errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("run after the interpreter died: %v", err)
	}
	if s.Alive() || registered(shared, s) {
		t.Fatal("a dead session is alive or still counted by the engine")
	}
}

// registered reports whether the engine counts the session (against MaxSessions, and to close it).
func registered(e *Engine, s tier.Session) bool {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	_, ok := e.sessions[s.(*session)]
	return ok
}

// TestNanoSessionRefusesPackages: the nano tier has no packages, and its sessions say so instead of
// starting without them.
func TestNanoSessionRefusesPackages(t *testing.T) {
	if _, err := shared.NewSession(context.Background(), api.Limits{}, []string{"numpy"}); errdefs.ClassOf(err) != errdefs.InvalidArgument {
		t.Fatalf("packages on a nano session: %v, want invalid argument", err)
	}
}

func TestCloseRefusesNewWork(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(ctx, api.RunRequest{Code: "1"}, tier.Stream{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("run after close: %v", err)
	}
}

// TestRunnerReplyOK: the host skips decoding the reply of a run that ended well only while replyOK is
// byte for byte what runner.py sends for one.
func TestRunnerReplyOK(t *testing.T) {
	ctx := context.Background()
	for _, code := range []string{"pass", "import sys; sys.exit(0)", "x = {'error': None}"} {
		t.Run(code, func(t *testing.T) {
			inst, err := shared.take(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer inst.close(ctx)
			payload, err := json.Marshal(runnerRequest{Code: code, Filename: "main.py", Frame: string(newFrame())})
			if err != nil {
				t.Fatal(err)
			}
			reply, err := inst.call(ctx, payload)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(reply, replyOK) {
				t.Fatalf("runner replied %s, not replyOK %s", reply, replyOK)
			}
		})
	}
}
