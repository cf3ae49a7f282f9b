package dispatch

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

// reportQuantiles reports the median and p99 of durations in ms.
func reportQuantiles(b *testing.B, ds []time.Duration, unit string) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "p50-"+unit)
	b.ReportMetric(float64(ds[len(ds)*99/100].Microseconds())/1000, "p99-"+unit)
}

// nanoSession is a nano session grown to about 16 MiB of memory, on a dispatcher with time travel on
// or off.
func nanoSession(b *testing.B, snapshots bool) (*Session, *snapstore.Store) {
	cfg := Config{MemoryBudgetMB: -1}
	var st *snapstore.Store
	if snapshots {
		var err error
		if st, err = snapstore.Open(snapstore.Config{Dir: b.TempDir()}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		cfg.Snapshots = st
	}
	d := New(eng, cfg)
	b.Cleanup(d.Close)
	ctx := context.Background()
	s, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Run(ctx, "blob = bytearray(6 << 20)\nrows = [{'i': i} for i in range(20000)]\nx = 0", Output{}); err != nil {
		b.Fatal(err)
	}
	return s, st
}

// BenchmarkNanoCellSnapshots is a small cell in a ~16 MiB nano session, in a loop, with time travel
// off and on: the difference is what snapshots add per cell (the next cell waits for the last
// snapshot). answer is how long the cell took to answer, which the snapshot never delays.
func BenchmarkNanoCellSnapshots(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			s, _ := nanoSession(b, on)
			ctx := context.Background()
			var loop, answer []time.Duration
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := s.Run(ctx, "x += 1", Output{}); err != nil {
					b.Fatal(err)
				}
				answer = append(answer, time.Since(start))
				s.waitSnapshot(ctx)
				loop = append(loop, time.Since(start))
			}
			b.StopTimer()
			reportQuantiles(b, loop, "ms/cell+snapshot")
			reportQuantiles(b, answer, "ms/answer")
			if on {
				n := s.Steps().Current
				if st := s.Steps().Steps[n].Snapshot; st.State != api.SnapshotNone {
					b.ReportMetric(float64(st.Bytes)/1024, "KiB/last-step")
				}
			}
		})
	}
}

// BenchmarkNanoRewindFork rewinds a ~16 MiB nano session to a step, and forks one.
func BenchmarkNanoRewindFork(b *testing.B) {
	for _, op := range []string{"rewind", "fork"} {
		b.Run(op, func(b *testing.B) {
			s, st := nanoSession(b, true)
			ctx := context.Background()
			for range 3 {
				s.Run(ctx, "x += 1", Output{})
			}
			s.waitSnapshot(ctx)
			st.Flush()
			for _, n := range []int{2, 3} { // kept: the rewinds' own steps would thin them past 20
				if err := s.Pin(n, true); err != nil {
					b.Fatal(err)
				}
			}
			var ds []time.Duration
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				switch op {
				case "rewind":
					if err := s.Rewind(ctx, 2+i%2); err != nil {
						b.Fatal(err)
					}
				case "fork":
					f, err := s.Fork(ctx, api.ForkRequest{Step: 2})
					if err != nil {
						b.Fatal(err)
					}
					ds = append(ds, time.Since(start))
					b.StopTimer()
					f.Close()
					b.StartTimer()
					continue
				}
				ds = append(ds, time.Since(start))
			}
			b.StopTimer()
			reportQuantiles(b, ds, "ms")
			b.ReportMetric(0, "ns/op")
			if by := s.Steps().Steps[2].Snapshot.RestoreBy; by != api.RestoreBySnapshot {
				b.Logf("restored by %s: the nano tier keeps no snapshots in this build", by)
			}
		})
	}
}
