package integration

import (
	"context"
	"errors"
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
	"import os, random\nx = 1\nos.makedirs('/home/user/work', exist_ok=True)\nos.chdir('/home/user/work')\nopen('/tmp/a.txt', 'w').write('step1')",
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
