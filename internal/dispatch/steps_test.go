package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

func openStore(t *testing.T, dir string, ret snapstore.Retention) *snapstore.Store {
	t.Helper()
	st, err := snapstore.Open(snapstore.Config{Dir: dir, Retention: ret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// toyDispatcher is a dispatcher over toy tiers (heavy nil: none) and a store in a temp dir.
func toyDispatcher(t *testing.T, nano, heavy *toyEngine, ret snapstore.Retention) (*Dispatcher, *snapstore.Store) {
	t.Helper()
	st := openStore(t, t.TempDir(), ret)
	cfg := Config{Snapshots: st, MemoryBudgetMB: -1}
	if heavy != nil {
		cfg.Heavy = heavy
	}
	d := New(nano, cfg)
	t.Cleanup(d.Close)
	return d, st
}

// settle waits for the session's pending snapshot and for the store to write it.
func settle(t *testing.T, s *Session, st *snapstore.Store) {
	t.Helper()
	if _, err := s.waitSnapshot(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st != nil {
		st.Flush()
	}
}

func run(t *testing.T, s *Session, code string) *api.Result {
	t.Helper()
	res, err := s.Run(context.Background(), code, Output{})
	if err != nil {
		t.Fatalf("%q: %v", code, err)
	}
	return res
}

func probe(t *testing.T, s *Session) string {
	t.Helper()
	return run(t, s, "probe").Stdout
}

func TestStepLogRecordsEveryStep(t *testing.T) {
	d, st := toyDispatcher(t, &toyEngine{name: api.TierNano}, nil, snapstore.Retention{})
	ctx := context.Background()
	s, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s, "x = 1\nprint x")
	if err := s.WriteFile(ctx, "/data/in.txt", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	run(t, s, "fail")
	settle(t, s, st)
	list := s.Steps()
	want := []struct {
		kind   api.StepKind
		parent int
	}{{api.StepStart, -1}, {api.StepCell, 0}, {api.StepUpload, 1}, {api.StepCell, 2}}
	if len(list.Steps) != len(want) || list.Current != 3 {
		t.Fatalf("%d steps, current %d", len(list.Steps), list.Current)
	}
	for i, w := range want {
		got := list.Steps[i]
		if got.N != i || got.Kind != w.kind || got.Parent != w.parent || got.Snapshot.State != api.SnapshotStored ||
			!got.Snapshot.Restorable || got.Snapshot.RestoreBy != api.RestoreBySnapshot || got.Snapshot.Bytes <= 0 || got.Tier != api.TierNano {
			t.Errorf("step %d: %+v", i, got)
		}
	}
	if c := list.Steps[1]; c.Code != "x = 1\nprint x" || c.StdoutHead != "1\n" {
		t.Errorf("cell step %+v", c)
	}
	if u := list.Steps[2]; u.Path != "/data/in.txt" {
		t.Errorf("upload step %+v", u)
	}
	if f := list.Steps[3]; f.ExitCode != 1 || f.ErrorType != "ValueError" {
		t.Errorf("failed step %+v", f)
	}
	if info := s.Info(); info.Steps != 4 || info.CurrentStep != 3 {
		t.Errorf("info steps %d current %d", info.Steps, info.CurrentStep)
	}
	det, err := s.Step(2)
	if err != nil || len(det.Files) != 1 || det.Files[0].Path != "/data/in.txt" || len(det.Variables) != 1 || det.Variables[0].Repr != "1" {
		t.Fatalf("detail %+v %v", det, err)
	}
	if det, _ := s.Step(1); det.Result == nil || det.Result.Stdout != "1\n" {
		t.Fatalf("detail result %+v", det.Result)
	}
	if _, err := s.Step(9); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("step 9: %v", err)
	}
}

// P4-030 on the toy tier: after a rewind or a fork to step n, the state (variables, files, cwd, a
// deterministic probe) is exactly the one after step n.
func TestRewindAndForkRestoreExactState(t *testing.T) {
	scripts := map[string][]string{
		"counter":            {"x = 1", "x += 1", "x += 1", "x += 10"},
		"files written":      {"write /tmp/a one", "write /tmp/b two", "write /tmp/a three"},
		"deleted file":       {"write /tmp/a one", "rm /tmp/a", "write /tmp/c c"},
		"deleted variable":   {"x = 1\ny = 2", "del x", "x = 5"},
		"cwd":                {"cd /tmp", "cd /data", "cd /home/user"},
		"big allocation":     {"noise /home/user/big 9000000", "x = 1", "rm /home/user/big"},
		"big then small":     {"noise /tmp/n 200000", "noise /tmp/n 10", "noise /tmp/n 70000"},
		"failing cell":       {"x = 1", "fail", "x = 2"},
		"empty file":         {"write /tmp/e", "rm /tmp/e", "write /tmp/e"},
		"many vars":          {"a = 1\nb = 2\nc = 3", "d = 4\ne = 5", "del a\ndel b"},
		"same twice":         {"x = 1", "x = 1", "x = 1"},
		"overwrite":          {"write /data/f a", "write /data/f b", "write /data/f c", "write /data/f d"},
		"mixed":              {"x = 1\nwrite /tmp/a x", "cd /tmp\nx += 1", "rm /tmp/a\ny = 3", "noise /tmp/z 5000"},
		"shared blocks":      {"noise /tmp/a 8192", "write /tmp/b b", "write /tmp/c c"},
		"only uploads":       {"@/data/u1 first", "@/data/u2 second", "@/data/u1 third"},
		"uploads and cells":  {"@/data/u x", "x = 1", "@/data/u y", "rm /data/u"},
		"imports":            {"import json", "import re\nx = 2", "import csv"},
		"long chain":         {"x = 1", "x += 1", "x += 1", "x += 1", "x += 1", "x += 1", "x += 1", "x += 1"},
		"delete all":         {"write /tmp/a a\nx = 1", "rm /tmp/a\ndel x", "y = 0"},
		"cwd and files":      {"cd /data\nwrite /data/x 1", "cd /tmp\nrm /data/x", "cd /output\nwrite /output/o o"},
		"large then deleted": {"noise /tmp/l 3000000", "rm /tmp/l", "noise /tmp/m 100"},
	}
	for name, cells := range scripts {
		t.Run(name, func(t *testing.T) {
			d, st := toyDispatcher(t, &toyEngine{name: api.TierNano}, nil, snapstore.Retention{})
			ctx := context.Background()
			s, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
			if err != nil {
				t.Fatal(err)
			}
			states := map[int]string{0: probe(t, s)}
			// probe is itself a step; the state after step n is what the probe right after it saw.
			for _, c := range cells {
				if p, ok := strings.CutPrefix(c, "@"); ok {
					path, data, _ := strings.Cut(p, " ")
					if err := s.WriteFile(ctx, path, []byte(data)); err != nil {
						t.Fatal(err)
					}
				} else {
					run(t, s, c)
				}
				n := s.Steps().Current
				states[n] = probe(t, s)
			}
			settle(t, s, st)
			for n, want := range states {
				f, err := s.Fork(ctx, api.ForkRequest{Step: n})
				if err != nil {
					t.Fatalf("fork %d: %v", n, err)
				}
				if got := probe(t, f); got != want {
					t.Errorf("fork of step %d: %q, want %q", n, got, want)
				}
				f.Close()
				if err := s.Rewind(ctx, n); err != nil {
					t.Fatalf("rewind %d: %v", n, err)
				}
				if got := probe(t, s); got != want {
					t.Errorf("rewind to step %d: %q, want %q", n, got, want)
				}
			}
		})
	}
}

func TestRewindAbandonsTheBranchLeft(t *testing.T) {
	d, st := toyDispatcher(t, &toyEngine{name: api.TierNano}, nil, snapstore.Retention{})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "x = 1") // 1
	run(t, s, "x = 2") // 2
	run(t, s, "x = 3") // 3
	settle(t, s, st)
	if err := s.Rewind(ctx, 1); err != nil { // 4
		t.Fatal(err)
	}
	run(t, s, "y = 1") // 5
	abandoned := func() (out []int) {
		for _, st := range s.Steps().Steps {
			if st.Abandoned {
				out = append(out, st.N)
			}
		}
		return out
	}
	list := s.Steps()
	if r := list.Steps[4]; r.Kind != api.StepRewind || r.Target != 1 || r.Parent != 1 || list.Current != 5 {
		t.Fatalf("rewind step %+v current %d", r, list.Current)
	}
	if got := fmt.Sprint(abandoned()); got != "[2 3]" {
		t.Fatalf("abandoned %s, want [2 3]", got)
	}
	settle(t, s, st)
	if err := s.Rewind(ctx, 3); err != nil { // 6: back onto the abandoned branch
		t.Fatal(err)
	}
	if got := fmt.Sprint(abandoned()); got != "[4 5]" {
		t.Fatalf("abandoned %s, want [4 5]", got)
	}
	if got := run(t, s, "print x").Stdout; got != "3\n" {
		t.Fatalf("x = %q after rewinding to step 3", got)
	}
	if err := s.Rewind(ctx, 99); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("rewind to a step that does not exist: %v", err)
	}
}

func TestNextCallWaitsForThePendingSnapshot(t *testing.T) {
	toy := &toyEngine{name: api.TierNano, snapDelay: 300 * time.Millisecond, snapped: make(chan int, 16)}
	d, _ := toyDispatcher(t, toy, nil, snapstore.Retention{})
	ctx := context.Background()
	s, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	if err != nil {
		t.Fatal(err)
	}
	<-toy.snapped // step 0
	run(t, s, "x = 1")
	select {
	case <-toy.snapped:
		t.Fatal("the cell's answer waited for its snapshot")
	default:
	}
	if s.Steps().Steps[1].Snapshot.State != api.SnapshotPending {
		t.Fatalf("state while snapshotting: %+v", s.Steps().Steps[1].Snapshot)
	}
	// The next call is not refused as busy: it waits for the snapshot, then runs.
	if got := run(t, s, "print x").Stdout; got != "1\n" {
		t.Fatalf("%q", got)
	}
	select {
	case <-toy.snapped:
	default:
		t.Fatal("the next cell ran before the pending snapshot ended")
	}
	// A context that ends first stops the wait.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.Run(cctx, "x = 2", Output{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting with an ending context: %v", err)
	}
}

func TestSnapshotFailureMarksStepMissing(t *testing.T) {
	toy := &toyEngine{name: api.TierNano}
	d, st := toyDispatcher(t, toy, nil, snapstore.Retention{})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "write /tmp/a a")
	settle(t, s, st)
	toy.mu.Lock()
	toy.failPut = func() error { return fmt.Errorf("write /snap: %w", syscall.ENOSPC) }
	toy.mu.Unlock()
	res := run(t, s, "x = 1\nprint x") // step 2: answered though its snapshot fails
	if res.Stdout != "1\n" {
		t.Fatalf("%+v", res)
	}
	settle(t, s, st)
	toy.mu.Lock()
	toy.failPut = nil
	toy.mu.Unlock()
	run(t, s, "y = 2")
	settle(t, s, st)
	step := s.Steps().Steps[2]
	if step.Snapshot.State != api.SnapshotMissing || !strings.Contains(step.Snapshot.Reason, "no space") {
		t.Fatalf("step 2 %+v", step.Snapshot)
	}
	// No snapshot of its own, so it is restored by replaying its cell from step 1's.
	if !step.Snapshot.Restorable || step.Snapshot.RestoreBy != api.RestoreByReplay {
		t.Fatalf("step 2 %+v, want restorable by replay", step.Snapshot)
	}
	if err := s.Rewind(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if got := probe(t, s); got != "x=1;/tmp/a:1:61;cwd=/home/user\n" {
		t.Fatalf("after replaying step 2: %q", got)
	}
}

func TestCorruptBlockMakesOnlyItsStepUnrestorable(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, snapstore.Retention{})
	d := New(&toyEngine{name: api.TierNano}, Config{Snapshots: st, MemoryBudgetMB: -1})
	t.Cleanup(d.Close)
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "write /tmp/a a")    // 1
	run(t, s, "noise /tmp/n 4096") // 2: random bytes, stored uncompressed
	settle(t, s, st)
	noise, err := s.sb.ReadFile(ctx, "/tmp/n", 0)
	if err != nil {
		t.Fatal(err)
	}
	run(t, s, "rm /tmp/n") // 3
	settle(t, s, st)
	segs, _ := filepath.Glob(filepath.Join(dir, "segments", "seg-*"))
	flipped := false
	for _, p := range segs {
		data, _ := os.ReadFile(p)
		if i := bytes.Index(data, noise); i >= 0 {
			data[i+100] ^= 0xff
			os.WriteFile(p, data, 0o600)
			flipped = true
		}
	}
	if !flipped {
		t.Fatal("the noise block was not found in a segment")
	}
	if err := s.Rewind(ctx, 2); errdefs.ClassOf(err) != errdefs.Conflict || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("rewind to the corrupt step: %v", err)
	}
	step := s.Steps().Steps[2]
	if step.Snapshot.State != api.SnapshotCorrupt {
		t.Fatalf("step 2 %+v", step.Snapshot)
	}
	// Nothing else broke: the session still runs, other steps restore.
	if err := s.Rewind(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := probe(t, s); got != "/tmp/a:1:61;cwd=/home/user\n" {
		t.Fatalf("after rewinding to step 1: %q", got)
	}
}

func TestRestartKeepsPinnedSessionsForForking(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, err := snapstore.Open(snapstore.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	d := New(&toyEngine{name: api.TierNano}, Config{Snapshots: st, MemoryBudgetMB: -1})
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "x = 7\nwrite /tmp/a kept") // 1
	run(t, s, "x = 8")                    // 2
	other, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, other, "y = 1")
	settle(t, s, st)
	if err := s.Pin(1, true); err != nil {
		t.Fatal(err)
	}
	if !s.Steps().Steps[1].Pinned {
		t.Fatal("step 1 not listed as pinned")
	}
	id, otherID := s.ID(), other.ID()
	d.Close()
	st.Close()

	st2 := openStore(t, dir, snapstore.Retention{})
	d2 := New(&toyEngine{name: api.TierNano}, Config{Snapshots: st2, MemoryBudgetMB: -1})
	t.Cleanup(d2.Close)
	if _, err := d2.StepSession(ctx, otherID); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("a session without pinned steps after a restart: %v", err)
	}
	old, err := d2.StepSession(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	list := old.Steps()
	if len(list.Steps) != 2 || !list.Steps[1].Pinned || !list.Steps[1].Snapshot.Restorable || list.Steps[0].Snapshot.Restorable {
		t.Fatalf("after a restart: %+v", list)
	}
	if err := old.Rewind(ctx, 1); errdefs.ClassOf(err) != errdefs.Conflict {
		t.Fatalf("rewinding a session from before the restart: %v", err)
	}
	f, err := old.Fork(ctx, api.ForkRequest{Step: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := probe(t, f); got != "x=7;/tmp/a:4:6b657074;cwd=/home/user\n" {
		t.Fatalf("fork after restart: %q", got)
	}
	// Unpinning its last pinned step lets the session go.
	if err := old.Pin(1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.StepSession(ctx, id); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("after unpinning the last step: %v", err)
	}
	if _, ok := st2.State(id, 1); ok {
		t.Fatal("the store still has the unpinned step")
	}
}

func TestForkHasFreshEntropy(t *testing.T) {
	d, st := toyDispatcher(t, &toyEngine{name: api.TierNano}, nil, snapstore.Retention{})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "x = 1")
	settle(t, s, st)
	seen := map[string]bool{run(t, s, "rand").Stdout: true}
	for range 2 {
		f, err := s.Fork(ctx, api.ForkRequest{Step: 1})
		if err != nil {
			t.Fatal(err)
		}
		r := run(t, f, "rand").Stdout
		if seen[r] {
			t.Fatalf("a fork repeated a random number: %q", r)
		}
		seen[r] = true
		if f.ID() == s.ID() || f.Steps().Steps[0].Kind != api.StepFork || f.Steps().Steps[0].ForkedFrom != s.ID() || f.Steps().Steps[0].Target != 1 {
			t.Fatalf("fork step %+v", f.Steps().Steps[0])
		}
	}
}

func TestRewindAcrossAMoveGoesBackToNano(t *testing.T) {
	nanoToy, heavyToy := &toyEngine{name: api.TierNano}, &toyEngine{name: api.TierHeavy}
	d, st := toyDispatcher(t, nanoToy, heavyToy, snapstore.Retention{})
	ctx := context.Background()
	s, err := d.NewSession(ctx, api.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s, "x = 1\nwrite /tmp/a a") // 1 on nano
	res := run(t, s, "import numpy\nx = 2")
	if res.Tier != api.TierHeavy || s.Info().Tier != api.TierHeavy {
		t.Fatalf("the session did not move: %+v", res)
	}
	settle(t, s, st)
	list := s.Steps()
	if list.Steps[1].Tier != api.TierNano || list.Steps[2].Tier != api.TierHeavy {
		t.Fatalf("tiers %s %s", list.Steps[1].Tier, list.Steps[2].Tier)
	}
	if sn := list.Steps[1].Snapshot; sn.RestoreOn != api.TierNano || !strings.Contains(sn.Reason, "back on nano") {
		t.Fatalf("step 1 snapshot %+v", sn)
	}
	if err := s.Rewind(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if info := s.Info(); info.Tier != api.TierNano || info.MovedFrom != "" {
		t.Fatalf("after rewinding to a nano step: %+v", info)
	}
	if got := probe(t, s); got != "x=1;/tmp/a:1:61;cwd=/home/user\n" {
		t.Fatalf("%q", got)
	}
	if n, h := d.sessionCounts(); n != 1 || h != 0 || heavyToy.open() != 0 {
		t.Fatalf("places nano %d heavy %d, heavy sandboxes open %d", n, h, heavyToy.open())
	}
	// It can move again, replaying the cells that led here.
	if res := run(t, s, "import numpy\nprint x"); res.Tier != api.TierHeavy || res.Stdout != "1\n" {
		t.Fatalf("moving again: %+v", res)
	}
	if err := s.Rewind(ctx, 2); err != nil { // a heavy step
		t.Fatal(err)
	}
	if got := probe(t, s); s.Info().Tier != api.TierHeavy || got != "x=2;/tmp/a:1:61;cwd=/home/user\n" {
		t.Fatalf("rewind to the heavy step: %s %q", s.Info().Tier, got)
	}
}

func TestTierWithoutSnapshotsListsNone(t *testing.T) {
	d, st := toyDispatcher(t, &toyEngine{name: api.TierNano, noSnap: true}, nil, snapstore.Retention{})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "x = 1")
	settle(t, s, st)
	for _, step := range s.Steps().Steps {
		if step.Snapshot.State != api.SnapshotNone || step.Snapshot.RestoreBy != api.RestoreByReplay {
			t.Fatalf("step %d %+v", step.N, step.Snapshot)
		}
	}
	if err := s.Pin(1, true); errdefs.ClassOf(err) != errdefs.Conflict {
		t.Fatalf("pinning a step without a snapshot: %v", err)
	}
	// Replaying from a fresh sandbox is what is left.
	run(t, s, "x = 5")
	if err := s.Rewind(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := run(t, s, "print x").Stdout; got != "1\n" {
		t.Fatalf("%q", got)
	}
	if _, err := s.StepFile(ctx, 1, "/tmp/a", 0); errdefs.ClassOf(err) != errdefs.Conflict {
		t.Fatalf("a file of a step without a snapshot: %v", err)
	}
}

func TestRetentionThinsAndPinKeeps(t *testing.T) {
	d, st := toyDispatcher(t, &toyEngine{name: api.TierNano}, nil, snapstore.Retention{Dense: 3, Every: -1})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "write /tmp/a 1") // 1
	settle(t, s, st)
	if err := s.Pin(1, true); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		run(t, s, fmt.Sprintf("write /tmp/a %d", i+2))
	}
	settle(t, s, st)
	for _, step := range s.Steps().Steps {
		want := api.SnapshotThinned
		if step.N == 1 || step.N >= 5 {
			want = api.SnapshotStored
		}
		if step.Snapshot.State != want {
			t.Errorf("step %d: %s, want %s", step.N, step.Snapshot.State, want)
		}
	}
	// A thinned step can still be reached by replay from the pinned one.
	if sn := s.Steps().Steps[3].Snapshot; !sn.Restorable || sn.RestoreBy != api.RestoreByReplay || !strings.Contains(sn.Reason, "step 1") {
		t.Fatalf("thinned step 3: %+v", sn)
	}
	if err := s.Pin(1, false); err != nil {
		t.Fatal(err)
	}
	if s.Steps().Steps[1].Pinned {
		t.Fatal("still pinned")
	}
}

func TestStepFileReadsTheFileAsItWas(t *testing.T) {
	toy := &toyEngine{name: api.TierNano}
	d, st := toyDispatcher(t, toy, nil, snapstore.Retention{})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "write /tmp/a first")  // 1
	run(t, s, "write /tmp/a second") // 2
	run(t, s, "rm /tmp/a")           // 3
	settle(t, s, st)
	for _, tc := range []struct {
		n    int
		want string
		err  *errdefs.Class
	}{{1, "first", nil}, {2, "second", nil}, {1, "first", nil}, {3, "", errdefs.NotFound}} {
		got, err := s.StepFile(ctx, tc.n, "/tmp/a", 0)
		if tc.err != nil {
			if errdefs.ClassOf(err) != tc.err {
				t.Fatalf("step %d: %v", tc.n, err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Fatalf("step %d: %q %v", tc.n, got, err)
		}
	}
	// One inspection sandbox at a time besides the session's; closing the session frees it.
	if open := toy.open(); open != 2 {
		t.Fatalf("%d toy sandboxes open, want the session's and one inspection", open)
	}
	s.Close()
	if open := toy.open(); open != 0 {
		t.Fatalf("%d toy sandboxes open after close", open)
	}
	if _, err := s.StepFile(ctx, 1, "../etc", 0); errdefs.ClassOf(err) != errdefs.InvalidArgument {
		t.Fatalf("bad path: %v", err)
	}
}

func TestClosedSessionKeepsOnlyPinnedSteps(t *testing.T) {
	d, st := toyDispatcher(t, &toyEngine{name: api.TierNano}, nil, snapstore.Retention{})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "x = 1") // 1
	run(t, s, "x = 2") // 2
	settle(t, s, st)
	if err := s.Pin(1, true); err != nil {
		t.Fatal(err)
	}
	other, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, other, "y = 1")
	settle(t, other, st)
	s.Close()
	other.Close()
	if _, err := d.Session(ctx, s.ID()); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("a closed session is still open: %v", err)
	}
	if _, err := d.StepSession(ctx, other.ID()); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("a closed session without pinned steps is still listed: %v", err)
	}
	kept, err := d.StepSession(ctx, s.ID())
	if err != nil {
		t.Fatal(err)
	}
	list := kept.Steps()
	if !list.Steps[1].Snapshot.Restorable || list.Steps[2].Snapshot.Restorable || list.Steps[2].Snapshot.State != api.SnapshotThinned {
		t.Fatalf("after close: %+v", list.Steps)
	}
	if err := kept.Rewind(ctx, 1); errdefs.ClassOf(err) != errdefs.Conflict {
		t.Fatalf("rewinding a closed session: %v", err)
	}
	f, err := kept.Fork(ctx, api.ForkRequest{Step: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := run(t, f, "print x").Stdout; got != "1\n" {
		t.Fatalf("fork of a closed session's pinned step: %q", got)
	}
	if _, err := d.StepSession(WithTenant(ctx, Tenant{ID: "someone-else"}), s.ID()); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("another tenant finds the closed session: %v", err)
	}
}

// A tier that names blocks again without putting them (as nano does) recovers when one is gone: the
// snapshot that named it is missing, and the next one, through a new SessionBlocks, puts everything.
func TestSnapshotNamingAGoneBlockStartsAfresh(t *testing.T) {
	d, st := toyDispatcher(t, &toyEngine{name: api.TierNano, reuse: true}, nil, snapstore.Retention{})
	ctx := context.Background()
	s, _ := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	run(t, s, "write /tmp/a kept") // 1
	run(t, s, "x = 1")             // 2: names /tmp/a's block again
	settle(t, s, st)
	for _, n := range []int{1, 2} { // the block goes: nothing holds it any more
		st.MarkCorrupt(s.ID(), n, "test")
	}
	run(t, s, "x = 2") // 3: names the gone block
	settle(t, s, st)
	run(t, s, "x = 3") // 4: puts it again
	settle(t, s, st)
	steps := s.Steps().Steps
	if steps[3].Snapshot.State != api.SnapshotMissing || !strings.Contains(steps[3].Snapshot.Reason, "not stored") {
		t.Fatalf("step 3: %+v, want missing (it named a gone block)", steps[3].Snapshot)
	}
	if steps[4].Snapshot.State != api.SnapshotStored {
		t.Fatalf("step 4: %+v, want stored", steps[4].Snapshot)
	}
	if err := s.Rewind(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if got := probe(t, s); got != "x=3;/tmp/a:4:6b657074;cwd=/home/user\n" {
		t.Fatalf("after rewinding to step 4: %q", got)
	}
}
