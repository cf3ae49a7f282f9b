package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
)

// HeavyEngine is what the server needs of the heavy tier.
type HeavyEngine interface {
	RunCollect(ctx context.Context, req api.RunRequest, stream heavy.Stream, maxFile, maxTotal int64) (*api.Result, *heavy.Output, error)
	NewSession(ctx context.Context, limits api.Limits, packages []string) (*heavy.Session, error)
	PoolReady() int
}

// heavySessionPrefix marks heavy session ids; nano ids start with "ses_".
const heavySessionPrefix = "hvy_"

// heavySessions is the server's registry of heavy sessions, with idle reaping.
type heavySessions struct {
	mu   sync.Mutex
	m    map[string]*heavySession
	ttl  time.Duration
	stop chan struct{}
	once sync.Once
}

type heavySession struct {
	id       string
	s        *heavy.Session
	limits   api.Limits
	ttl      time.Duration
	created  time.Time
	mu       sync.Mutex // one request at a time
	cells    int
	lastUsed time.Time
}

func newHeavySessions(defaultTTL time.Duration) *heavySessions {
	h := &heavySessions{m: map[string]*heavySession{}, ttl: defaultTTL, stop: make(chan struct{})}
	go h.reap()
	return h
}

func (h *heavySessions) reap() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-tick.C:
		}
		h.mu.Lock()
		var idle []*heavySession
		for id, hs := range h.m {
			if hs.mu.TryLock() {
				if time.Since(hs.lastUsed) > hs.ttl {
					idle = append(idle, hs)
					delete(h.m, id)
				}
				hs.mu.Unlock()
			}
		}
		h.mu.Unlock()
		for _, hs := range idle {
			hs.s.Close()
		}
	}
}

// closeAll ends every heavy session (server shutdown).
func (h *heavySessions) closeAll() {
	h.once.Do(func() { close(h.stop) })
	h.mu.Lock()
	all := h.m
	h.m = map[string]*heavySession{}
	h.mu.Unlock()
	for _, hs := range all {
		hs.s.Close()
	}
}

func (h *heavySessions) get(id string) (*heavySession, error) {
	h.mu.Lock()
	hs := h.m[id]
	h.mu.Unlock()
	if hs == nil {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("session %q: %w (unknown id, closed, or idle past its TTL)", id, heavy.ErrSessionGone))
	}
	return hs, nil
}

func (h *heavySessions) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.m)
}

func (h *heavySessions) remove(id string) {
	h.mu.Lock()
	delete(h.m, id)
	h.mu.Unlock()
}

// lock takes the session for one request, refusing instead of queueing.
func (hs *heavySession) lock() error {
	if !hs.mu.TryLock() {
		return errdefs.With(errdefs.Conflict, fmt.Errorf("session %q is busy with another request", hs.id))
	}
	hs.lastUsed = time.Now()
	return nil
}

func (hs *heavySession) info() api.Session {
	return api.Session{ID: hs.id, Tier: api.TierHeavy, Limits: hs.limits, TTLSeconds: int(hs.ttl / time.Second), Cells: hs.cells,
		CreatedAt: hs.created.UTC().Format(time.RFC3339Nano), LastUsedAt: hs.lastUsed.UTC().Format(time.RFC3339Nano)}
}

var errNoHeavy = errdefs.With(errdefs.InvalidArgument, errors.New("tier \"heavy\" is not available on this server (start it with the heavy tier installed: build/heavy/build.sh)"))

// runHeavy runs req on the heavy tier; reason and fallbackFrom are recorded in the result when the
// router chose the tier or a nano run fell back to it.
func (s *Server) runHeavy(w http.ResponseWriter, r *http.Request, st *stream, req api.RunRequest, reason string, fallbackFrom api.Tier) {
	if s.cfg.Heavy == nil {
		if st != nil {
			st.close(nil, errNoHeavy)
			return
		}
		s.fail(w, r, errNoHeavy)
		return
	}
	res, out, err := s.cfg.Heavy.RunCollect(r.Context(), req, st.heavyStream(), s.cfg.MaxFileBytes, s.cfg.MaxFilesBytes)
	var resp api.RunResponse
	if res != nil {
		resp.Result = *res
		resp.RouteReason, resp.FallbackFrom = reason, fallbackFrom
	}
	resp.Files = map[string][]byte{}
	if out != nil {
		resp.Files, resp.FilesOmitted = out.Files, out.Omitted
	}
	s.finish(w, r, st, err, &resp.Result, resp)
}

func (s *Server) createHeavySession(w http.ResponseWriter, r *http.Request, body api.SessionRequest) {
	if s.cfg.Heavy == nil {
		s.fail(w, r, errNoHeavy)
		return
	}
	sess, err := s.cfg.Heavy.NewSession(r.Context(), body.Limits, body.Packages)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var b [12]byte
	rand.Read(b[:])
	ttl := s.heavy.ttl
	if body.TTLSeconds > 0 {
		ttl = time.Duration(body.TTLSeconds) * time.Second
	}
	now := time.Now()
	hs := &heavySession{id: heavySessionPrefix + hex.EncodeToString(b[:]), s: sess, limits: body.Limits, ttl: ttl, created: now, lastUsed: now}
	s.heavy.mu.Lock()
	s.heavy.m[hs.id] = hs
	s.heavy.mu.Unlock()
	w.Header().Set("Location", "/v1/sessions/"+hs.id)
	writeJSON(w, http.StatusCreated, hs.info())
}

// heavyRoute serves the session endpoints for a heavy session id; it reports whether it did.
func (s *Server) heavyRoute(w http.ResponseWriter, r *http.Request, op string) bool {
	id := r.PathValue("id")
	if !strings.HasPrefix(id, heavySessionPrefix) {
		return false
	}
	hs, err := s.heavy.get(id)
	if err != nil {
		s.fail(w, r, err)
		return true
	}
	if op == "get" {
		writeJSON(w, http.StatusOK, hs.info())
		return true
	}
	if err := hs.lock(); err != nil {
		s.fail(w, r, err)
		return true
	}
	locked := true
	unlock := func() {
		if locked {
			locked = false
			hs.mu.Unlock()
		}
	}
	defer unlock()
	ctx := r.Context()
	switch op {
	case "delete":
		s.heavy.remove(id)
		hs.s.Close()
		w.WriteHeader(http.StatusNoContent)
	case "run":
		var body api.SessionRunRequest
		if err := decode(r, &body); err != nil {
			s.fail(w, r, err)
			return true
		}
		st := s.startStream(w, r)
		hs.cells++
		res, err := hs.s.Run(ctx, body.Code, st.heavyStream())
		var out api.Result
		if res != nil {
			out = *res
		}
		if errors.Is(err, heavy.ErrSessionGone) || res != nil && (res.TimedOut || res.MemoryExceeded) {
			s.heavy.remove(id) // its sandbox is gone
		}
		// The session is free again before the answer ends: a client that reads the result and
		// goes on at once must not find it busy.
		unlock()
		s.finish(w, r, st, err, &out, out)
	case "put":
		p, err := sandboxPath(r)
		if err == nil {
			var data []byte
			if data, err = io.ReadAll(r.Body); err == nil {
				err = hs.s.WriteFile(ctx, p, data)
				if err == nil {
					writeJSON(w, http.StatusCreated, api.FileInfo{Name: p[strings.LastIndex(p, "/")+1:], Path: p, Size: int64(len(data)), ModTime: time.Now().UTC().Format(time.RFC3339Nano)})
					return true
				}
			}
		}
		s.fail(w, r, err)
	case "getfile":
		p, err := sandboxPath(r)
		var data []byte
		if err == nil {
			data, err = hs.s.ReadFile(ctx, p)
		}
		if err != nil {
			s.fail(w, r, err)
			return true
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(data)
	case "list":
		dir := r.URL.Query().Get("dir")
		if dir == "" {
			dir = "/"
		}
		entries, err := hs.s.ListFiles(ctx, dir)
		if err != nil {
			s.fail(w, r, err)
			return true
		}
		out := api.FileList{Dir: dir, Files: []api.FileInfo{}}
		for _, e := range entries {
			out.Files = append(out.Files, api.FileInfo{Name: e.Name, Path: e.Path, Size: e.Size, IsDir: e.IsDir,
				ModTime: time.Unix(int64(e.MTime), 0).UTC().Format(time.RFC3339Nano)})
		}
		writeJSON(w, http.StatusOK, out)
	}
	return true
}

func (st *stream) heavyStream() heavy.Stream {
	if st == nil {
		return heavy.Stream{}
	}
	return heavy.Stream{
		Stdout: func(text string) { st.event("stdout", map[string]string{"text": text}) },
		Stderr: func(text string) { st.event("stderr", map[string]string{"text": text}) },
	}
}
