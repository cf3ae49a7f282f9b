package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// Time travel: the session's step log, rewind, fork and pins (docs/time-travel.md).

// stepSessions finds sessions for their steps, closed ones with pinned steps included
// (*dispatch.Dispatcher); a Sandboxes without it serves the open sessions only.
type stepSessions interface {
	StepSession(ctx context.Context, id string) (*dispatch.Session, error)
}

func (s *Server) stepRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/sessions/{id}/steps", s.listSteps)
	mux.HandleFunc("GET /v1/sessions/{id}/steps/{n}", s.getStep)
	mux.HandleFunc("GET /v1/sessions/{id}/steps/{n}/files/{path...}", s.getStepFile)
	mux.HandleFunc("POST /v1/sessions/{id}/steps/{n}/pin", func(w http.ResponseWriter, r *http.Request) { s.pinStep(w, r, true) })
	mux.HandleFunc("DELETE /v1/sessions/{id}/steps/{n}/pin", func(w http.ResponseWriter, r *http.Request) { s.pinStep(w, r, false) })
	mux.HandleFunc("POST /v1/sessions/{id}/rewind", s.rewind)
	mux.HandleFunc("POST /v1/sessions/{id}/fork", s.fork)
}

// stepSession is the session of a step route, closed ones with pinned steps included.
func (s *Server) stepSession(w http.ResponseWriter, r *http.Request) *dispatch.Session {
	ss, ok := s.sb.(stepSessions)
	if !ok {
		return s.session(w, r)
	}
	sess, err := ss.StepSession(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return nil
	}
	return sess
}

// stepNumber is the {n} of a step route.
func stepNumber(r *http.Request) (int, error) {
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 0 {
		return 0, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("step %q: want a step number (0, 1, ...)", limits.Text(r.PathValue("n"), 64)))
	}
	return n, nil
}

func (s *Server) listSteps(w http.ResponseWriter, r *http.Request) {
	if sess := s.stepSession(w, r); sess != nil {
		writeJSON(w, http.StatusOK, sess.Steps())
	}
}

func (s *Server) getStep(w http.ResponseWriter, r *http.Request) {
	sess := s.stepSession(w, r)
	if sess == nil {
		return
	}
	n, err := stepNumber(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d, err := sess.Step(n)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if d.Result != nil {
		res := *d.Result
		nonNullResults(&res)
		d.Result = &res
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) getStepFile(w http.ResponseWriter, r *http.Request) {
	sess := s.stepSession(w, r)
	if sess == nil {
		return
	}
	n, err := stepNumber(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := sandboxPath(r)
	data, err := sess.StepFile(r.Context(), n, p, s.cfg.MaxBodyBytes)
	if err == nil {
		ev := fileEvent(audit.TypeFileDownload, sess, p, data)
		ev.Details["step"] = n
		err = s.record(r.Context(), ev)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.Write(data)
}

func (s *Server) pinStep(w http.ResponseWriter, r *http.Request, pin bool) {
	sess := s.stepSession(w, r)
	if sess == nil {
		return
	}
	n, err := stepNumber(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	err = sess.Pin(n, pin)
	ev := audit.Event{Type: audit.TypeStepPin, Session: sess.ID(), Details: map[string]any{"step": n, "pinned": pin}}
	if err != nil {
		ev.Verdict, ev.Details["error"] = audit.VerdictError, limits.Text(err.Error(), audit.MaxValue)
	}
	if aerr := s.record(r.Context(), ev); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// decodeStep reads a RewindRequest or ForkRequest, insisting on "step".
func decodeStep(r *http.Request, v any, step **int) error {
	if err := decode(r, v); err != nil {
		return err
	}
	if *step == nil {
		return errdefs.With(errdefs.InvalidArgument, errors.New(`"step" is required (GET .../steps lists them)`))
	}
	return nil
}

func (s *Server) rewind(w http.ResponseWriter, r *http.Request) {
	sess := s.stepSession(w, r)
	if sess == nil {
		return
	}
	var body struct {
		Step *int `json:"step"`
	}
	if err := decodeStep(r, &body, &body.Step); err != nil {
		s.fail(w, r, err)
		return
	}
	before := sess.Info()
	err := sess.Rewind(r.Context(), *body.Step)
	info := sess.Info()
	ev := audit.Event{Type: audit.TypeSessionRewind, Session: sess.ID(), Tier: string(info.Tier),
		Details: map[string]any{"step": *body.Step, "from_step": before.CurrentStep, "from_tier": string(before.Tier)}}
	if err != nil {
		ev.Verdict, ev.Details["error_type"], ev.Details["message"] = audit.VerdictError, errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	}
	if aerr := s.record(r.Context(), ev); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	sess := s.stepSession(w, r)
	if sess == nil {
		return
	}
	var body struct {
		api.ForkRequest
		Step *int `json:"step"`
	}
	if err := decodeStep(r, &body, &body.Step); err != nil {
		s.fail(w, r, err)
		return
	}
	body.ForkRequest.Step = *body.Step
	f, err := sess.Fork(r.Context(), body.ForkRequest)
	ev := audit.Event{Type: audit.TypeSessionFork, Session: sess.ID(), Details: map[string]any{"step": *body.Step, "ttl_s": body.TTLSeconds}}
	var info api.Session
	if err != nil {
		ev.Verdict, ev.Details["error_type"], ev.Details["message"] = audit.VerdictError, errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	} else {
		info = f.Info()
		ev.Tier, ev.Details["fork"] = string(info.Tier), info.ID
	}
	if aerr := s.record(r.Context(), ev); aerr != nil && err == nil {
		f.Close() // not acknowledged, so not left open
		err = aerr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sessions/"+info.ID)
	writeJSON(w, http.StatusCreated, info)
}
