package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/tier/tiertest"
)

// cell runs code in a session and fails the test unless it succeeded.
func cell(t testing.TB, s tier.Session, code string) string {
	t.Helper()
	res, err := s.Run(context.Background(), code, tier.Stream{})
	if err != nil {
		t.Fatalf("Run(%q): %v", code, err)
	}
	if res.ExitCode != 0 || res.Error != nil {
		t.Fatalf("Run(%q): exit %d, %+v, stderr %s", code, res.ExitCode, res.Error, res.Stderr)
	}
	return res.Stdout
}

func snapshot(t testing.TB, s tier.Session, blocks tier.Blocks) *tier.Snapshot {
	t.Helper()
	snap, err := s.(tier.Snapshotter).Snapshot(context.Background(), blocks)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return snap
}

// The steps of the scripted session: each changes variables, imports, files and the cwd.
var ttSteps = []string{
	"import os, random\nx = 1\nos.makedirs('/home/user/work', exist_ok=True)\nos.chdir('/home/user/work')\nopen('/tmp/a.txt', 'w').write('step1')\nlog = open('/tmp/log.txt', 'w')\nlog.write('one\\n')",
	"import numpy as np\nx = 2\narr = np.arange(5)\nopen('/tmp/a.txt', 'w').write('step2')\nopen('/home/user/b.txt', 'w').write('b2')\nos.chdir('/tmp')\ndef f():\n    return 42",
	"import json\nx = 3\ndel arr\nos.remove('/home/user/b.txt')\nopen('/tmp/a.txt', 'w').write('step3')\nos.chdir('/home/user')",
}

// stepProbe prints what the integrity checks compare: variables, imports, files, cwd and a function.
const stepProbe = `import os
g = globals()
print(x, 'arr' in g, sorted(k for k in ('np', 'json', 'f', 'random') if k in g), open('/tmp/a.txt').read(),
      open('/home/user/b.txt').read() if os.path.exists('/home/user/b.txt') else None, os.getcwd(),
      g['f']() if 'f' in g else None)`

// randomProbe draws from the stdlib's and numpy's global generators.
const randomProbe = "print(random.random(), float(np.random.rand()))"

func variable(snap *tier.Snapshot, name string) *api.Variable {
	for i := range snap.Variables {
		if snap.Variables[i].Name == name {
			return &snap.Variables[i]
		}
	}
	return nil
}

func hasFile(snap *tier.Snapshot, path string) bool {
	for _, f := range snap.Files {
		if f.Path == path {
			return true
		}
	}
	return false
}

// TestStepSnapshotAndRestore: a session snapshotted after steps 1..3; step 2 restored into new
// sandboxes has step 2's variables, imports, files and cwd, fresh random numbers, the limits asked
// for, and leaves the original untouched; a corrupt block fails the restore with ErrCorrupt.
func TestStepSnapshotAndRestore(t *testing.T) {
	ctx := context.Background()
	blocks := tiertest.NewBlocks()
	orig, err := eng.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close(ctx)
	var snaps []*tier.Snapshot
	var step3Random string
	for i, code := range ttSteps {
		cell(t, orig, code)
		if i == 2 {
			// The original's generators continue from step 2's state: a restore of step 2 that
			// did not reseed would draw these same numbers.
			step3Random = cell(t, orig, randomProbe)
		}
		snaps = append(snaps, snapshot(t, orig, blocks))
		st, ok := heavy.LastSnapshot(orig)
		if !ok || st.ImageBytes == 0 || st.Checkpoint <= 0 {
			t.Fatalf("step %d: LastSnapshot %+v %v", i+1, st, ok)
		}
		t.Logf("step %d: checkpoint %v, total %v, image %.1f MiB, %d unique blocks", i+1, st.Checkpoint, st.Total, float64(st.ImageBytes)/(1<<20), len(snaps[i].Blocks))
	}
	snap2 := snaps[1]

	t.Run("inspection describes the state after the step", func(t *testing.T) {
		want := map[string][2]string{"x": {"int", "value"}, "np": {"module", "module"}, "f": {"function", "function"}, "arr": {"numpy.ndarray", "value"}}
		for name, tk := range want {
			v := variable(snap2, name)
			if v == nil || v.Type != tk[0] || v.Kind != tk[1] {
				t.Fatalf("variable %s: %+v, want type %s kind %s (all: %+v)", name, v, tk[0], tk[1], snap2.Variables)
			}
		}
		if v := variable(snap2, "x"); v.Repr != "2" || v.Size == 0 {
			t.Fatalf("x: %+v", v)
		}
		if v := variable(snap2, "arr"); !strings.Contains(v.Repr, "array([0, 1, 2, 3, 4])") || v.Size < 40 {
			t.Fatalf("arr: %+v", v)
		}
		if variable(snap2, "json") != nil || variable(snaps[2], "json") == nil || variable(snaps[2], "arr") != nil {
			t.Fatalf("json/arr in the wrong steps: %+v / %+v", snap2.Variables, snaps[2].Variables)
		}
		if !hasFile(snap2, "/tmp/a.txt") || !hasFile(snap2, "/home/user/b.txt") || !hasFile(snap2, "/home/user/work") || hasFile(snaps[2], "/home/user/b.txt") {
			t.Fatalf("files: step 2 %+v; step 3 %+v", snap2.Files, snaps[2].Files)
		}
	})

	restored, err := eng.Restore(ctx, snap2, blocks, api.Limits{})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer restored.Close(ctx)

	t.Run("variables, imports, files and cwd are step 2's", func(t *testing.T) {
		got := cell(t, restored, stepProbe)
		if want := "2 True ['f', 'np', 'random'] step2 b2 /tmp 42\n"; got != want {
			t.Fatalf("restored step 2: %q, want %q", got, want)
		}
	})

	t.Run("files left open stay open", func(t *testing.T) {
		got := cell(t, restored, "log.write('two\\n')\nlog.close()\nprint(open('/tmp/log.txt').read(), end='')")
		if got != "one\ntwo\n" {
			t.Fatalf("a file open since step 1, written after the restore: %q", got)
		}
	})

	t.Run("random numbers differ from the parent's", func(t *testing.T) {
		got := cell(t, restored, randomProbe)
		if got == step3Random {
			t.Fatalf("the restored sandbox drew the parent's numbers again: %q", got)
		}
		other, err := eng.Restore(ctx, snap2, blocks, api.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close(ctx)
		if again := cell(t, other, randomProbe); again == got || again == step3Random {
			t.Fatalf("two restores of one step drew the same numbers: %q, %q, parent %q", got, again, step3Random)
		}
	})

	t.Run("the original goes on untouched", func(t *testing.T) {
		cell(t, restored, "open('/tmp/a.txt', 'w').write('restored')\nx = 99")
		got := cell(t, orig, stepProbe)
		if want := "3 False ['f', 'json', 'np', 'random'] step3 None /home/user 42\n"; got != want {
			t.Fatalf("original after the restore: %q, want %q", got, want)
		}
	})

	t.Run("a restored session snapshots and restores again", func(t *testing.T) {
		cell(t, restored, "y = x + 1")
		again, err := eng.Restore(ctx, snapshot(t, restored, blocks), blocks, api.Limits{})
		if err != nil {
			t.Fatalf("Restore of a restored session's step: %v", err)
		}
		defer again.Close(ctx)
		if got := cell(t, again, "print(x, y, open('/tmp/a.txt').read())"); got != "99 100 restored\n" {
			t.Fatalf("%q", got)
		}
	})

	t.Run("restore step 1 and step 3", func(t *testing.T) {
		for i, want := range map[int]string{
			0: "1 False ['random'] step1 None /home/user/work None\n",
			2: "3 False ['f', 'json', 'np', 'random'] step3 None /home/user 42\n",
		} {
			s, err := eng.Restore(ctx, snaps[i], blocks, api.Limits{})
			if err != nil {
				t.Fatalf("Restore step %d: %v", i+1, err)
			}
			got := cell(t, s, stepProbe)
			s.Close(ctx)
			if got != want {
				t.Fatalf("step %d: %q, want %q", i+1, got, want)
			}
		}
	})

	t.Run("restore with other limits", func(t *testing.T) {
		s, err := eng.Restore(ctx, snap2, blocks, api.Limits{TimeoutMS: 1500, MemoryLimitMB: 512})
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		defer s.Close(ctx)
		if got := cell(t, s, "print(x)"); got != "2\n" {
			t.Fatalf("%q", got)
		}
		res, err := s.Run(ctx, "import time\ntime.sleep(20)", tier.Stream{})
		if err != nil || !res.TimedOut {
			t.Fatalf("a 20 s sleep under a 1.5 s limit: %v %+v", err, res)
		}
		s2, err := eng.Restore(ctx, snap2, blocks, api.Limits{MemoryLimitMB: 512})
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		defer s2.Close(ctx)
		// 700 MiB fit the original's 1024 MiB, not the restored sandbox's 512.
		res, err = s2.Run(ctx, "b = b'x' * (700 << 20)\nprint(len(b))", tier.Stream{})
		if err != nil || !res.MemoryExceeded {
			t.Fatalf("700 MiB under a 512 MiB limit: %v %+v", err, res)
		}
	})

	t.Run("a corrupt block fails the restore", func(t *testing.T) {
		bad := blocks.Clone()
		bad.Corrupt(snap2.Blocks[len(snap2.Blocks)/2])
		_, err := eng.Restore(ctx, snap2, bad, api.Limits{})
		if !errors.Is(err, tier.ErrCorrupt) {
			t.Fatalf("Restore with a corrupt block: %v, want ErrCorrupt", err)
		}
		// Nothing else broke: the slot came back, the good blocks restore, the original runs.
		s, err := eng.Restore(ctx, snap2, blocks, api.Limits{})
		if err != nil {
			t.Fatalf("Restore after the corrupt one: %v", err)
		}
		defer s.Close(ctx)
		if got := cell(t, s, "print(x)"); got != "2\n" {
			t.Fatalf("%q", got)
		}
		if got := cell(t, orig, "print(x)"); got != "3\n" {
			t.Fatalf("original: %q", got)
		}
	})

	t.Run("bad snapshots are refused", func(t *testing.T) {
		cases := []struct {
			name  string
			snap  *tier.Snapshot
			class *errdefs.Class
			is    error
		}{
			{"nil", nil, errdefs.InvalidArgument, nil},
			{"another tier", &tier.Snapshot{Tier: api.TierNano, State: snap2.State}, errdefs.InvalidArgument, nil},
			{"unreadable state", &tier.Snapshot{Tier: api.TierHeavy, State: []byte("{")}, nil, tier.ErrCorrupt},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				_, err := eng.Restore(ctx, c.snap, blocks, api.Limits{})
				if err == nil || c.class != nil && errdefs.ClassOf(err) != c.class || c.is != nil && !errors.Is(err, c.is) {
					t.Fatalf("%v (class %v)", err, errdefs.ClassOf(err))
				}
			})
		}
	})
}

// TestRestoreInAnotherEngine: a snapshot restores in another engine of the same configuration (a
// server restarted on its state root, whose agent files are written anew), and is refused with a
// clear error, before runsc is asked, by one whose sandboxes' spec differs where runsc checks it
// against the image (gVisor #10673; here the tmpfs size).
func TestRestoreInAnotherEngine(t *testing.T) {
	ctx := context.Background()
	blocks := tiertest.NewBlocks()
	orig, err := eng.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close(ctx)
	cell(t, orig, "x = 5\nopen('/home/user/f', 'w').write('kept')")
	snap := snapshot(t, orig, blocks)
	cases := []struct {
		name   string
		diskMB int
		want   string // the restored probe's output, or "" for a refusal
	}{
		{"same configuration", 64, "5 kept\n"},
		{"other tmpfs size", 32, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			other, err := heavy.New(ctx, heavy.Config{PoolSize: -1, DiskMB: c.diskMB})
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close(ctx)
			s, err := other.Restore(ctx, snap, blocks, api.Limits{})
			if c.want == "" {
				if err == nil || errdefs.ClassOf(err) != errdefs.Unavailable || !strings.Contains(err.Error(), "another sandbox configuration (mounts:") {
					t.Fatalf("Restore under another spec: %v, want a refusal naming the mounts", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			defer s.Close(ctx)
			if got := cell(t, s, "print(x, open('/home/user/f').read())"); got != c.want {
				t.Fatalf("%q, want %q", got, c.want)
			}
		})
	}
}

// TestSnapshotFaults: a snapshot that fails, or is refused, leaves the session running as it was:
// guest reprs that hang or raise, a cancelled context, a full disk under the scratch image; a closed
// session's snapshot is ErrGone.
func TestSnapshotFaults(t *testing.T) {
	ctx := context.Background()
	stateDir := t.TempDir()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: -1, DiskMB: 64, StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	s, err := e.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	blocks := tiertest.NewBlocks()
	cell(t, s, "x = 1")

	t.Run("reprs that hang or raise", func(t *testing.T) {
		cell(t, s, "import time\nclass Bad:\n    def __repr__(self): raise ValueError('no')\nclass Slow:\n    def __repr__(self):\n        time.sleep(60)\n        return 'slow'\nbad, slow = Bad(), Slow()")
		snap := snapshot(t, s, blocks)
		if v := variable(snap, "bad"); v == nil || !strings.HasPrefix(v.Repr, "<Bad instance at 0x") {
			t.Fatalf("bad: %+v", v)
		}
		if v := variable(snap, "slow"); v == nil || v.Repr != "<not inspected: out of time>" {
			t.Fatalf("slow: %+v", v)
		}
		if v := variable(snap, "x"); v == nil || v.Repr != "1" {
			t.Fatalf("x: %+v", v)
		}
		if got := cell(t, s, "print(x)"); got != "1\n" {
			t.Fatalf("after the snapshot: %q", got)
		}
		cell(t, s, "del bad, slow")
	})

	t.Run("a cancelled context", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.(tier.Snapshotter).Snapshot(cctx, blocks); !errors.Is(err, context.Canceled) {
			t.Fatalf("Snapshot with a cancelled context: %v", err)
		}
		if got := cell(t, s, "print(x)"); got != "1\n" {
			t.Fatalf("after the cancelled snapshot: %q", got)
		}
	})

	t.Run("a full disk under the scratch image", func(t *testing.T) {
		steps := filepath.Join(stateDir, "steps")
		if err := os.MkdirAll(steps, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", steps).CombinedOutput(); err != nil {
			t.Fatalf("mount: %v: %s", err, out)
		}
		_, err := s.(tier.Snapshotter).Snapshot(ctx, blocks)
		left, _ := os.ReadDir(steps)
		// Lazily: gVisor keeps the file its failed save was writing open (deleted) for a while.
		if out, err := exec.Command("umount", "-l", steps).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v: %s", err, out)
		}
		t.Logf("snapshot on a full disk: %v", err)
		if err == nil || !strings.Contains(err.Error(), "runsc checkpoint") {
			t.Fatalf("Snapshot on a full disk: %v", err)
		}
		if len(left) != 0 {
			t.Fatalf("the failed snapshot left %v", left)
		}
		if got := cell(t, s, "x += 1\nprint(x)"); got != "2\n" {
			t.Fatalf("after the failed snapshot: %q", got)
		}
		snap := snapshot(t, s, blocks)
		r, err := e.Restore(ctx, snap, blocks, api.Limits{})
		if err != nil {
			t.Fatalf("Restore after the disk was freed: %v", err)
		}
		defer r.Close(ctx)
		if got := cell(t, r, "print(x)"); got != "2\n" {
			t.Fatalf("restored: %q", got)
		}
	})

	t.Run("a closed session", func(t *testing.T) {
		s.Close(ctx)
		_, err := s.(tier.Snapshotter).Snapshot(ctx, blocks)
		if !errors.Is(err, tier.ErrGone) || errdefs.ClassOf(err) != errdefs.NotFound {
			t.Fatalf("Snapshot of a closed session: %v", err)
		}
	})
}
