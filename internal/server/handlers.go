package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/vfs"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.Encode(v)
}

// fail answers with the error's class as status and {"error": {code, message}}.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		err = errdefs.With(errdefs.TooLarge, fmt.Errorf("request body is larger than %d bytes", tooBig.Limit))
	}
	class := errdefs.ClassOf(err)
	s.metrics.errors.WithLabelValues(class.Name()).Inc()
	if class == errdefs.Overloaded {
		w.Header().Set("Retry-After", "1")
	}
	msg := err.Error()
	if class == errdefs.Internal {
		s.log.Error("internal error", "id", r.Context().Value(requestIDKey), "err", err)
		msg = "internal error (request " + fmt.Sprint(r.Context().Value(requestIDKey)) + ")"
	}
	writeJSON(w, class.HTTPStatus(), api.ErrorBody{Error: api.ErrorDetail{Code: class.Name(), Message: msg}})
}

// decode reads one JSON object into v, rejecting unknown fields and trailing data.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("content type %q: send application/json", ct))
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return errdefs.With(errdefs.InvalidArgument, errors.New("request body is empty: send a JSON object"))
		}
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("invalid JSON body: %w", err))
	}
	if dec.More() {
		return errdefs.With(errdefs.InvalidArgument, errors.New("invalid JSON body: more than one value"))
	}
	return nil
}

// checkPlacement refuses an unknown tier, and packages on the nano tier.
func checkPlacement(t api.Tier, pkgs []string) error {
	if len(pkgs) > 0 && t == api.TierNano {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("packages %v need tier \"heavy\"; the nano tier has the standard library only", pkgs))
	}
	return checkTier(t)
}

func checkTier(t api.Tier) error {
	switch t {
	case "", api.TierNano, api.TierAuto:
		return nil
	case api.TierHeavy:
		return nil
	}
	return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("unknown tier %q (want nano, heavy or auto)", t))
}

func (s *Server) run(w http.ResponseWriter, r *http.Request) {
	var body api.RunBody
	if err := decode(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := checkPlacement(body.Tier, body.Packages); err != nil {
		s.fail(w, r, err)
		return
	}
	req := api.RunRequest{Code: body.Code, Filename: body.Filename, Tier: api.TierNano, Limits: body.Limits, Stdin: body.Stdin, Packages: body.Packages}
	paths := make([]string, 0, len(body.Files))
	for p := range body.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		req.Files = append(req.Files, api.File{Path: p, Data: body.Files[p]})
	}
	reason := ""
	if body.Tier == "" || body.Tier == api.TierAuto {
		d := s.cfg.Rules.Decide(req)
		reason = d.Reason
		if d.Tier == api.TierHeavy && s.cfg.Heavy == nil {
			// Say so rather than refuse: the run may still work, and the result carries the reason.
			d.Tier, reason = api.TierNano, d.Reason+"; the heavy tier is not available here, so it ran on nano"
		}
		body.Tier = d.Tier
	}
	st := s.startStream(w, r)
	if body.Tier == api.TierHeavy {
		req.Tier = api.TierHeavy
		s.runHeavy(w, r, st, req, reason, "")
		return
	}
	var resp api.RunResponse
	err := s.eng.RunInstance(r.Context(), req, func(res *api.Result, sfs *vfs.FS) error {
		resp.Result = *res
		resp.Files, resp.FilesOmitted = s.collectOutput(sfs)
		return nil
	}, st.options()...)
	resp.RouteReason = reason
	if err == nil && reason != "" && s.cfg.Heavy != nil {
		if why, ok := s.cfg.Rules.Fallback(&resp.Result); ok {
			s.metrics.observe(&resp.Result)
			if st != nil {
				st.event("fallback", map[string]string{"from": string(api.TierNano), "reason": why})
			}
			req.Tier = api.TierHeavy
			s.runHeavy(w, r, st, req, why, api.TierNano)
			return
		}
	}
	s.finish(w, r, st, err, &resp.Result, resp)
}

// collectOutput gathers the files under /output within the size caps.
func (s *Server) collectOutput(sfs *vfs.FS) (map[string][]byte, []string) {
	files := map[string][]byte{}
	var omitted []string
	var total int64
	sfs.Walk(nano.DirOutput, func(p string, size int64) error {
		if size > s.cfg.MaxFileBytes || total+size > s.cfg.MaxFilesBytes {
			omitted = append(omitted, p)
			return nil
		}
		data, err := sfs.ReadFile(p, s.cfg.MaxFileBytes)
		if err != nil {
			omitted = append(omitted, p)
			return nil
		}
		total += int64(len(data))
		files[p] = data
		return nil
	})
	return files, omitted
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
	st.close(body, err)
}

func (s *Server) createSession(w http.ResponseWriter, r *http.Request) {
	var body api.SessionRequest
	if err := decode(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := checkPlacement(body.Tier, body.Packages); err != nil {
		s.fail(w, r, err)
		return
	}
	if body.TTLSeconds < 0 {
		s.fail(w, r, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("ttl_s is negative (%d)", body.TTLSeconds)))
		return
	}
	// A session has no code yet to route by: tier auto means nano unless it needs packages.
	if body.Tier == api.TierHeavy || (len(body.Packages) > 0 && s.cfg.Heavy != nil) {
		s.createHeavySession(w, r, body)
		return
	}
	if len(body.Packages) > 0 {
		s.fail(w, r, errNoHeavy)
		return
	}
	sess, err := s.eng.NewSession(r.Context(), body.Limits, time.Duration(body.TTLSeconds)*time.Second)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sessions/"+sess.ID())
	writeJSON(w, http.StatusCreated, sessionJSON(sess.Info()))
}

func sessionJSON(info nano.SessionInfo) api.Session {
	return api.Session{ID: info.ID, Tier: info.Tier, Limits: info.Limits, TTLSeconds: int(info.TTL / time.Second),
		Cells: info.Cells, CreatedAt: info.Created.UTC().Format(time.RFC3339Nano), LastUsedAt: info.LastUsed.UTC().Format(time.RFC3339Nano)}
}

func (s *Server) session(w http.ResponseWriter, r *http.Request) *nano.Session {
	sess, err := s.eng.Session(r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return nil
	}
	return sess
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	if s.heavyRoute(w, r, "get") {
		return
	}
	if sess := s.session(w, r); sess != nil {
		writeJSON(w, http.StatusOK, sessionJSON(sess.Info()))
	}
}

func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request) {
	if s.heavyRoute(w, r, "delete") {
		return
	}
	if sess := s.session(w, r); sess != nil {
		sess.Close(r.Context())
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) sessionRun(w http.ResponseWriter, r *http.Request) {
	if s.heavyRoute(w, r, "run") {
		return
	}
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	var body api.SessionRunRequest
	if err := decode(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	st := s.startStream(w, r)
	res, err := sess.Run(r.Context(), body.Code, st.options()...)
	var out api.Result
	if res != nil {
		out = *res
	}
	s.finish(w, r, st, err, &out, out)
}

// sandboxPath turns the {path...} wildcard into an absolute sandbox path.
func sandboxPath(r *http.Request) (string, error) {
	p := "/" + r.PathValue("path")
	if err := nano.ValidatePath(p); err != nil {
		return "", errdefs.With(errdefs.InvalidArgument, err)
	}
	return p, nil
}

// fileTarget answers file requests for heavy sessions itself (as op) and otherwise returns the nano
// session and the sandbox path the request names; ok is false when the request has been answered.
func (s *Server) fileTarget(w http.ResponseWriter, r *http.Request, op string) (sess *nano.Session, p string, ok bool) {
	if s.heavyRoute(w, r, op) {
		return nil, "", false
	}
	if sess = s.session(w, r); sess == nil {
		return nil, "", false
	}
	p, err := sandboxPath(r)
	if err != nil {
		s.fail(w, r, err)
		return nil, "", false
	}
	return sess, p, true
}

func (s *Server) putFile(w http.ResponseWriter, r *http.Request) {
	sess, p, ok := s.fileTarget(w, r, "put")
	if !ok {
		return
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	err = sess.WithFS(func(sfs *vfs.FS) error { return sfs.WriteFile(p, data, 0o644) })
	if err != nil {
		s.fail(w, r, fsError(err))
		return
	}
	writeJSON(w, http.StatusCreated, api.FileInfo{Name: p[strings.LastIndex(p, "/")+1:], Path: p, Size: int64(len(data)),
		ModTime: time.Now().UTC().Format(time.RFC3339Nano)})
}

func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	sess, p, ok := s.fileTarget(w, r, "getfile")
	if !ok {
		return
	}
	var data []byte
	err := sess.WithFS(func(sfs *vfs.FS) error {
		var err error
		data, err = sfs.ReadFile(p, s.cfg.MaxBodyBytes)
		return err
	})
	if err != nil {
		s.fail(w, r, fsError(err))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.Write(data)
}

func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) {
	if s.heavyRoute(w, r, "list") {
		return
	}
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	dir := r.URL.Query().Get("dir")
	if dir == "" {
		dir = "/"
	}
	if err := nano.ValidatePath(dir); err != nil {
		s.fail(w, r, errdefs.With(errdefs.InvalidArgument, err))
		return
	}
	var entries []vfs.Entry
	err := sess.WithFS(func(sfs *vfs.FS) error {
		var err error
		entries, err = sfs.ReadDir(dir)
		return err
	})
	if err != nil {
		s.fail(w, r, fsError(err))
		return
	}
	out := api.FileList{Dir: dir, Files: []api.FileInfo{}}
	for _, e := range entries {
		out.Files = append(out.Files, api.FileInfo{Name: e.Name, Path: e.Path, Size: e.Size, IsDir: e.IsDir,
			ModTime: e.ModTime.Format(time.RFC3339Nano)})
	}
	writeJSON(w, http.StatusOK, out)
}

// fsError classifies a sandbox filesystem error for HTTP.
func fsError(err error) error {
	switch {
	case errdefs.ClassOf(err) != errdefs.Internal:
		return err
	case errors.Is(err, fs.ErrNotExist):
		return errdefs.With(errdefs.NotFound, err)
	case errors.Is(err, vfs.ErrNoSpace):
		return errdefs.With(errdefs.TooLarge, err)
	case errors.Is(err, fs.ErrInvalid), errors.Is(err, fs.ErrPermission), errors.Is(err, fs.ErrExist):
		return errdefs.With(errdefs.InvalidArgument, err)
	}
	return err
}

// stream is a server-sent-event response: stdout/stderr events as the program writes, then one result
// event (or error event). Output is queued and written by its own goroutine, so a slow client never
// blocks the guest; the queue is bounded by the run's output caps.
type stream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	mu      sync.Mutex
	queue   bytes.Buffer
	wake    chan struct{}
	done    chan struct{}
	closing bool
}

func (s *Server) startStream(w http.ResponseWriter, r *http.Request) *stream {
	if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		return nil
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	st := &stream{w: w, rc: http.NewResponseController(w), wake: make(chan struct{}, 1), done: make(chan struct{})}
	st.rc.Flush()
	go st.pump()
	return st
}

func (st *stream) options() []nano.ExecOption {
	if st == nil {
		return nil
	}
	return []nano.ExecOption{nano.WithStream(
		func(b []byte) { st.event("stdout", map[string]string{"text": string(b)}) },
		func(b []byte) { st.event("stderr", map[string]string{"text": string(b)}) })}
}

func (st *stream) event(name string, v any) {
	data, _ := json.Marshal(v)
	st.mu.Lock()
	fmt.Fprintf(&st.queue, "event: %s\ndata: %s\n\n", name, data)
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *stream) pump() {
	defer close(st.done)
	for range st.wake {
		st.mu.Lock()
		chunk := bytes.Clone(st.queue.Bytes())
		st.queue.Reset()
		closing := st.closing
		st.mu.Unlock()
		if len(chunk) > 0 {
			st.rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := st.w.Write(chunk); err != nil {
				return
			}
			st.rc.Flush()
		}
		if closing {
			return
		}
	}
}

// close sends the final event and waits for the queue to drain.
func (st *stream) close(result any, err error) {
	if err != nil {
		class := errdefs.ClassOf(err)
		st.event("error", api.ErrorBody{Error: api.ErrorDetail{Code: class.Name(), Message: err.Error()}})
	} else {
		st.event("result", result)
	}
	st.mu.Lock()
	st.closing = true
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
	<-st.done
}
