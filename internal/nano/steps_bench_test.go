package nano

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/tier/tiertest"
)

// grow makes a session hold n KB of live data: 6000 takes it to about 16 MiB of linear memory.
func grow(n int) string {
	return fmt.Sprintf("keep = [bytes([i %% 251]) * 1000 for i in range(%d)]\nx = 0", n)
}

// benchSession is a session of e grown to ~16 MiB, with a first snapshot taken.
func benchSession(b *testing.B, e *Engine, blocks tier.Blocks) *session {
	return benchSessionOf(b, e, blocks, 6000)
}

func benchSessionOf(b *testing.B, e *Engine, blocks tier.Blocks, kb int) *session {
	b.Helper()
	ts, err := e.NewSession(context.Background(), api.Limits{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ts.Close(context.Background()) })
	s := ts.(*session)
	if res, err := s.Run(context.Background(), grow(kb), tier.Stream{}); err != nil || res.ExitCode != 0 {
		b.Fatalf("%v %+v", err, res)
	}
	if _, err := s.Snapshot(context.Background(), blocks); err != nil {
		b.Fatal(err)
	}
	b.Logf("session memory: %.1f MiB", float64(s.inst.mod.Memory().Size())/(1<<20))
	return s
}

// storedSize is what zstd (the store's compression, at its fastest level) makes of the blocks the
// store took for the first time since the last call.
func storedSize(b *testing.B, m *tiertest.Blocks) int64 {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	var buf []byte
	for _, d := range m.TakeNew() {
		buf = enc.EncodeAll(d, buf[:0])
		n += int64(len(buf))
	}
	return n
}

// BenchmarkSnapshotSmallCell: the snapshot after a small cell (x += 1) at ~16 MiB of memory, the
// cell itself untimed. put-KiB is what was handed to Put, new-KiB what the store had not seen,
// zstd-KiB that compressed block by block (what a compressing store keeps), state-KiB the State.
func BenchmarkSnapshotSmallCell(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: -1})
	benchSmallCells(b, e, benchSession(b, e, tiertest.NewBlocks()))
}

// BenchmarkSnapshotSmallCell64: the same at ~64 MiB, for how the cost grows with memory.
func BenchmarkSnapshotSmallCell64(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: -1})
	benchSmallCells(b, e, benchSessionOf(b, e, tiertest.NewBlocks(), 50000))
}

func benchSmallCells(b *testing.B, e *Engine, s *session) {
	blocks := s.steps.store.(*tiertest.Blocks)
	var times []time.Duration
	var put, fresh, stored, state int64
	for b.Loop() {
		b.StopTimer()
		if res, err := s.Run(context.Background(), "x += 1", tier.Stream{}); err != nil || res.ExitCode != 0 {
			b.Fatalf("%v %+v", err, res)
		}
		given0, kept0 := blocks.Bytes()
		blocks.TakeNew()
		b.StartTimer()
		start := time.Now()
		snap, err := s.Snapshot(context.Background(), blocks)
		times = append(times, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		given1, kept1 := blocks.Bytes()
		put += given1 - given0
		fresh += kept1 - kept0
		stored += storedSize(b, blocks)
		state += int64(len(snap.State))
		b.StartTimer()
	}
	n := float64(len(times))
	b.ReportMetric(float64(put)/n/1024, "put-KiB")
	b.ReportMetric(float64(fresh)/n/1024, "new-KiB")
	b.ReportMetric(float64(stored)/n/1024, "zstd-KiB")
	b.ReportMetric(float64(state)/n/1024, "state-KiB")
	reportQuantiles(b, times)
}

// BenchmarkSnapshotProbe: the runner's probe of globals, files and descriptors alone.
func BenchmarkSnapshotProbe(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: -1})
	s := benchSession(b, e, tiertest.NewBlocks())
	var times []time.Duration
	for b.Loop() {
		start := time.Now()
		var p probeReply
		if err := s.inst.op(context.Background(), nil, s.limits, map[string]any{"op": "probe"}, &p); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(start))
	}
	reportQuantiles(b, times)
}

// BenchmarkRestore: a rewind or fork of a ~16 MiB session (restore, then close; the close untimed),
// with the engine's page cache holding the step's pages (a recent step) and without it (every page
// that differs from the start-up image read from the store).
func BenchmarkRestore(b *testing.B) {
	for _, bc := range []struct {
		name    string
		cacheMB int
	}{{"cached", 0}, {"store", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			e := benchEngine(b, Config{PoolSize: -1, SnapshotCacheMB: bc.cacheMB})
			blocks := tiertest.NewBlocks()
			s := benchSession(b, e, blocks)
			if res, err := s.Run(context.Background(), "x += 1\nopen('/home/user/f.txt', 'w').write('data' * 1000)", tier.Stream{}); err != nil || res.ExitCode != 0 {
				b.Fatalf("%v %+v", err, res)
			}
			snap, err := s.Snapshot(context.Background(), blocks)
			if err != nil {
				b.Fatal(err)
			}
			var times []time.Duration
			for b.Loop() {
				start := time.Now()
				r, err := e.Restore(context.Background(), snap, blocks, api.Limits{})
				times = append(times, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				r.Close(context.Background())
				b.StartTimer()
			}
			reportQuantiles(b, times)
		})
	}
}
