package egress

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

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
	m.verdicts[VerdictRule{e.Verdict, ruleLabel(e.Rule)}]++
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

// ruleLabel bounds the rules metrics are kept by: a grant is named by its source only (its hosts
// and paths come from task texts, which are unbounded).
func ruleLabel(rule string) string {
	if rest, ok := strings.CutPrefix(rule, "grant:"); ok {
		source, _, _ := strings.Cut(rest, ":")
		return "grant:" + source
	}
	return rule
}

// Collector exports the proxy's counters as Prometheus series (agentbox_egress_*).
func (p *Proxy) Collector() prometheus.Collector { return collector{p} }

var (
	descConns    = prometheus.NewDesc("agentbox_egress_connections_total", "Sandbox TCP connections the egress proxy accepted.", nil, nil)
	descUnattach = prometheus.NewDesc("agentbox_egress_unattached_total", "Connections refused because their source had no policy attached.", nil, nil)
	descBytes    = prometheus.NewDesc("agentbox_egress_bytes_total", "Bytes between sandboxes and destinations, by direction (out: to the destination).", []string{"direction"}, nil)
	descVerdicts = prometheus.NewDesc("agentbox_egress_decisions_total", "Connections and requests by verdict and the rule that decided (grants by their source).", []string{"verdict", "rule"}, nil)
	descDLP      = prometheus.NewDesc("agentbox_egress_dlp_findings_total", "DLP findings in sandbox traffic by detector type.", []string{"type"}, nil)
)

type collector struct{ p *Proxy }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descUnattach, descBytes, descVerdicts, descDLP} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m := c.p.Metrics()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descConns, m.Connections)
	counter(descUnattach, m.Unattached)
	counter(descBytes, m.BytesOut, "out")
	counter(descBytes, m.BytesIn, "in")
	for k, v := range m.Verdicts {
		counter(descVerdicts, v, k.Verdict, k.Rule)
	}
	for k, v := range m.DLPHits {
		counter(descDLP, v, k)
	}
}
