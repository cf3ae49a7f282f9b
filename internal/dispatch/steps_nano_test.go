package dispatch

import (
	"context"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

// nanoProbe prints what P4-030 compares: the globals (names, types, reprs of plain values), the
// imported modules among some, the files of the writable directories with sizes and heads, the cwd,
// and a deterministic function of the state.
const nanoProbe = `import os as _os, sys as _sys
_g = {k: v for k, v in globals().items() if not k.startswith('_')}
_plain = (int, float, str, bytes, bool, list, dict, tuple, set, type(None), bytearray)
print(sorted((k, type(v).__name__, repr(v)[:40] if isinstance(v, _plain) else '') for k, v in _g.items()))
print(sorted(m for m in ('json', 're', 'csv', 'decimal', 'fractions', 'collections', 'itertools') if m in _sys.modules))
print(sorted((r + '/' + f, _os.path.getsize(r + '/' + f), open(r + '/' + f, 'rb').read(16))
             for d in ('/data', '/tmp', '/home/user', '/output') for r, _, fs in _os.walk(d) for f in fs))
print(_os.getcwd(), sum(len(repr(v)) for v in _g.values() if isinstance(v, _plain)))`

// P4-030 on the real nano tier: after a rewind or fork to step n, variables, imports, files, cwd and
// a deterministic probe are those after step n, for 20+ scripted sessions.
func TestNanoRewindForkIntegrity(t *testing.T) {
	scripts := []struct {
		name  string
		cells []string
	}{
		{"counter", []string{"x = 1", "x += 1", "x *= 10"}},
		{"strings", []string{"s = 'a'", "s += 'é' * 3", "s = s.upper()"}},
		{"big allocation", []string{"big = bytearray(8 << 20)\nbig[-1] = 7", "n = big[-1]", "del big"}},
		{"big list then freed", []string{"rows = [{'i': i, 's': str(i)} for i in range(30000)]", "total = sum(r['i'] for r in rows)", "del rows\nimport gc\ngc.collect()"}},
		{"file written then deleted", []string{"open('/tmp/a.txt', 'w').write('one')", "import os\nos.remove('/tmp/a.txt')", "open('/tmp/b.txt', 'w').write('two')"}},
		{"file overwritten", []string{"open('/data/f', 'w').write('v1')", "open('/data/f', 'w').write('v2' * 100)", "open('/data/f', 'a').write('!')"}},
		{"directories", []string{"import os\nos.makedirs('/home/user/a/b/c')", "open('/home/user/a/b/c/x', 'w').write('x')", "import shutil\nshutil.rmtree('/home/user/a')"}},
		{"cwd", []string{"import os\nos.chdir('/tmp')", "os.makedirs('/tmp/w', exist_ok=True)\nos.chdir('/tmp/w')", "os.chdir('/home/user')"}},
		{"imports", []string{"import json", "import re, csv", "import decimal\nd = decimal.Decimal('1.10')"}},
		{"functions and classes", []string{"def f(a):\n    return a * 2", "class K:\n    v = 3", "y = f(K.v)"}},
		{"deleted variables", []string{"a = 1\nb = 2\nc = 3", "del a", "del b\nc = 9"}},
		{"dicts", []string{"d = {}", "d.update({str(i): i for i in range(100)})", "d.pop('5')"}},
		{"sets and tuples", []string{"s = {1, 2, 3}", "t = tuple(sorted(s))", "s.discard(2)"}},
		{"failing cell", []string{"x = 1", "x = 2\nraise ValueError('boom')", "x = 3"}},
		{"output dir", []string{"open('/output/r.csv', 'w').write('a,b\\n')", "open('/output/r.csv', 'a').write('1,2\\n')", "import os\nos.remove('/output/r.csv')"}},
		{"binary file", []string{"open('/tmp/b.bin', 'wb').write(bytes(range(256)) * 40)", "data = open('/tmp/b.bin', 'rb').read()", "open('/tmp/b.bin', 'wb').write(data[::-1])"}},
		{"generators state", []string{"import itertools\nc = itertools.count()\nfirst = next(c)", "second = next(c)", "third = next(c)"}},
		{"fractions", []string{"from fractions import Fraction as F\nq = F(1, 3)", "q += F(1, 6)", "q *= 2"}},
		{"unicode names", []string{"naïve = 'café'", "日本 = len(naïve)", "del naïve"}},
		{"recursion", []string{"import sys\nsys.setrecursionlimit(3000)\ndef r(n):\n    return 0 if n == 0 else 1 + r(n - 1)", "depth = r(1500)", "depth2 = r(2500)"}},
		{"many small files", []string{"for i in range(50):\n    open(f'/tmp/f{i}', 'w').write(str(i))", "import os\nfor i in range(0, 50, 2):\n    os.remove(f'/tmp/f{i}')", "open('/tmp/f1', 'w').write('changed')"}},
		{"uploads", []string{"@/data/in.txt hello", "text = open('/data/in.txt').read()", "@/data/in.txt bye"}},
	}
	for _, sc := range scripts {
		t.Run(sc.name, func(t *testing.T) {
			st := openStore(t, t.TempDir(), snapstore.Retention{})
			d := New(eng, Config{Snapshots: st})
			t.Cleanup(d.Close)
			ctx := context.Background()
			s, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
			if err != nil {
				t.Fatal(err)
			}
			probeNano := func(s *Session) string {
				t.Helper()
				res, err := s.Run(ctx, nanoProbe, Output{})
				if err != nil || res.ExitCode != 0 {
					t.Fatalf("probe: %v %+v", err, res)
				}
				return res.Stdout
			}
			states := map[int]string{0: probeNano(s)}
			for _, c := range sc.cells {
				if up, ok := strings.CutPrefix(c, "@"); ok {
					path, data, _ := strings.Cut(up, " ")
					if err := s.WriteFile(ctx, path, []byte(data)); err != nil {
						t.Fatal(err)
					}
				} else if _, err := s.Run(ctx, c, Output{}); err != nil {
					t.Fatal(err)
				}
				states[s.Steps().Current] = probeNano(s)
			}
			settle(t, s, st)
			for _, step := range s.Steps().Steps {
				if step.Snapshot.State != api.SnapshotStored || step.Snapshot.RestoreBy != api.RestoreBySnapshot {
					t.Fatalf("step %d: %+v, want stored and restored by its snapshot", step.N, step.Snapshot)
				}
			}
			for n, want := range states {
				f, err := s.Fork(ctx, api.ForkRequest{Step: n})
				if err != nil {
					t.Fatalf("fork %d: %v", n, err)
				}
				if got := probeNano(f); got != want {
					t.Errorf("fork of step %d:\n got %s\nwant %s", n, got, want)
				}
				f.Close()
				if err := s.Rewind(ctx, n); err != nil {
					t.Fatalf("rewind %d: %v", n, err)
				}
				if got := probeNano(s); got != want {
					t.Errorf("rewind to step %d:\n got %s\nwant %s", n, got, want)
				}
			}
		})
	}
}
