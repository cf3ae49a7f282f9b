package server

import (
	"context"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/e2b"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// auditedE2B records what the E2B surface does with sessions as the HTTP API records its own
// requests (session.create, run, file.upload, file.download, session.close; details.source "e2b"),
// before the E2B request is answered. The E2B layer's own cells (environment variables, directory
// changes) are runs in the sandbox and recorded as such.
type auditedE2B struct {
	e2b.Sandboxes
	s *Server
}

func (a auditedE2B) NewSession(ctx context.Context, req api.SessionRequest) (e2b.Session, error) {
	sess, err := a.Sandboxes.NewSession(ctx, req)
	e := audit.Event{Type: audit.TypeSessionCreate, Details: map[string]any{"tier_requested": string(req.Tier), "ttl_s": req.TTLSeconds, "source": "e2b"}}
	if err != nil {
		e.Verdict, e.Details["error_type"], e.Details["message"] = audit.VerdictError, errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	} else {
		info := sess.Info()
		e.Session, e.Tier, e.Details["route_reason"] = info.ID, string(info.Tier), info.RouteReason
	}
	if aerr := a.s.record(ctx, e); aerr != nil {
		if sess != nil {
			sess.Close() // not acknowledged, so not left open
		}
		return nil, aerr
	}
	if err != nil {
		return nil, err
	}
	return auditedSession{sess, a.s}, nil
}

func (a auditedE2B) Session(ctx context.Context, id string) (e2b.Session, error) {
	sess, err := a.Sandboxes.Session(ctx, id)
	if err != nil {
		return nil, err
	}
	return auditedSession{sess, a.s}, nil
}

type auditedSession struct {
	e2b.Session
	s *Server
}

func (a auditedSession) Run(ctx context.Context, code string, out dispatch.Output) (*api.Result, error) {
	before, start := a.Info(), time.Now()
	res, err := a.Session.Run(ctx, code, out)
	e := runEvent(code, before.ID, before.Tier, before.Limits, nil, 0, res, err, time.Since(start))
	e.Details["source"] = "e2b"
	if aerr := a.s.record(ctx, e); aerr != nil {
		return nil, aerr
	}
	return res, err
}

func (a auditedSession) WriteFile(ctx context.Context, p string, data []byte) error {
	if err := a.Session.WriteFile(ctx, p, data); err != nil {
		return err
	}
	e := fileEvent(audit.TypeFileUpload, a, p, data)
	e.Details["source"] = "e2b"
	return a.s.record(ctx, e)
}

func (a auditedSession) ReadFile(ctx context.Context, p string, max int64) ([]byte, error) {
	data, err := a.Session.ReadFile(ctx, p, max)
	if err != nil {
		return nil, err
	}
	e := fileEvent(audit.TypeFileDownload, a, p, data)
	e.Details["source"] = "e2b"
	if err := a.s.record(ctx, e); err != nil {
		return nil, err
	}
	return data, nil
}

// Fork records a session.fork as POST /v1/sessions/{id}/fork does; the fork is audited like its
// parent.
func (a auditedSession) Fork(ctx context.Context, req api.ForkRequest) (e2b.Session, error) {
	f, err := a.Session.Fork(ctx, req)
	ev := audit.Event{Type: audit.TypeSessionFork, Session: a.ID(), Details: map[string]any{"step": req.Step, "ttl_s": req.TTLSeconds, "source": "e2b"}}
	if err != nil {
		ev.Verdict, ev.Details["error_type"], ev.Details["message"] = audit.VerdictError, errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	} else {
		info := f.Info()
		ev.Tier, ev.Details["fork"] = string(info.Tier), info.ID
	}
	if aerr := a.s.record(ctx, ev); aerr != nil {
		if f != nil {
			f.Close() // not acknowledged, so not left open
		}
		return nil, aerr
	}
	if err != nil {
		return nil, err
	}
	return auditedSession{f, a.s}, nil
}

func (a auditedSession) Close() {
	info := a.Info()
	a.Session.Close()
	// A close has no request left to fail; a record that cannot be written is logged by record.
	a.s.record(context.Background(), audit.Event{Type: audit.TypeSessionClose, Actor: info.Owner, Session: info.ID, Tier: string(info.Tier),
		Details: map[string]any{"cells": info.Cells, "reason": "e2b", "source": "e2b"}})
}
