package egress

import (
	"sync"
	"sync/atomic"

	"github.com/entersandbox/agentbox/api"
)

// Metrics is a snapshot of the proxy's counters since it was created.
type Metrics struct {
	// Connections counts TCP connections accepted, Unattached those refused because no Guard was
	// attached to their source (included in Connections).
	Connections, Unattached int64
	// BytesOut and BytesIn are bytes sent to and received from destinations.
	BytesOut, BytesIn int64
	// Verdicts counts events by verdict and rule.
	Verdicts map[VerdictRule]int64
	// DLPHits counts detector findings by type.
	DLPHits map[string]int64
}

// VerdictRule keys Metrics.Verdicts.
type VerdictRule struct{ Verdict, Rule string }

type metrics struct {
	conns, unattachedN, out, in atomic.Int64

	mu       sync.Mutex
	verdicts map[VerdictRule]int64 // guarded by mu
	dlp      map[string]int64      // guarded by mu
}

func (m *metrics) init() {
	m.verdicts = map[VerdictRule]int64{}
	m.dlp = map[string]int64{}
}

func (m *metrics) conn()       { m.conns.Add(1) }
func (m *metrics) unattached() { m.unattachedN.Add(1) }
func (m *metrics) bytes(out, in int64) {
	m.out.Add(out)
	m.in.Add(in)
}

func (m *metrics) event(e api.NetworkEvent) {
	m.mu.Lock()
	m.verdicts[VerdictRule{e.Verdict, e.Rule}]++
	for _, d := range e.Detectors {
		m.dlp[d]++
	}
	m.mu.Unlock()
}

// Metrics returns a snapshot of the counters.
func (p *Proxy) Metrics() Metrics {
	m := &p.met
	s := Metrics{
		Connections: m.conns.Load(), Unattached: m.unattachedN.Load(),
		BytesOut: m.out.Load(), BytesIn: m.in.Load(),
		Verdicts: map[VerdictRule]int64{}, DLPHits: map[string]int64{},
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.verdicts {
		s.Verdicts[k] = v
	}
	for k, v := range m.dlp {
		s.DLPHits[k] = v
	}
	return s
}
