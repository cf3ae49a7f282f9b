package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

// dispatcherWithSnapshots is a dispatcher over a fresh nano engine and the shared heavy engine, with
// time travel's store in a temp dir.
func dispatcherWithSnapshots(t *testing.T) (*dispatch.Dispatcher, *snapstore.Store) {
	t.Helper()
	ctx := context.Background()
	nanoEng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	st, err := snapstore.Open(snapstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(nanoEng, dispatch.Config{Heavy: eng, Snapshots: st})
	t.Cleanup(func() { d.Close(); st.Close(); nanoEng.Close(ctx) })
	return d, st
}

// settled waits until no step of s has a pending snapshot and the store has written its blocks.
func settled(t *testing.T, s *dispatch.Session, st *snapstore.Store) api.StepList {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		list := s.Steps()
		pending := false
		for _, step := range list.Steps {
			pending = pending || step.Snapshot.State == api.SnapshotPending
		}
		if !pending {
			st.Flush()
			return list
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshots still pending: %+v", list)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ttProbe prints the state an integrity check compares; every session defines x first.
const ttProbe = `import os, sys
g = globals()
print(repr(x), sorted(k for k in g if not k.startswith('_') and k not in ('os', 'sys', 'g'))[:20],
      sorted(m for m in ('numpy', 'json', 'csv') if m in sys.modules),
      sorted((r + '/' + f, os.path.getsize(r + '/' + f)) for d in ('/tmp', '/home/user', '/data')
             for r, _, fs in os.walk(d) for f in fs), os.getcwd())`

// P4-030 on heavy, and across a move: after a rewind or a fork to step n, variables, imports, files,
// cwd and a deterministic probe are those after step n.
func TestTimeTravelIntegrityHeavy(t *testing.T) {
	scripts := []struct {
		name  string
		tier  api.Tier
		cells []string
	}{
		{"heavy big allocation and deleted file", api.TierHeavy, []string{
			"x = 1\nopen('/tmp/a.txt', 'w').write('a' * 1000)",
			"import numpy as np\nx = 2\nbig = np.ones(4_000_000)\nos_ = None",
			"import os\nx = 3\ndel big\nos.remove('/tmp/a.txt')\nos.chdir('/home/user')",
		}},
		{"moved from nano to heavy", api.TierAuto, []string{
			"x = 'n1'\nimport json\nopen('/home/user/n.json', 'w').write(json.dumps([1, 2]))",
			"x = 'n2'\nimport os\nos.chdir('/tmp')",
			"import numpy as np\nx = 'h3'\ny = int(np.arange(4).sum())",
			"x = 'h4'\nimport os\nos.remove('/home/user/n.json')",
		}},
	}
	for _, sc := range scripts {
		t.Run(sc.name, func(t *testing.T) {
			d, st := dispatcherWithSnapshots(t)
			ctx := context.Background()
			s, err := d.NewSession(ctx, api.SessionRequest{Tier: sc.tier})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			states := map[int]string{}
			for _, c := range sc.cells {
				if res, err := s.Run(ctx, c, dispatch.Output{}); err != nil || res.ExitCode != 0 {
					t.Fatalf("%q: %v %+v", c, err, res)
				}
				n := s.Steps().Current
				res, err := s.Run(ctx, ttProbe, dispatch.Output{})
				if err != nil || res.ExitCode != 0 {
					t.Fatalf("probe: %v %+v", err, res)
				}
				states[n] = res.Stdout
			}
			list := settled(t, s, st)
			for n, step := range list.Steps {
				if step.Tier == api.TierHeavy && step.Snapshot.State != api.SnapshotStored {
					t.Errorf("heavy step %d: %+v", n, step.Snapshot)
				}
			}
			for n, want := range states {
				tierOf := list.Steps[n].Tier
				start := time.Now()
				f, err := s.Fork(ctx, api.ForkRequest{Step: n})
				forkTook := time.Since(start)
				if err != nil {
					t.Fatalf("fork %d: %v", n, err)
				}
				res, err := f.Run(ctx, ttProbe, dispatch.Output{})
				if err != nil || res.Stdout != want || res.Tier != tierOf {
					t.Errorf("fork of step %d (%s): %v %q on %s, want %q", n, tierOf, err, res.Stdout, res.Tier, want)
				}
				f.Close()
				start = time.Now()
				if err := s.Rewind(ctx, n); err != nil {
					t.Fatalf("rewind %d: %v", n, err)
				}
				t.Logf("step %d (%s by %s): fork %v, rewind %v", n, tierOf, list.Steps[n].Snapshot.RestoreBy, forkTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
				res, err = s.Run(ctx, ttProbe, dispatch.Output{})
				if err != nil || res.Stdout != want || s.Info().Tier != tierOf {
					t.Errorf("rewind to step %d (%s): %v %q on %s, want %q", n, tierOf, err, res.Stdout, s.Info().Tier, want)
				}
			}
			t.Log(describeSteps(settled(t, s, st)))
		})
	}
}

func describeSteps(l api.StepList) string {
	var b strings.Builder
	for _, s := range l.Steps {
		fmt.Fprintf(&b, "%d %s %s %s %d bytes restore %s@%s\n", s.N, s.Kind, s.Tier, s.Snapshot.State, s.Snapshot.Bytes, s.Snapshot.RestoreBy, s.Snapshot.RestoreOn)
	}
	return b.String()
}
