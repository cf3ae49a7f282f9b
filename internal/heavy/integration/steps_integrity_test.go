package integration

import (
	"context"
	"fmt"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/tier/tiertest"
)

// integrityProbe prints a digest of the interpreter's and the sandbox's state without changing it
// (its own names start with "_" and are left out): every global's name, type and repr, the modules
// loaded, the cwd, a few process-wide settings, and every file under the writable directories with
// a hash of its content.
const integrityProbe = `
import hashlib as _h, os as _o, sys as _s, threading as _t
def _d(b):
    return _h.sha256(b).hexdigest()[:16]
_g = []
for _k in sorted(k for k in globals() if not k.startswith('_')):
    _v = globals()[_k]
    try:
        # Buffers by their bytes (a repr of 150 MiB would not fit the sandbox), the rest by repr.
        _r = bytes(_v) if isinstance(_v, (bytes, bytearray)) else _v.tobytes() if hasattr(_v, 'tobytes') and hasattr(_v, 'dtype') else repr(_v).encode()
    except Exception as _e:
        _r = ('<repr failed %s>' % type(_e).__name__).encode()
    _g.append('%s:%s:%s' % (_k, type(_v).__name__, _d(_r)))
_f = []
for _root in ('/home/user', '/tmp', '/data', '/output'):
    for _dp, _dn, _fn in _o.walk(_root):
        _dn.sort()
        for _n in sorted(_fn):
            _p = _o.path.join(_dp, _n)
            try:
                with open(_p, 'rb') as _fh:
                    _f.append('%s:%s' % (_p, _d(_fh.read())))
            except OSError as _e:
                _f.append('%s:%s' % (_p, type(_e).__name__))
print('globals', _g)
print('modules', _d(' '.join(sorted(_s.modules)).encode()))
print('cwd', _o.getcwd(), 'path', _d(repr(_s.path).encode()), 'env', _d(repr(sorted(_o.environ.items())).encode()))
print('threads', _t.active_count(), 'files', _f)
`

// integrityScripts are scripted sessions of three steps each, covering what a session's state is
// made of: big allocations, deleted and renamed files, imports, threads and subprocesses left
// running, open files, cwd, sys.path and environment changes, classes and closures.
var integrityScripts = []struct {
	name  string
	steps [3]string
}{
	{"big allocations", [3]string{
		"big = bytearray(b'\\x07') * (150 << 20)",
		"del big\nimport numpy as np\narr = np.arange(5_000_000, dtype=np.int64)",
		"arr = arr * 3\nsmall = arr[:10].tolist()"}},
	{"files written, deleted, renamed", [3]string{
		"import os\nfor i in range(20):\n    open(f'/tmp/f{i}.txt', 'w').write(str(i) * 1000)\nos.makedirs('/home/user/d/e', exist_ok=True)",
		"for i in range(0, 20, 2):\n    os.remove(f'/tmp/f{i}.txt')\nos.rename('/tmp/f1.txt', '/tmp/renamed.txt')\nimport shutil\nshutil.move('/tmp/f3.txt', '/home/user/d/e/moved.txt')",
		"shutil.rmtree('/home/user/d')\nopen('/data/last.bin', 'wb').write(os.urandom(100_000))"}},
	{"pandas frames", [3]string{
		"import pandas as pd, numpy as np\ndf = pd.DataFrame({'k': np.arange(50_000) % 7, 'v': np.arange(50_000) * 0.5})",
		"agg = df.groupby('k')['v'].sum()\ndf = df[df.k != 3]",
		"df.to_csv('/output/df.csv')\ndel agg"}},
	{"imports come and go", [3]string{
		"import json, decimal\nfrom collections import OrderedDict as OD",
		"import scipy.optimize as opt\ndel json",
		"import fractions\nroot = opt.brentq(lambda x: x * x - 2, 0, 2)"}},
	{"a thread left waiting", [3]string{
		"import threading\nev = threading.Event()\nth = threading.Thread(target=ev.wait, daemon=True, name='waiter')\nth.start()",
		"ev2 = threading.Event()\nth2 = threading.Thread(target=ev2.wait, daemon=True, name='waiter2')\nth2.start()",
		"ev.set()\nth.join()"}},
	{"a subprocess left running", [3]string{
		"import subprocess\np = subprocess.Popen(['sleep', '1000'])",
		"q = subprocess.Popen(['sleep', '2000'])",
		"p.kill()\np.wait()"}},
	{"a file left open", [3]string{
		"log = open('/home/user/log.txt', 'a')\nlog.write('one\\n')\nlog.flush()",
		"log.write('two\\n')\nlog.flush()\nlog.write('buffered\\n')",
		"log.write('three\\n')\nlog.close()"}},
	{"cwd, sys.path and environment", [3]string{
		"import os, sys\nos.makedirs('/tmp/w', exist_ok=True)\nos.chdir('/tmp/w')",
		"sys.path.append('/tmp/w')\nos.environ['STEP'] = '2'\nopen('/tmp/w/mymod.py', 'w').write('VALUE = 42\\n')\nimport mymod",
		"os.chdir('/home/user')\ndel os.environ['STEP']"}},
	{"classes, closures, many names", [3]string{
		"class Point:\n    def __init__(self, x, y): self.x, self.y = x, y\n    def __repr__(self): return f'Point({self.x}, {self.y})'\npts = [Point(i, i * i) for i in range(1000)]",
		"def counter():\n    n = 0\n    def inc():\n        nonlocal n\n        n += 1\n        return n\n    return inc\nc = counter()\nc(); c()\nfor i in range(300):\n    globals()[f'v{i}'] = i * 1.5",
		"pts = pts[:10]\nfor i in range(0, 300, 3):\n    del globals()[f'v{i}']"}},
	{"a chart saved", [3]string{
		"import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot(range(100))\nfig.savefig('/output/a.png')\nplt.close(fig)",
		"fig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])\nfig.savefig('/output/b.png')\nplt.close(fig)",
		"import os\nos.remove('/output/a.png')"}},
}

// TestRestoreIntegrity: for each scripted session, the state after every step (the probe's digest,
// taken just before the step's snapshot) is exactly the state a restore of that step shows.
func TestRestoreIntegrity(t *testing.T) {
	ctx := context.Background()
	for _, sc := range integrityScripts {
		t.Run(sc.name, func(t *testing.T) {
			blocks := tiertest.NewBlocks()
			s, err := eng.NewSession(ctx, api.Limits{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(ctx)
			var want [3]string
			var snaps [3]*tier.Snapshot
			for i, code := range sc.steps {
				cell(t, s, code)
				want[i] = cell(t, s, integrityProbe)
				snaps[i] = snapshot(t, s, blocks)
			}
			for i := range sc.steps {
				r, err := eng.Restore(ctx, snaps[i], blocks, api.Limits{})
				if err != nil {
					t.Fatalf("Restore step %d: %v", i+1, err)
				}
				got := cell(t, r, integrityProbe)
				r.Close(ctx)
				if got != want[i] {
					t.Errorf("step %d restored:\n%s\nwant (the session after the step):\n%s", i+1, got, want[i])
				}
			}
			if want[0] == want[1] || want[1] == want[2] {
				t.Fatalf("the steps did not change the state: %v", fmt.Sprint(want))
			}
		})
	}
}
