package nano

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/tier/tiertest"
)

// stateProbe prints what must be equal after a restore: the names, types and reprs of the globals,
// the imported modules, the working directory, and every file and directory under the writable
// directories with its mode, size and content hash. It leaves only underscore names behind.
const stateProbe = `
import json as _j, os as _o, sys as _s, hashlib as _h
def _tree():
    out = {}
    for top in ("/home/user", "/tmp", "/data", "/output"):
        for d, dirs, files in _o.walk(top, followlinks=False):
            dirs.sort()
            for n in sorted(dirs + files):
                p = _o.path.join(d, n)
                st = _o.lstat(p)
                if _o.path.islink(p):
                    out[p] = ["link", _o.readlink(p)]
                elif _o.path.isdir(p):
                    out[p] = ["dir", oct(st.st_mode)]
                else:
                    with open(p, "rb") as fh:
                        out[p] = ["file", oct(st.st_mode), st.st_size, st.st_nlink, _h.sha256(fh.read()).hexdigest(), int(st.st_mtime)]
    return out
print(_j.dumps({
    "vars": {k: [type(v).__name__, repr(v)[:300]] for k, v in sorted(globals().items()) if not k.startswith("_")},
    "modules": sorted(_s.modules),
    "cwd": _o.getcwd(),
    "files": _tree(),
}, sort_keys=True))
`

// runCell runs code in s and fails the test unless it succeeds; it returns stdout.
func runCell(t *testing.T, s tier.Session, code string) string {
	t.Helper()
	res, err := s.Run(context.Background(), code, tier.Stream{})
	if err != nil {
		t.Fatalf("Run(%q): %v", firstLine(code), err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("Run(%q): exit %d: %+v\n%s", firstLine(code), res.ExitCode, res.Error, res.Stderr)
	}
	return res.Stdout
}

func snapshotOf(t *testing.T, s tier.Session, blocks tier.Blocks) *tier.Snapshot {
	t.Helper()
	snap, err := s.(tier.Snapshotter).Snapshot(context.Background(), blocks)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return snap
}

func restoreOf(t *testing.T, snap *tier.Snapshot, blocks tier.Blocks, lim api.Limits) tier.Session {
	t.Helper()
	s, err := shared.Restore(context.Background(), snap, blocks, lim)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func newSession(t *testing.T) tier.Session {
	t.Helper()
	s, err := shared.NewSession(context.Background(), api.Limits{}, nil)
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// TestRestoreEqualsStep is the integrity table: each scripted session is snapshotted after every
// cell, and every step restored into a new session must show exactly the state (globals, imports,
// files, cwd: stateProbe) the original showed after that step, and go on running cells.
func TestRestoreEqualsStep(t *testing.T) {
	cases := []struct {
		name  string
		cells []string
		after string // run in every restored session: it must succeed
	}{
		{name: "variables and imports", cells: []string{
			"x = 41\nname = 'first'",
			"import statistics, fractions\ny = statistics.mean([1, 2, 3])\nx += 1",
			"del name\nz = [x, y, {'k': (1, 2)}]\nfrom decimal import Decimal\nd = Decimal('1.5')",
		}, after: "print(x)"},
		{name: "functions and classes", cells: []string{
			"def f(a):\n    return a * 2\nclass C:\n    def __init__(self): self.v = f(21)\nc = C()",
			"C.extra = 7\nc.v += 1\ng = lambda: c.v",
		}, after: "assert f(2) == 4 and c.v in (42, 43)"},
		{name: "files written, overwritten and deleted", cells: []string{
			"open('/home/user/a.txt', 'w').write('step one\\n')\nopen('/tmp/gone.txt', 'w').write('soon deleted')",
			"open('/home/user/a.txt', 'a').write('step two\\n')\nimport os; os.remove('/tmp/gone.txt')\nos.makedirs('/data/x/y', exist_ok=True)",
			"open('/data/x/y/b.bin', 'wb').write(bytes(range(256)) * 1000)\nopen('/home/user/a.txt', 'w').write('rewritten')",
			"import shutil; shutil.rmtree('/data/x')",
		}, after: "import os; open('/home/user/after.txt', 'w').write('ok'); print(os.listdir('/home/user'))"},
		{name: "links, modes and times", cells: []string{
			"import os\nopen('/home/user/t.txt', 'w').write('target')\nos.symlink('/home/user/t.txt', '/home/user/ln')\nos.link('/home/user/t.txt', '/home/user/hard')",
			"os.chmod('/home/user/t.txt', 0o600)\nos.utime('/home/user/t.txt', (1_000_000_000, 1_000_000_000))\nos.mkdir('/output/d', 0o700)",
		}, after: "assert open('/home/user/ln').read() == 'target'"},
		{name: "working directory", cells: []string{
			"import os\nos.chdir('/tmp')",
			"os.makedirs('/data/w', exist_ok=True)\nos.chdir('/data/w')\nopen('rel.txt', 'w').write('relative')",
			"os.chdir('/home/user')",
		}, after: "import os; print(os.getcwd(), os.listdir('.'))"},
		{name: "big allocation then del", cells: []string{
			"big = bytearray(8 << 20)\nbig[::4096] = b'x' * (2048)\nsig = big.count(b'x')",
			"del big\nimport gc; gc.collect()\nsmall = 'after'",
			"big = bytes(range(256)) * 20000",
		}, after: "print(len(globals().get('big', b'')))"},
		{name: "memory growth from many objects", cells: []string{
			"rows = [{'i': i, 's': str(i) * 3} for i in range(60_000)]",
			"total = sum(r['i'] for r in rows)\nrows = rows[:10]",
		}, after: "print(len(rows), globals().get('total'))"},
		{name: "generators and closures", cells: []string{
			"gen = (i * i for i in range(10))\nfirst = next(gen)\ndef counter():\n    n = 0\n    def inc():\n        nonlocal n\n        n += 1\n        return n\n    return inc\ninc = counter(); inc()",
			"second = next(gen)\ninc()",
		}, after: "print(next(gen), inc())"},
		{name: "an exception kept in a variable", cells: []string{
			"try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    err = e",
			"import traceback\ntb = ''.join(traceback.format_exception(err))",
		}, after: "assert isinstance(err, ZeroDivisionError)"},
		{name: "a module written and imported", cells: []string{
			"open('/home/user/helper.py', 'w').write('VALUE = 1\\ndef twice(x): return 2 * x\\n')\nimport helper",
			"open('/home/user/helper.py', 'w').write('VALUE = 2\\n')\nimport importlib\nv = helper.VALUE",
			"helper = importlib.reload(helper)",
		}, after: "import helper; print(helper.VALUE)"},
		{name: "sys.path changed", cells: []string{
			"import os, sys\nos.makedirs('/data/lib', exist_ok=True)\nopen('/data/lib/extra.py', 'w').write('X = 5\\n')\nsys.path.append('/data/lib')",
			"import extra\ny = extra.X",
		}, after: "import extra; print(extra.X)"},
		{name: "a cell that failed", cells: []string{
			"x = 1",
			"# may fail\ny = 2\nraise ValueError('after y')",
			"z = x + y",
		}, after: "print(x)"},
		{name: "an untouched session", cells: []string{"pass"}, after: "print('ok')"},
		{name: "a large file truncated", cells: []string{
			"open('/data/big.bin', 'wb').write(bytes(range(256)) * 12000)",
			"f = open('/data/big.bin', 'r+b'); f.truncate(1000); f.close()",
		}, after: "import os; print(os.path.getsize('/data/big.bin'))"},
		{name: "many small files", cells: []string{
			"import os\nos.makedirs('/tmp/many', exist_ok=True)\nfor i in range(100): open(f'/tmp/many/{i}.txt', 'w').write(str(i))",
			"for i in range(0, 100, 2): os.remove(f'/tmp/many/{i}.txt')",
		}, after: "print(len(os.listdir('/tmp/many')))"},
		{name: "unicode names and content", cells: []string{
			"naïve = 'ünïcödé ✓'\nopen('/home/user/ünï.txt', 'w', encoding='utf-8').write(naïve)",
			"ключ = {'日本': naïve}",
		}, after: "print(open('/home/user/ünï.txt', encoding='utf-8').read())"},
		{name: "deep recursion", cells: []string{
			"def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\nd = depth(300)",
			"import json\nnested = json.loads('[' * 200 + ']' * 200)\nd2 = depth(50)",
		}, after: "print(depth(10))"},
		{name: "dates, decimals and fractions", cells: []string{
			"import datetime, decimal, fractions\nwhen = datetime.datetime(2024, 5, 17, 12, 30)\namount = decimal.Decimal('10.25')",
			"ratio = fractions.Fraction(3, 7)\ndelta = when - datetime.datetime(2024, 1, 1)",
		}, after: "print(when.isoformat())"},
		{name: "slots, inheritance and dataclasses", cells: []string{
			"from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n    y: int = 0\nclass Q(P):\n    __slots__ = ('z',)\np = P(1, 2)",
			"q = Q(3)\nq.z = 9",
		}, after: "print(p)"},
		{name: "arrays and big containers", cells: []string{
			"import array\na = array.array('d', range(100_000))",
			"s = set(range(50_000))\nd = {str(i): i for i in range(20_000)}\ndel a",
		}, after: "print(len(globals().get('s', ())))"},
		{name: "json and regex state", cells: []string{
			"import json, re\npat = re.compile(r'(\\w+)@(\\w+)')\ndoc = json.loads('{\"a\": [1, 2, {\"b\": null}]}')",
			"m = pat.findall('a@b c@d')\ndoc['a'].append(m)",
		}, after: "assert pat.match('x@y')"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			blocks := tiertest.NewBlocks()
			s := newSession(t)
			var snaps []*tier.Snapshot
			var want []string
			for _, cell := range tc.cells {
				if strings.HasPrefix(cell, "# may fail") {
					if _, err := s.Run(context.Background(), cell, tier.Stream{}); err != nil {
						t.Fatal(err)
					}
				} else {
					runCell(t, s, cell)
				}
				snaps = append(snaps, snapshotOf(t, s, blocks))
				// The probe runs after the snapshot, in the original: it must see the same state.
				want = append(want, runCell(t, s, stateProbe))
			}
			for i, snap := range snaps {
				r := restoreOf(t, snap, blocks, api.Limits{})
				if got := runCell(t, r, stateProbe); got != want[i] {
					t.Errorf("step %d: restored state differs\n got: %s\nwant: %s", i+1, got, want[i])
				}
				runCell(t, r, tc.after)
				r.Close(context.Background())
			}
		})
	}
}

// TestRestoreAfterRestore checks a chain: a restored session's own snapshots restore too, and only
// its changes are stored.
func TestRestoreAfterRestore(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, "x = 1\nopen('/home/user/f.txt', 'w').write('one')")
	r1 := restoreOf(t, snapshotOf(t, s, blocks), blocks, api.Limits{})
	runCell(t, r1, "x += 1\nopen('/home/user/g.txt', 'w').write('two')")
	_, keptBefore := blocks.Bytes()
	snap2 := snapshotOf(t, r1, blocks)
	if _, kept := blocks.Bytes(); kept-keptBefore > 1<<20 {
		t.Errorf("the first snapshot after a restore stored %d new bytes; want only the changes", kept-keptBefore)
	}
	want := runCell(t, r1, stateProbe)
	r2 := restoreOf(t, snap2, blocks, api.Limits{})
	if got := runCell(t, r2, stateProbe); got != want {
		t.Errorf("restore of a restored session's snapshot differs\n got: %s\nwant: %s", got, want)
	}
	if out := runCell(t, r2, "print(x, open('/home/user/f.txt').read(), open('/home/user/g.txt').read())"); out != "2 one two\n" {
		t.Errorf("got %q", out)
	}
}

// TestSnapshotStoresOnlyChanges checks the page-hash and file-version deltas: after a small cell, a
// snapshot stores a small share of memory, and files that did not change are not read again.
func TestSnapshotStoresOnlyChanges(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, "data = open('/home/user/big.bin', 'wb').write(b'q' * (600 << 10) + b'tail')\nx = 0")
	snapshotOf(t, s, blocks)
	given0, kept0 := blocks.Bytes()
	runCell(t, s, "x += 1")
	snap := snapshotOf(t, s, blocks)
	given1, kept1 := blocks.Bytes()
	if size := given1 - given0; size > 1<<20 || size == 0 || size%osPage != 0 {
		t.Errorf("a small cell put %d bytes; want some whole pages, well under 1 MiB, and not the unchanged file", size)
	}
	t.Logf("small cell: %d KiB put, %d KiB new; the snapshot refers to %d blocks", (given1-given0)>>10, (kept1-kept0)>>10, len(snap.Blocks))

	// Writing the file again stores it again (its version changed).
	runCell(t, s, "open('/home/user/big.bin', 'r+b').write(b'z')")
	snapshotOf(t, s, blocks)
	if given2, _ := blocks.Bytes(); given2-given1 < 600<<10 {
		t.Errorf("a changed file was not stored again: %d bytes put", given2-given1)
	}
}

// TestSnapshotDescribesState checks Variables (safe reprs, kinds, sizes), Files and OpenFiles.
func TestSnapshotDescribesState(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, `
import json, os
x = 42
text = "a" * 1000
items = list(range(5000))
def helper(): pass
class Evil:
    def __repr__(self):
        while True: pass
    def __sizeof__(self):
        raise RuntimeError("sizeof called")
    @property
    def __class__(self):
        raise RuntimeError("__class__ called")
evil = Evil()
os.makedirs("/home/user/sub", exist_ok=True)
open("/home/user/sub/n.txt", "w").write("12345")
held = open("/tmp/held.txt", "w")
held.write("x"); held.flush()
`)
	snap := snapshotOf(t, s, blocks)
	vars := map[string]api.Variable{}
	for _, v := range snap.Variables {
		vars[v.Name] = v
	}
	check := func(name, typ, kind, reprPrefix string, sized bool) {
		t.Helper()
		v, ok := vars[name]
		if !ok {
			t.Errorf("variable %s missing from %v", name, snap.Variables)
			return
		}
		if v.Type != typ || v.Kind != kind || !strings.HasPrefix(v.Repr, reprPrefix) || len(v.Repr) > 200 || (v.Size > 0) != sized {
			t.Errorf("variable %s = %+v; want type %s, kind %s, repr starting %q (≤200), sized %v", name, v, typ, kind, reprPrefix, sized)
		}
	}
	check("x", "int", "value", "42", true)
	check("text", "str", "value", "'aaaa", true)
	check("items", "list", "value", "[0, 1, 2", true)
	check("json", "module", "module", "<module 'json'>", false)
	check("helper", "function", "function", "<", false)
	check("Evil", "type", "class", "<class '__main__.Evil'>", true)
	check("evil", "__main__.Evil", "value", "<__main__.Evil object>", true)
	if v := vars["items"]; v.Size < 5000*16 { // wasm32: 16 bytes an int
		t.Errorf("items size %d; want the items counted too", v.Size)
	}
	for _, v := range snap.Variables {
		if strings.HasPrefix(v.Name, "__") {
			t.Errorf("dunder %s listed", v.Name)
		}
	}

	paths := map[string]api.FileInfo{}
	for _, f := range snap.Files {
		paths[f.Path] = f
	}
	if f, ok := paths["/home/user/sub/n.txt"]; !ok || f.Size != 5 || f.Name != "n.txt" || f.IsDir || f.ModTime == "" {
		t.Errorf("file entry %+v (present %v)", f, ok)
	}
	if f, ok := paths["/home/user/sub"]; !ok || !f.IsDir {
		t.Errorf("directory entry %+v (present %v)", f, ok)
	}
	for p := range paths {
		if strings.HasPrefix(p, "/usr") || strings.HasPrefix(p, "/dev") {
			t.Errorf("host set-up %s listed among the files", p)
		}
	}
	if !slices.Equal(snap.OpenFiles, []string{"/tmp/held.txt"}) {
		t.Errorf("OpenFiles = %v; want [/tmp/held.txt]", snap.OpenFiles)
	}
	// The probe ran no code of the program's: the session still works.
	runCell(t, s, "assert x == 42")
}

// TestSnapshotVariablesBounded checks the probe's bound on names.
func TestSnapshotVariablesBounded(t *testing.T) {
	s := newSession(t)
	runCell(t, s, "for i in range(1000): globals()[f'v{i:04d}'] = i\ndel i")
	snap := snapshotOf(t, s, tiertest.NewBlocks())
	if len(snap.Variables) != 200 || snap.Variables[0].Name != "v0000" || snap.Variables[199].Name != "v0199" {
		t.Errorf("got %d variables, %v...; want the first 200 by name", len(snap.Variables), snap.Variables[:min(3, len(snap.Variables))])
	}
}

// TestRestoreOpenFiles checks what a restore does with files the program held open: its old file
// objects fail with EBADF (they do not reach a file opened later under the same descriptor), new
// opens work, closing an old one works, and the original session is untouched.
func TestRestoreOpenFiles(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, `
w = open("/home/user/log.txt", "w")
w.write("before\n"); w.flush()
r = open("/home/user/log.txt")
fd_w, fd_r = w.fileno(), r.fileno()
`)
	snap := snapshotOf(t, s, blocks)
	if !slices.Equal(snap.OpenFiles, []string{"/home/user/log.txt"}) {
		t.Errorf("OpenFiles = %v", snap.OpenFiles)
	}
	cases := []struct {
		name, code string
	}{
		{"write to an old file fails with EBADF", `
import errno
try:
    w.write("after\n"); w.flush()
except OSError as e:
    assert e.errno == errno.EBADF, e
else:
    raise AssertionError("write through a stale file object succeeded")
`},
		{"read from an old file fails with EBADF", `
import errno
try:
    r.read()
except OSError as e:
    assert e.errno == errno.EBADF, e
else:
    raise AssertionError("read through a stale file object succeeded")
`},
		{"a new file does not take an old descriptor", `
n = open("/home/user/new.txt", "w")
assert n.fileno() not in (fd_w, fd_r), (n.fileno(), fd_w, fd_r)
n.write("fresh"); n.close()
assert open("/home/user/new.txt").read() == "fresh"
assert open("/home/user/log.txt").read() == "before\n"
`},
		{"closing an old file works", `
try:
    r.close()
except OSError:
    pass
assert r.closed
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := restoreOf(t, snap, blocks, api.Limits{})
			runCell(t, rs, tc.code)
		})
	}
	t.Run("the original keeps its files", func(t *testing.T) {
		runCell(t, s, "w.write('more\\n'); w.flush(); assert r.read() == 'before\\nmore\\n'")
	})
	t.Run("a restored session's snapshot keeps the old descriptors taken", func(t *testing.T) {
		rs := restoreOf(t, snap, blocks, api.Limits{})
		runCell(t, rs, "keep = open('/home/user/k.txt', 'w')")
		rs2 := restoreOf(t, snapshotOf(t, rs, blocks), blocks, api.Limits{})
		runCell(t, rs2, `
import errno
for f in (w, keep):
    try:
        f.write("x"); f.flush()
    except OSError as e:
        assert e.errno == errno.EBADF, e
    else:
        raise AssertionError("stale write succeeded")
`)
	})
}

// TestForkEntropy checks that restores reseed random: two forks of one step and the parent going on
// all draw different numbers.
func TestForkEntropy(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, "import random, tempfile\nrandom.seed(1234)")
	snap := snapshotOf(t, s, blocks)
	draw := "print(random.getrandbits(64), tempfile.mktemp())"
	parent := runCell(t, s, draw)
	seen := map[string]string{parent: "parent"}
	for i := range 2 {
		out := runCell(t, restoreOf(t, snap, blocks, api.Limits{}), draw)
		if who, dup := seen[out]; dup {
			t.Errorf("fork %d drew %q, as %s did", i, out, who)
		}
		seen[out] = fmt.Sprintf("fork %d", i)
	}
}

// TestRestoreCorrupt checks that a damaged block or state is reported as tier.ErrCorrupt, and that
// nothing else breaks: the engine, the original session and other snapshots go on working.
func TestRestoreCorrupt(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, "marker = 'x' * 5000\nopen('/home/user/c.txt', 'w').write('content')")
	snap := snapshotOf(t, s, blocks)
	base := shared.snap.Load()
	baseIDs, err := base.pages.blockIDs(base.mem, blocks)
	if err != nil {
		t.Fatal(err)
	}
	state, err := decodeState(snap.State)
	if err != nil {
		t.Fatal(err)
	}
	var pageBlock, fileBlockID tier.BlockID
	for i, id := range state.Pages {
		if id != 0 && (i >= len(baseIDs) || baseIDs[i] != id) {
			pageBlock = id
			break
		}
	}
	for _, f := range state.Files {
		if f.Path == "/home/user/c.txt" {
			fileBlockID = f.Blocks[0]
		}
	}
	if pageBlock == 0 || fileBlockID == 0 {
		t.Fatalf("no page differing from the image (%d) or no file block (%d)", pageBlock, fileBlockID)
	}
	sessionsBefore := sessionCount(shared)

	cases := []struct {
		name   string
		snap   func() *tier.Snapshot
		damage func(b *tiertest.Blocks)
	}{
		{"memory page block damaged", func() *tier.Snapshot { return snap }, func(b *tiertest.Blocks) { b.Corrupt(pageBlock) }},
		{"memory page block missing", func() *tier.Snapshot { return snap }, func(b *tiertest.Blocks) { b.Drop(pageBlock) }},
		{"memory page block of the wrong size", func() *tier.Snapshot { return snap }, func(b *tiertest.Blocks) { b.Replace(pageBlock, []byte("short")) }},
		{"file block damaged", func() *tier.Snapshot { return snap }, func(b *tiertest.Blocks) { b.Corrupt(fileBlockID) }},
		{"file block of the wrong size", func() *tier.Snapshot { return snap }, func(b *tiertest.Blocks) { b.Replace(fileBlockID, []byte("longer content")) }},
		{"state bytes", func() *tier.Snapshot {
			c := *snap
			c.State = slices.Clone(snap.State)
			c.State[len(c.State)/2] ^= 0xff
			return &c
		}, nil},
		{"truncated state", func() *tier.Snapshot {
			c := *snap
			c.State = snap.State[:len(snap.State)-3]
			return &c
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			damaged := blocks.Clone() // the other cases keep their blocks
			if tc.damage != nil {
				tc.damage(damaged)
			}
			_, err := shared.Restore(context.Background(), tc.snap(), damaged, api.Limits{})
			if !errors.Is(err, tier.ErrCorrupt) {
				t.Fatalf("Restore = %v; want an error wrapping tier.ErrCorrupt", err)
			}
		})
	}
	if n := sessionCount(shared); n != sessionsBefore {
		t.Errorf("%d sessions open after failed restores, %d before", n, sessionsBefore)
	}
	r := restoreOf(t, snap, blocks, api.Limits{})
	runCell(t, r, "assert len(marker) == 5000 and open('/home/user/c.txt').read() == 'content'")
	runCell(t, s, "assert len(marker) == 5000")
}

func sessionCount(e *Engine) int {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	return len(e.sessions)
}

// TestRestoreLimits checks that a restore takes the limits it is given, not the original's, and
// refuses limits the snapshot's memory does not fit in.
func TestRestoreLimits(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, "keep = bytearray(40 << 20)\nx = 5")
	snap := snapshotOf(t, s, blocks)

	t.Run("a tighter memory limit applies", func(t *testing.T) {
		r := restoreOf(t, snap, blocks, api.Limits{MemoryLimitMB: 80})
		runCell(t, r, "assert x == 5 and len(keep) == 40 << 20")
		res, err := r.Run(context.Background(), "more = bytearray(60 << 20)", tier.Stream{})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != api.ExitMemory || !res.MemoryExceeded {
			t.Errorf("60 MiB more under an 80 MiB limit: exit %d, memory exceeded %v", res.ExitCode, res.MemoryExceeded)
		}
	})
	t.Run("a shorter timeout applies", func(t *testing.T) {
		r := restoreOf(t, snap, blocks, api.Limits{TimeoutMS: 300})
		res, err := r.Run(context.Background(), "while True: pass", tier.Stream{})
		if err != nil {
			t.Fatal(err)
		}
		if !res.TimedOut {
			t.Errorf("a loop under a 300 ms limit: %+v", res)
		}
	})
	t.Run("a memory limit below the snapshot's memory is refused", func(t *testing.T) {
		_, err := shared.Restore(context.Background(), snap, blocks, api.Limits{MemoryLimitMB: 40})
		if errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Errorf("Restore with 40 MiB = %v; want invalid argument", err)
		}
	})
}

// TestRestoreRefusesForeignState checks what Restore does with snapshots it cannot use.
func TestRestoreRefusesForeignState(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	snap := snapshotOf(t, s, blocks)
	state, err := decodeState(snap.State)
	if err != nil {
		t.Fatal(err)
	}
	state.Key = "another build"
	other := *snap
	other.State = state.encode()
	heavy := *snap
	heavy.Tier = api.TierHeavy
	cases := []struct {
		name  string
		snap  *tier.Snapshot
		class *errdefs.Class
	}{
		{"another interpreter build", &other, errdefs.Conflict},
		{"another tier", &heavy, errdefs.InvalidArgument},
		{"no snapshot", nil, errdefs.InvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := shared.Restore(context.Background(), tc.snap, blocks, api.Limits{})
			if errdefs.ClassOf(err) != tc.class {
				t.Errorf("Restore = %v (%v); want %v", err, errdefs.ClassOf(err), tc.class)
			}
		})
	}
}

// TestStateEncoding round-trips a state and checks that damaged encodings are refused.
func TestStateEncoding(t *testing.T) {
	st := &nanoState{Key: "k", MemSize: 3 * wasmPage, SP: 12345, Cwd: "/tmp", FDs: []int{4, 9},
		Pages: []tier.BlockID{1, 2, 3, 0, 0, 7, 7, 1 << 40, 5},
		Files: []fileRecord{{Path: "/tmp/a", Mode: 0o644, Mtime: -5, Atime: 9, Size: 3, Blocks: []tier.BlockID{4}},
			{Path: "/tmp/l", Mode: 0o777 | 1<<27, Target: "/tmp/a"}, {Path: "/tmp/h", Mode: 0o644, LinkOf: "/tmp/a"}}}
	st.Pages = append(st.Pages, make([]tier.BlockID, 3*wasmPage/osPage-len(st.Pages))...)
	enc := st.encode()
	got, err := decodeState(enc)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(st) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, st)
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"magic only", []byte(stateMagic)},
		{"truncated", enc[:len(enc)-1]},
		{"not zstd", append([]byte(stateMagic), "garbage"...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeState(tc.b); !errors.Is(err, tier.ErrCorrupt) {
				t.Errorf("decodeState = %v; want tier.ErrCorrupt", err)
			}
		})
	}
}

// TestPageCache checks the cache of snapshot pages: copies by store and id, the oldest replaced
// when full, nothing kept when off or for a wrong-sized page.
func TestPageCache(t *testing.T) {
	page := func(b byte) []byte { return slices.Repeat([]byte{b}, osPage) }
	a, b := tiertest.NewBlocks(), tiertest.NewBlocks()
	c := newPageCache(2)
	c.put(a, 1, page(1), xxh3.Hash128(page(1)))
	c.put(b, 1, page(2), xxh3.Hash128(page(2)))
	c.put(a, 2, []byte("short"), xxh3.Uint128{})
	dst := make([]byte, osPage)
	cases := []struct {
		name   string
		blocks tier.Blocks
		id     tier.BlockID
		want   []byte // nil: a miss
	}{
		{"kept", a, 1, page(1)},
		{"another store's block of the same id", b, 1, page(2)},
		{"a wrong-sized page is not kept", a, 2, nil},
		{"never put", a, 3, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sum, ok := c.get(tc.blocks, tc.id, dst)
			if ok != (tc.want != nil) || ok && (!slices.Equal(dst, tc.want) || sum != xxh3.Hash128(tc.want)) {
				t.Errorf("get = %v (first byte %d); want %v", ok, dst[0], tc.want != nil)
			}
		})
	}
	t.Run("the oldest is replaced when full", func(t *testing.T) {
		c.put(a, 4, page(4), xxh3.Hash128(page(4)))
		if _, ok := c.get(a, 1, dst); ok {
			t.Error("the oldest page is still there")
		}
		if _, ok := c.get(b, 1, dst); !ok || dst[0] != 2 {
			t.Error("the newer page of b is not")
		}
		if _, ok := c.get(a, 4, dst); !ok || dst[0] != 4 {
			t.Error("the newest page is not")
		}
	})
	t.Run("off", func(t *testing.T) {
		off := newPageCache(0)
		off.put(a, 1, page(1), xxh3.Hash128(page(1)))
		if _, ok := off.get(a, 1, dst); ok {
			t.Error("a cache of no pages kept one")
		}
	})
}

// TestConcurrentSnapshots runs sessions that snapshot and restore at once into one store (the start-up
// image's blocks, the page cache and the store are shared): each restore shows its own session's state.
func TestConcurrentSnapshots(t *testing.T) {
	blocks := tiertest.NewBlocks()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			s, err := shared.NewSession(ctx, api.Limits{}, nil)
			if err != nil {
				errs <- err
				return
			}
			defer s.Close(ctx)
			for step := range 3 {
				code := fmt.Sprintf("v = %d\nopen('/tmp/g.txt', 'w').write('g%d-%d')", g*100+step, g, step)
				if res, err := s.Run(ctx, code, tier.Stream{}); err != nil || res.ExitCode != 0 {
					errs <- fmt.Errorf("run: %v %+v", err, res)
					return
				}
				snap, err := s.(tier.Snapshotter).Snapshot(ctx, blocks)
				if err != nil {
					errs <- err
					return
				}
				r, err := shared.Restore(ctx, snap, blocks, api.Limits{})
				if err != nil {
					errs <- err
					return
				}
				res, err := r.Run(ctx, "print(v, open('/tmp/g.txt').read())", tier.Stream{})
				r.Close(ctx)
				if want := fmt.Sprintf("%d g%d-%d\n", g*100+step, g, step); err != nil || res.Stdout != want {
					errs <- fmt.Errorf("restored session %d step %d: %v %q, want %q", g, step, err, res.Stdout, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// failingBlocks is a store that fills up: while room is not negative, Puts past room fail, as
// on a full disk.
type failingBlocks struct {
	*tiertest.Blocks
	room atomic.Int64
}

func (f *failingBlocks) Put(data []byte) (tier.BlockID, error) {
	if f.room.Load() >= 0 && f.room.Add(-1) < 0 {
		return 0, errors.New("no space left on device")
	}
	return f.Blocks.Put(data)
}

// TestSnapshotFailureLosesNothing checks a snapshot that fails part-way (the store fills up after
// room blocks): the error is returned, the session goes on as it was, and the next snapshot stores
// everything that changed since the last good one, so that it restores exactly.
func TestSnapshotFailureLosesNothing(t *testing.T) {
	for _, room := range []int64{0, 3, 100, 200, 300} {
		t.Run(fmt.Sprintf("full after %d blocks", room), func(t *testing.T) {
			blocks := &failingBlocks{Blocks: tiertest.NewBlocks()}
			blocks.room.Store(-1)
			s := newSession(t)
			runCell(t, s, "x = 1\nopen('/home/user/a.txt', 'w').write('one')")
			snapshotOf(t, s, blocks)
			runCell(t, s, "x = 2\nimport hashlib\nbig = hashlib.sha256(b'seed').digest() * 32768\nopen('/home/user/a.txt', 'w').write('two')")
			blocks.room.Store(room)
			if _, err := s.(tier.Snapshotter).Snapshot(context.Background(), blocks); err == nil {
				t.Fatal("a snapshot into a full store succeeded")
			}
			blocks.room.Store(-1)
			runCell(t, s, "x += 1")
			snap := snapshotOf(t, s, blocks)
			check := "print(x, len(big), hashlib.sha256(big).hexdigest()[:16], open('/home/user/a.txt').read())"
			want := runCell(t, s, check)
			r := restoreOf(t, snap, blocks, api.Limits{})
			if got := runCell(t, r, check); got != want {
				t.Errorf("after a failed snapshot, the next one restores %q; want %q", got, want)
			}
		})
	}
}

// txView is a tier.View over a tiertest.Blocks, one per snapshot as a store's transaction is.
type txView struct {
	*tiertest.Blocks
	refused *atomic.Int32 // Holds that found a block gone
}

func (v *txView) Store() tier.Blocks { return v.Blocks }

func (v *txView) Hold(ids []tier.BlockID) bool {
	for _, id := range ids {
		if _, err := v.Get(nil, id); err != nil {
			v.refused.Add(1)
			return false
		}
	}
	return true
}

// TestSnapshotThroughViews checks snapshots taken through a new view of one store each time (as
// dispatch does with transactions): deltas carry over from view to view, and when the store has
// dropped blocks the session's deltas name (retention), the next snapshot stores them again and
// restores exactly.
func TestSnapshotThroughViews(t *testing.T) {
	store := tiertest.NewBlocks()
	var refused atomic.Int32
	view := func() tier.Blocks { return &txView{Blocks: store, refused: &refused} }
	s := newSession(t)
	runCell(t, s, "x = 1\nkeep = bytes(range(256)) * 4000\nopen('/home/user/a.txt', 'w').write('one')")
	first := snapshotOf(t, s, view())
	given0, _ := store.Bytes()
	runCell(t, s, "x += 1")
	snapshotOf(t, s, view())
	if given1, _ := store.Bytes(); given1-given0 > 1<<20 {
		t.Errorf("the second view's snapshot put %d bytes; want only the changes", given1-given0)
	}
	if refused.Load() != 0 {
		t.Fatalf("Hold refused %d times with nothing dropped", refused.Load())
	}

	// Retention drops blocks of the first snapshot: some pages of keep and the file.
	state, err := decodeState(first.State)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range state.Files {
		if f.Path == "/home/user/a.txt" {
			store.Free(f.Blocks[0])
		}
	}
	for i := len(state.Pages) - 1; i >= 0 && i > len(state.Pages)-50; i-- {
		if id := state.Pages[i]; id != 0 {
			store.Free(id)
		}
	}
	runCell(t, s, "x += 1")
	snap := snapshotOf(t, s, view())
	if refused.Load() == 0 {
		t.Error("no Hold found the dropped blocks")
	}
	want := runCell(t, s, stateProbe)
	r := restoreOf(t, snap, view(), api.Limits{})
	if got := runCell(t, r, stateProbe); got != want {
		t.Errorf("after dropped blocks the snapshot restores differently\n got: %s\nwant: %s", got, want)
	}
	runCell(t, r, "assert x == 3 and keep == bytes(range(256)) * 4000 and open('/home/user/a.txt').read() == 'one'")
}

// TestSnapshotAndRestoreStopWithTheirContext checks that a cancelled context stops both, leaving
// the session and the engine as they were.
func TestSnapshotAndRestoreStopWithTheirContext(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, "x = 7")
	snap := snapshotOf(t, s, blocks)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.(tier.Snapshotter).Snapshot(ctx, blocks); !errors.Is(err, context.Canceled) {
		t.Errorf("Snapshot with a cancelled context = %v", err)
	}
	before := sessionCount(shared)
	if _, err := shared.Restore(ctx, snap, blocks, api.Limits{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Restore with a cancelled context = %v", err)
	}
	if n := sessionCount(shared); n != before {
		t.Errorf("%d sessions after a cancelled restore, %d before", n, before)
	}
	runCell(t, s, "assert x == 7")
	runCell(t, restoreOf(t, snapshotOf(t, s, blocks), blocks, api.Limits{}), "assert x == 7")
}

// TestRestoreAfterRotation checks a snapshot taken over one start-up image restored after the engine
// moved to another (rotation): pages that differ from the new image come from the store, and the
// session made over the old image goes on snapshotting.
func TestRestoreAfterRotation(t *testing.T) {
	blocks := tiertest.NewBlocks()
	s := newSession(t)
	runCell(t, s, "x = 'before rotation'\nopen('/tmp/r.txt', 'w').write('r')\nh = hash('abc')")
	snap := snapshotOf(t, s, blocks)
	want := runCell(t, s, stateProbe)
	next, err := shared.makeSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	shared.snap.Store(next)
	r := restoreOf(t, snap, blocks, api.Limits{})
	if got := runCell(t, r, stateProbe); got != want {
		t.Errorf("restored over a new image\n got: %s\nwant: %s", got, want)
	}
	// The str-hash secret is the snapshot's (it lives in memory), so hashes still agree.
	runCell(t, r, "assert h == hash('abc')")
	runCell(t, s, "x += '!'")
	r2 := restoreOf(t, snapshotOf(t, s, blocks), blocks, api.Limits{})
	runCell(t, r2, "assert x == 'before rotation!' and h == hash('abc')")
}

// TestSnapshotProbeIsBounded checks that what the probe describes cannot make it long: deep and
// wide nesting, many names, huge values.
func TestSnapshotProbeIsBounded(t *testing.T) {
	s := newSession(t)
	runCell(t, s, `
wide = [[[[()] * 60] * 60] * 60] * 60
for i in range(200): globals()[f"w{i:03d}"] = wide
huge = 10 ** 5000
blob = b"x" * (5 << 20)
self_ref = []; self_ref.append(self_ref)
del i
`)
	start := time.Now()
	snap := snapshotOf(t, s, tiertest.NewBlocks())
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the probe took %v", d)
	}
	for _, v := range snap.Variables {
		if len(v.Repr) > 200 {
			t.Errorf("%s: repr of %d characters", v.Name, len(v.Repr))
		}
		if v.Name == "huge" && v.Repr != "<int of 16610 bits>" {
			t.Errorf("huge = %q", v.Repr)
		}
	}
}

// TestSnapshotPageHashesMatchMemory: a snapshot hashes only the pages that are private copies and
// takes the start-up image's hashes for the others; the hashes it keeps must be those of the memory
// as it is, page for page, in a new session, after the memory grows, and in a session restored
// from a step (whose unchanged pages were never written).
func TestSnapshotPageHashesMatchMemory(t *testing.T) {
	blocks := tiertest.NewBlocks()
	check := func(t *testing.T, s tier.Session) {
		t.Helper()
		snapshotOf(t, s, blocks)
		ss := s.(*session)
		ss.mu.Lock()
		defer ss.mu.Unlock()
		size := int(ss.inst.mod.Memory().Size())
		mem := ss.inst.mem.bytes(size)
		if len(ss.steps.hashes) != size/osPage {
			t.Fatalf("%d page hashes for %d pages", len(ss.steps.hashes), size/osPage)
		}
		wrong := 0
		for i, h := range ss.steps.hashes {
			if h != xxh3.Hash128(mem[i*osPage:(i+1)*osPage]) {
				wrong++
			}
		}
		if wrong > 0 {
			t.Fatalf("%d of %d page hashes are not those of the memory", wrong, len(ss.steps.hashes))
		}
	}
	s := newSession(t)
	runCell(t, s, "x = 40")
	check(t, s)
	runCell(t, s, "big = bytearray(32 << 20); big[-1] = 1; x += 1")
	check(t, s)
	snap := snapshotOf(t, s, blocks)
	r := restoreOf(t, snap, blocks, api.Limits{})
	check(t, r)
	runCell(t, r, "del big; x += 1")
	check(t, r)
	if got := runCell(t, r, "print(x)"); got != "42\n" {
		t.Fatalf("restored session printed %q", got)
	}
}
