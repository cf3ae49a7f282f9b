package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/tier/tiertest"
)

// benchSteps is a ten-step data session: imports, a DataFrame, files, a chart, small edits.
var benchSteps = []string{
	"import numpy as np, pandas as pd\nx = 1",
	"df = pd.DataFrame(np.random.rand(20000, 5), columns=list('abcde'))",
	"open('/tmp/a.txt', 'w').write('hello ' * 10000)",
	"summary = df.describe()",
	"x += 1",
	"import matplotlib.pyplot as plt\nplt.plot(df.a[:200])\nplt.savefig('/output/p.png')\nplt.close('all')",
	"df['f'] = df.a * 2",
	"big = list(range(200000))",
	"del big",
	"print(x, len(df))",
}

// quantile is the q-quantile of ds (sorted in place).
func quantile(ds []time.Duration, q float64) float64 {
	slices.Sort(ds)
	return float64(ds[min(len(ds)-1, int(float64(len(ds))*q))].Microseconds()) / 1000
}

// BenchmarkStepSnapshot: a session of ten steps, each snapshotted into one store. Reports the
// checkpoint pause per step (p50, p99), the whole Snapshot per step, and bytes per step: the raw
// image, the new blocks after deduplication, and those compressed with zstd as the store would
// (the step's new blocks as one stream); raw/zstd is the issue's ≥5x bar over ten steps.
func BenchmarkStepSnapshot(b *testing.B) {
	ctx := context.Background()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		b.Fatal(err)
	}
	defer enc.Close()
	var pauses, totals []time.Duration
	var raw, kept, packed int64
	steps := 0
	for b.Loop() {
		b.StopTimer()
		waitPoolOf(b, eng)
		blocks := tiertest.NewBlocks()
		s, err := eng.NewSession(ctx, api.Limits{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		var keptBefore int64
		for _, code := range benchSteps {
			cell(b, s, code)
			b.StartTimer()
			snapshot(b, s, blocks)
			b.StopTimer()
			st, _ := heavy.LastSnapshot(s)
			pauses, totals = append(pauses, st.Checkpoint), append(totals, st.Total)
			raw += st.ImageBytes
			_, k := blocks.Bytes()
			kept += k - keptBefore
			keptBefore = k
			var stream []byte
			for _, blk := range blocks.TakeNew() {
				stream = append(stream, blk...)
			}
			packed += int64(len(enc.EncodeAll(stream, nil)))
			steps++
		}
		s.Close(ctx)
		b.StartTimer()
	}
	b.ReportMetric(quantile(pauses, 0.5), "checkpoint-p50-ms")
	b.ReportMetric(quantile(pauses, 0.99), "checkpoint-p99-ms")
	b.ReportMetric(quantile(totals, 0.5), "snapshot-p50-ms")
	b.ReportMetric(float64(raw)/float64(steps)/(1<<20), "raw-MiB/step")
	b.ReportMetric(float64(kept)/float64(steps)/(1<<20), "dedup-MiB/step")
	b.ReportMetric(float64(packed)/float64(steps)/(1<<20), "zstd-MiB/step")
	b.ReportMetric(float64(raw)/float64(kept), "dedup-x")
	b.ReportMetric(float64(raw)/float64(packed), "raw/zstd-x")
}

// BenchmarkStepRestore: restoring step 5 of the ten-step session into a new sandbox (image rebuilt
// from blocks, runsc restore, reseed) and its first cell; the teardown is not timed. Reports the
// image rebuild, the restore and the restore with the first cell (p50, p99).
func BenchmarkStepRestore(b *testing.B) {
	ctx := context.Background()
	blocks := tiertest.NewBlocks()
	waitPoolOf(b, eng)
	s, err := eng.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	var snap *tier.Snapshot
	for i, code := range benchSteps[:5] {
		cell(b, s, code)
		if i == 4 {
			snap = snapshot(b, s, blocks)
		}
	}
	s.Close(ctx)
	var restores, firsts, rebuilds []time.Duration
	for b.Loop() {
		start := time.Now()
		r, err := eng.Restore(ctx, snap, blocks, api.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		restored := time.Since(start)
		if got := cell(b, r, "print(x, len(df))"); got != "2 20000\n" {
			b.Fatalf("restored step 5: %q", got)
		}
		restores, firsts = append(restores, restored), append(firsts, time.Since(start))
		st, _ := heavy.Restored(r)
		rebuilds = append(rebuilds, st.Rebuild)
		b.StopTimer()
		r.Close(ctx)
		b.StartTimer()
	}
	b.ReportMetric(quantile(rebuilds, 0.5), "rebuild-p50-ms")
	b.ReportMetric(quantile(restores, 0.5), "restore-p50-ms")
	b.ReportMetric(quantile(restores, 0.99), "restore-p99-ms")
	b.ReportMetric(quantile(firsts, 0.5), "restore+cell-p50-ms")
	b.ReportMetric(quantile(firsts, 0.99), "restore+cell-p99-ms")
}

// waitPoolOf waits until e has a pooled sandbox, so that the next session is a pool hit: a sandbox
// with numpy, pandas and matplotlib imported, as most sessions are.
func waitPoolOf(b *testing.B, e *heavy.Engine) {
	deadline := time.Now().Add(5 * time.Minute)
	for e.PoolReady() == 0 {
		if time.Now().After(deadline) {
			b.Fatal("no pooled sandbox within 5 minutes: the host is too loaded to measure")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
