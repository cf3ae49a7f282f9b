package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
)

// metrics are the server's Prometheus series, in a registry of its own.
type metrics struct {
	reg      *prometheus.Registry
	runs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
}

func newMetrics(stats func() dispatch.Stats) *metrics {
	gauge := func(name, help string, field func(dispatch.Stats) int) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(field(stats())) })
	}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbox_runs_total",
			Help: "Programs run, by tier and outcome (ok, error, timeout, memory, output, crash)."}, []string{"tier", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "agentbox_run_duration_seconds",
			Help:    "Wall time of runs inside the sandbox.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"tier"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbox_http_requests_total",
			Help: "HTTP requests by route and status code."}, []string{"route", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbox_errors_total",
			Help: "Error responses by class."}, []string{"class"}),
	}
	m.reg.MustRegister(m.runs, m.duration, m.requests, m.errors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		gauge("agentbox_queue_depth", "Nano runs waiting for a slot.", func(st dispatch.Stats) int { return st.QueueDepth }),
		gauge("agentbox_pool_ready", "Restored nano sandboxes ready in the pool.", func(st dispatch.Stats) int { return st.PoolReady }),
		gauge("agentbox_sessions_open", "Open sessions on nano.", func(st dispatch.Stats) int { return st.Sessions }),
		gauge("agentbox_runs_waiting", "Runs waiting in their API keys' queues for a place on a tier.", func(st dispatch.Stats) int { return st.RunsWaiting }),
		gauge("agentbox_memory_used_mb", "Memory limits (MiB) held by open sessions and running programs.", func(st dispatch.Stats) int { return st.MemoryUsedMB }),
		gauge("agentbox_memory_budget_mb", "The memory budget (MiB) sessions and runs are admitted against; 0 means none.", func(st dispatch.Stats) int { return st.MemoryBudgetMB }))
	if stats().Heavy {
		m.reg.MustRegister(
			gauge("agentbox_heavy_pool_ready", "Started heavy sandboxes ready in the pool.", func(st dispatch.Stats) int { return st.HeavyPoolReady }),
			gauge("agentbox_heavy_sessions_open", "Open sessions on heavy, including those moved from nano.", func(st dispatch.Stats) int { return st.HeavySessions }))
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) observe(res *api.Result) {
	outcome := "ok"
	switch {
	case res.TimedOut:
		outcome = "timeout"
	case res.Error != nil && res.Error.Type == api.ErrMemoryLimitExceeded:
		outcome = "memory"
	case res.Error != nil && res.Error.Type == api.ErrOutputLimitExceeded:
		outcome = "output"
	case res.Error != nil && res.Error.Type == api.ErrGuestCrash:
		outcome = "crash"
	case res.Error != nil:
		outcome = "error"
	}
	m.runs.WithLabelValues(string(res.Tier), outcome).Inc()
	m.duration.WithLabelValues(string(res.Tier)).Observe(res.DurationMS / 1000)
}
