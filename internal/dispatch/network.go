package dispatch

import (
	"context"
	"fmt"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// compileNetwork compiles a run's or session's network policy, task and intent inside the ceiling.
func (d *Dispatcher) compileNetwork(np *api.NetworkPolicy, task string, in *api.Intent) (*netpolicy.Policy, error) {
	p, err := netpolicy.Compile(d.cfg.Ceiling, np, task, in, nil)
	if err != nil {
		return nil, fmt.Errorf("network policy: %w", err)
	}
	for _, s := range p.Skipped() {
		d.log.Info("task URL not granted", "why", s)
	}
	return p, nil
}

// newGuard makes the Guard enforcing p, whose events go to the configured sink (the audit log) or,
// without one, to the log.
func (d *Dispatcher) newGuard(p *netpolicy.Policy, tenant, id string) *netpolicy.Guard {
	if d.cfg.NetworkSink != nil {
		return netpolicy.NewGuard(p, func(e api.NetworkEvent) { d.cfg.NetworkSink(tenant, id, e) })
	}
	return netpolicy.NewGuard(p, func(e api.NetworkEvent) {
		d.log.Info("network", "sandbox", id, "host", e.Host, "port", e.Port, "method", e.Method, "path", e.Path,
			"verdict", e.Verdict, "rule", e.Rule, "source", e.Source, "detectors", e.Detectors,
			"bytes_out", e.BytesOut, "bytes_in", e.BytesIn)
	})
}

// SetNetwork puts np in force for the session's new connections and requests at once, also while a
// cell runs: PATCH /v1/sessions/{id}/network. It replaces the whole policy, the grants derived from
// the session's task and intent included (they are for setting up; an empty policy makes the session
// offline). It fails, changing nothing, when np is not inside the ceiling.
func (s *Session) SetNetwork(np api.NetworkPolicy) error {
	p, err := s.d.compileNetwork(&np, "", nil)
	if err != nil {
		return err
	}
	s.guard.Swap(p)
	s.meta.Lock()
	s.netSpec = netSource{network: &np}
	s.meta.Unlock()
	s.d.log.Info("session network changed", "id", s.id, "offline", p.Offline(), "rules", len(p.Grants()))
	return nil
}

// withGuard returns ctx carrying the session's Guard, for its sandboxes on either tier.
func (s *Session) withGuard(ctx context.Context) context.Context {
	return netpolicy.WithGuard(ctx, s.guard)
}

// runID names a run's guard in logs.
func runID() string { return "run_" + newID()[len("ses_"):] }
