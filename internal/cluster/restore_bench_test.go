package cluster_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

func medianMS(d []time.Duration) float64 {
	slices.Sort(d)
	return float64(d[len(d)/2].Microseconds()) / 1000
}

// BenchmarkReplicationStep is a cell that changes one variable, then the wait until its step's head
// is in the fleet's store: replicate-ms is the median time from the cell's answer to its head
// (the replication's lag; the cell itself does not wait for it), bytes/step what it sent.
//
//	go test -run '^$' -bench BenchmarkReplicationStep -benchtime 30x ./internal/cluster/
func BenchmarkReplicationStep(b *testing.B) {
	f := newFleet(b, 1, hostOpts{replicate: true})
	js := f.js()
	h := f.hosts[0]
	id := newSessionOn(b, h, "h0")
	waitReplicated(b, js, id, 0)
	var lags, cells []time.Duration
	start := h.node.ReplicationStats().Bytes
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		runCell(b, h, id, fmt.Sprintf("x = %d", i))
		t1 := time.Now()
		step := currentStep(b, h, id)
		for headStep(b, js, id) < step {
			time.Sleep(time.Millisecond)
		}
		cells, lags = append(cells, t1.Sub(t0)), append(lags, time.Since(t1))
	}
	b.StopTimer()
	b.ReportMetric(medianMS(cells), "cell-ms")
	b.ReportMetric(medianMS(lags), "replicate-ms")
	b.ReportMetric(float64(h.node.ReplicationStats().Bytes-start)/float64(b.N), "bytes/step")
}

// BenchmarkRestore is the first request for a session of a killed host: restore-ms is the median
// time of a cell that restores its session on another host and runs there (the head and blocks
// read, the sandbox restored, the record swapped, the cell run).
//
//	go test -run '^$' -bench BenchmarkRestore -benchtime 10x ./internal/cluster/
func BenchmarkRestore(b *testing.B) {
	f := newFleet(b, 3, hostOpts{replicate: true})
	js := f.js()
	var ids []string
	for range b.N {
		id := newSessionOn(b, f.hosts[0], "h1")
		runCell(b, f.hosts[0], id, "x = 41")
		ids = append(ids, id)
	}
	for _, id := range ids {
		waitReplicated(b, js, id, currentStep(b, f.hosts[0], id))
	}
	f.hosts[1].kill()
	waitFor(b, 5*time.Second, "h1 to leave the fleet", func() bool { return len(f.hosts[0].node.Hosts(context.Background()).Hosts) == 2 })
	var took []time.Duration
	b.ResetTimer()
	for _, id := range ids {
		t0 := time.Now()
		r := runCell(b, f.hosts[0], id, "print(x + 1)")
		took = append(took, time.Since(t0))
		if r.header.Get("X-Agentbox-Restored-From") == "" {
			b.Fatalf("session %s was not restored: %s", id, r.body)
		}
	}
	b.StopTimer()
	b.ReportMetric(medianMS(took), "restore-ms")
}
