// Package netpolicytest stands in for the egress data plane in tests of the layers above it: Engine
// wraps a tier so that each run and cell asks the Guard in its ctx about one request and records the
// decision, as the proxy does for every connection.
package netpolicytest

import (
	"context"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Engine is a tier whose every run and cell first sends Request (zero: GET pypi.org/simple/ on 443)
// through the Guard in its ctx, if there is one, recording an event of BytesOut and BytesIn.
type Engine struct {
	tier.Engine
	Request           netpolicy.Request
	BytesOut, BytesIn int64
}

func (e Engine) probe(ctx context.Context) {
	g := netpolicy.GuardOf(ctx)
	if g == nil {
		return
	}
	r := e.Request
	if r.Host == "" && !r.Addr.IsValid() {
		r = netpolicy.Request{Host: "pypi.org", Port: 443, Method: "GET", Path: "/simple/"}
	}
	d := g.Decide(r)
	g.Record(api.NetworkEvent{Host: d.Host, Port: r.Port, Method: r.Method, Path: r.Path, Verdict: d.Verdict,
		Rule: d.Rule, Source: d.Source, Reason: d.Reason, BytesOut: e.BytesOut, BytesIn: e.BytesIn})
}

// RunCollect probes, then runs req on the wrapped tier.
func (e Engine) RunCollect(ctx context.Context, req api.RunRequest, st tier.Stream, maxFile, maxTotal int64) (*api.Result, *tier.Collected, error) {
	e.probe(ctx)
	return e.Engine.RunCollect(ctx, req, st, maxFile, maxTotal)
}

// NewSession starts a session on the wrapped tier whose cells probe.
func (e Engine) NewSession(ctx context.Context, lim api.Limits, pkgs []string) (tier.Session, error) {
	s, err := e.Engine.NewSession(ctx, lim, pkgs)
	if err != nil {
		return nil, err
	}
	return session{s, e}, nil
}

type session struct {
	tier.Session
	e Engine
}

func (s session) Run(ctx context.Context, code string, st tier.Stream) (*api.Result, error) {
	s.e.probe(ctx)
	return s.Session.Run(ctx, code, st)
}
