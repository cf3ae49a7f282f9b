package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/feed"
	"github.com/entersandbox/agentbox/internal/limits"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.Encode(v)
}

// fail answers with the error's class as status and {"error": {code, message}}.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	class, body := s.errorBody(r, err)
	if class == errdefs.Overloaded {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, class.HTTPStatus(), body)
}

// Caps on error text: what an answer carries and what the log keeps of an internal error. Messages
// may quote what a guest or a client sent; neither may turn into megabytes of answer or log.
const (
	maxErrorMessage = 4 << 10
	maxLoggedError  = 16 << 10
)

// errorBody is the one rule for error answers, plain or as a stream's error event: the class, and a
// message that is the error's own (capped) unless the error is internal, whose details are ours: they
// are logged under the request id, which is all the answer names.
func (s *Server) errorBody(r *http.Request, err error) (*errdefs.Class, api.ErrorBody) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		err = errdefs.With(errdefs.TooLarge, fmt.Errorf("request body is larger than %d bytes", tooBig.Limit))
	}
	class := errdefs.ClassOf(err)
	s.metrics.errors.WithLabelValues(class.Name()).Inc()
	id := fmt.Sprint(r.Context().Value(requestIDKey))
	msg := limits.Text(err.Error(), maxErrorMessage)
	if class == errdefs.Internal {
		s.log.Error("internal error", "id", id, "err", limits.Text(err.Error(), maxLoggedError))
		msg = "internal error (request " + id + ")"
	}
	return class, api.ErrorBody{Error: api.ErrorDetail{Code: class.Name(), Message: msg}}
}

// jsonHint tells curl users, whose -d sends application/x-www-form-urlencoded, how to send JSON.
const jsonHint = "send the body as JSON with Content-Type: application/json (with curl -d, add -H 'Content-Type: application/json')"

// decode reads one JSON object into v, rejecting other content types, other JSON values (null would
// leave every field at its zero value), unknown fields and trailing data.
func decode(r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return errdefs.With(errdefs.InvalidArgument, errors.New("no Content-Type: "+jsonHint))
	}
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("content type %q: %s", limits.Text(ct, 256), jsonHint))
	}
	body := bufio.NewReader(r.Body)
	if err := startsObject(body); err != nil {
		return err
	}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("invalid JSON body: %w", err))
	}
	if dec.More() {
		return errdefs.With(errdefs.InvalidArgument, errors.New("invalid JSON body: more than one value"))
	}
	return nil
}

// startsObject checks that the next non-space byte of body opens a JSON object, and leaves it unread.
func startsObject(body *bufio.Reader) error {
	for {
		c, err := body.ReadByte()
		if errors.Is(err, io.EOF) {
			return errdefs.With(errdefs.InvalidArgument, errors.New("request body is empty: send a JSON object"))
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return err
			}
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("reading the body: %w", err))
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '{':
			return body.UnreadByte()
		}
		return errdefs.With(errdefs.InvalidArgument, errors.New("request body must be a JSON object {...}"))
	}
}

// errNoCode refuses a run without code: a body of {} must not run an empty program.
var errNoCode = errdefs.With(errdefs.InvalidArgument, errors.New(`"code" is required (an empty program is "code": "")`))

// nonNullResults makes a result's missing outputs an empty list, which the contract asks for.
func nonNullResults(res *api.Result) {
	if res.Results == nil {
		res.Results = []api.Output{}
	}
}

// nonNull makes the empty contents in a run's answer empty strings: a nil []byte (how an empty file
// reads) would encode as null, which the contract does not allow.
func nonNull(resp *api.RunResponse) {
	nonNullResults(&resp.Result)
	for p, data := range resp.Files {
		if data == nil {
			resp.Files[p] = []byte{}
		}
	}
	for i := range resp.Artifacts {
		if resp.Artifacts[i].Data == nil {
			resp.Artifacts[i].Data = []byte{}
		}
	}
}

func (s *Server) run(w http.ResponseWriter, r *http.Request) {
	var in struct {
		api.RunBody
		Code *string `json:"code"` // shadows RunBody's, to tell a missing code from an empty one
	}
	if err := decode(r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	if in.Code == nil {
		s.fail(w, r, errNoCode)
		return
	}
	body := in.RunBody
	body.Code = *in.Code
	req := api.RunRequest{Code: body.Code, Filename: body.Filename, Tier: body.Tier, Limits: body.Limits, Stdin: body.Stdin, Packages: body.Packages,
		Network: body.Network, Task: body.Task, Intent: body.Intent, Script: body.Script, Env: body.Env}
	paths := make([]string, 0, len(body.Files))
	for p := range body.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		req.Files = append(req.Files, api.File{Path: p, Data: body.Files[p]})
	}
	st := s.startStream(w, r)
	start := time.Now()
	resp, err := s.sb.Run(r.Context(), req, s.output(st))
	var res *api.Result
	if resp != nil {
		res = &resp.Result
	}
	if s.cfg.Audit != nil { // the events are not even built without a log: runs are the hot path
		if len(req.Packages) > 0 {
			if aerr := s.record(r.Context(), installEvent("", req.Packages, err)); aerr != nil {
				err = aerr
			}
		}
		if aerr := s.record(r.Context(), runEvent(req.Code, "", req.Tier, req.Limits, req.Packages, len(req.Files), res, err, time.Since(start))); aerr != nil {
			err = aerr
		}
	}
	if resp == nil {
		resp = &api.RunResponse{}
	}
	nonNull(resp)
	s.finish(w, r, st, err, &resp.Result, resp)
}

// output sends a run's output to the stream (when there is one) and records a nano attempt that
// fell back to heavy.
func (s *Server) output(st *stream) dispatch.Output {
	out := dispatch.Output{Fallback: func(failed *api.Result, reason string) {
		s.metrics.observe(failed)
		if st != nil {
			st.event("fallback", map[string]string{"from": string(failed.Tier), "reason": reason})
		}
	}}
	if st != nil {
		out.Stdout = func(text string) { st.event("stdout", map[string]string{"text": text}) }
		out.Stderr = func(text string) { st.event("stderr", map[string]string{"text": text}) }
		out.Output = func(o api.Output) { st.event("output", o) }
	}
	return out
}

// finish records the run and writes its answer: a result event on a stream, JSON otherwise.
func (s *Server) finish(w http.ResponseWriter, r *http.Request, st *stream, err error, res *api.Result, body any) {
	if err == nil {
		s.metrics.observe(res)
	}
	if st == nil {
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, body)
		return
	}
	if err != nil {
		_, eb := s.errorBody(r, err)
		st.close("error", eb)
		return
	}
	st.close("result", body)
}

func (s *Server) createSession(w http.ResponseWriter, r *http.Request) {
	var body api.SessionRequest
	if err := decode(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	sess, err := s.sb.NewSession(r.Context(), body)
	e := audit.Event{Type: audit.TypeSessionCreate, Details: map[string]any{"tier_requested": string(body.Tier), "limits": body.Limits, "ttl_s": body.TTLSeconds}}
	var info api.Session
	if err != nil {
		e.Verdict, e.Details["error_type"], e.Details["message"] = audit.VerdictError, errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	} else {
		info = sess.Info()
		e.Session, e.Tier, e.Details["route_reason"], e.Details["ttl_s"] = info.ID, string(info.Tier), info.RouteReason, info.TTLSeconds
	}
	if len(body.Packages) > 0 {
		e.Details["packages"] = body.Packages
		if aerr := s.record(r.Context(), installEvent(info.ID, body.Packages, err)); aerr != nil && err == nil {
			err = aerr
		}
	}
	if aerr := s.record(r.Context(), e); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		if sess != nil {
			sess.Close() // not acknowledged, so not left open
		}
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sessions/"+sess.ID())
	writeJSON(w, http.StatusCreated, info)
}

func (s *Server) session(w http.ResponseWriter, r *http.Request) *dispatch.Session {
	sess, err := s.sb.Session(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return nil
	}
	return sess
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	if sess := s.session(w, r); sess != nil {
		writeJSON(w, http.StatusOK, sess.Info())
	}
}

func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request) {
	if sess := s.session(w, r); sess != nil {
		info := sess.Info()
		sess.Close()
		if err := s.record(r.Context(), audit.Event{Type: audit.TypeSessionClose, Session: info.ID, Tier: string(info.Tier),
			Details: map[string]any{"cells": info.Cells, "reason": "client"}}); err != nil {
			s.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// setNetwork is PATCH /v1/sessions/{id}/network.
func (s *Server) setNetwork(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	var body api.NetworkPolicy
	if err := decode(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	err := sess.SetNetwork(body)
	ev := audit.Event{Type: audit.TypePolicyChange, Session: sess.ID(), Details: networkDetails(body)}
	if err != nil {
		ev.Verdict, ev.Details["error"] = audit.VerdictDeny, err.Error()
	}
	if rerr := s.record(r.Context(), ev); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// networkDetails is what the audit log keeps of a network policy: its rules and modes, and of its
// secrets only where they go (never their values).
func networkDetails(p api.NetworkPolicy) map[string]any {
	hosts := func(rules []api.HostRule) []string {
		out := make([]string, 0, len(rules))
		for _, r := range rules {
			out = append(out, r.Host)
		}
		return out
	}
	secrets := make([]string, 0, len(p.Secrets))
	for _, sr := range p.Secrets {
		secrets = append(secrets, sr.Header+"@"+sr.Host)
	}
	d := map[string]any{"scope": "session.network", "allow": hosts(p.Allow), "deny": hosts(p.Deny), "dlp": p.DLP,
		"secrets": secrets}
	if p.InspectTLS != nil {
		d["inspect_tls"] = *p.InspectTLS
	}
	return d
}

func (s *Server) sessionRun(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	var body struct {
		Code *string `json:"code"`
	}
	if err := decode(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	if body.Code == nil {
		s.fail(w, r, errNoCode)
		return
	}
	st := s.startStream(w, r)
	before, start := sess.Info(), time.Now()
	res, err := sess.Run(r.Context(), *body.Code, s.output(st))
	if after := sess.Info(); s.cfg.Audit != nil && after.Tier != before.Tier {
		if aerr := s.record(r.Context(), audit.Event{Type: audit.TypeSessionMove, Session: after.ID, Tier: string(after.Tier),
			Details: map[string]any{"from": string(before.Tier), "to": string(after.Tier), "reason": after.RouteReason}}); aerr != nil {
			err = aerr
		}
	}
	if s.cfg.Audit != nil {
		if aerr := s.record(r.Context(), runEvent(*body.Code, sess.ID(), before.Tier, before.Limits, nil, 0, res, err, time.Since(start))); aerr != nil {
			err = aerr
		}
	}
	var out api.Result
	if res != nil {
		out = *res
	}
	nonNullResults(&out)
	s.finish(w, r, st, err, &out, out)
}

// sandboxPath turns the {path...} wildcard into an absolute sandbox path.
func sandboxPath(r *http.Request) string { return "/" + r.PathValue("path") }

func (s *Server) putFile(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := sandboxPath(r)
	if err := sess.WriteFile(r.Context(), p, data); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.record(r.Context(), fileEvent(audit.TypeFileUpload, sess, p, data)); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.FileInfo{Name: p[strings.LastIndex(p, "/")+1:], Path: p, Size: int64(len(data)),
		ModTime: time.Now().UTC().Format(time.RFC3339Nano)})
}

func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	data, err := sess.ReadFile(r.Context(), sandboxPath(r), s.cfg.MaxBodyBytes)
	if err == nil {
		err = s.record(r.Context(), fileEvent(audit.TypeFileDownload, sess, sandboxPath(r), data))
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.Write(data)
}

func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	dir := r.URL.Query().Get("dir")
	if dir == "" {
		dir = "/"
	}
	files, err := sess.ListFiles(r.Context(), dir)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.FileList{Dir: dir, Files: files})
}

// stream is a server-sent-event response: stdout/stderr and output events as the program makes them,
// then one result event (or error event). Output is queued and written by its own goroutine, so a
// slow client never blocks the guest; the queue is bounded by the run's output and result caps.
// stream is one Server-Sent Events answer.
type stream struct{ f *feed.Writer }

func (s *Server) startStream(w http.ResponseWriter, r *http.Request) *stream {
	if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		return nil
	}
	w.Header().Set("Content-Type", "text/event-stream")
	return &stream{f: feed.Start(w, 0, nil)}
}

func sseEvent(name string, v any) []byte {
	data, _ := json.Marshal(v)
	return fmt.Appendf(nil, "event: %s\ndata: %s\n\n", name, data)
}

func (st *stream) event(name string, v any) { st.f.Write(sseEvent(name, v)) }

// close sends the final event and waits for the queue to drain.
func (st *stream) close(event string, v any) { st.f.Close(sseEvent(event, v)) }
