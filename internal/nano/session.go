package nano

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/vfs"
)

// Session keeps one interpreter alive across runs, like a notebook kernel: variables, imports and
// files persist until it is closed, its interpreter dies (a timeout or crash), or it stays idle past
// the engine's SessionTTL.
type Session struct {
	id     string
	eng    *Engine
	limits api.Limits
	ttl    time.Duration

	mu       sync.Mutex // one run at a time
	inst     *instance
	cells    int
	created  time.Time
	lastUsed time.Time
	closed   bool
}

// ErrSessionGone is returned for a session that was closed, reaped or whose interpreter died.
var ErrSessionGone = errors.New("session is closed")

// SessionInfo describes a session.
type SessionInfo struct {
	ID       string        `json:"id"`
	Tier     api.Tier      `json:"tier"`
	Limits   api.Limits    `json:"limits"`
	TTL      time.Duration `json:"ttl"`
	Cells    int           `json:"cells"`
	Created  time.Time     `json:"created"`
	LastUsed time.Time     `json:"last_used"`
	Alive    bool          `json:"alive"`
}

// maxSessionTTL bounds a session's requested idle TTL.
const maxSessionTTL = 24 * time.Hour

// NewSession starts a session with the given limits (zero fields take the engine's defaults) that is
// closed after ttl of idleness (zero: the engine's SessionTTL).
func (e *Engine) NewSession(ctx context.Context, limits api.Limits, ttl time.Duration) (*Session, error) {
	lim, err := e.Limits(limits)
	if err != nil {
		return nil, err
	}
	switch {
	case ttl < 0 || ttl > maxSessionTTL:
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("session TTL %v is outside 0 to %v", ttl, maxSessionTTL))
	case ttl == 0:
		ttl = e.cfg.SessionTTL
	}
	if e.closed.Load() {
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	// The place is reserved before the interpreter is restored and given back if that fails: checking
	// the count and registering later let parallel calls all pass the check.
	e.sessMu.Lock()
	if e.sessOpen >= e.cfg.MaxSessions {
		e.sessMu.Unlock()
		return nil, errdefs.With(errdefs.Overloaded, fmt.Errorf("%d sessions are open, the most this server allows", e.cfg.MaxSessions))
	}
	e.sessOpen++
	e.sessMu.Unlock()
	inst, err := e.take(ctx)
	if err != nil {
		e.sessMu.Lock()
		e.sessOpen--
		e.sessMu.Unlock()
		return nil, err
	}
	now := time.Now()
	s := &Session{id: newID(), eng: e, limits: lim, ttl: ttl, inst: inst, created: now, lastUsed: now}
	e.sessMu.Lock()
	e.sessions[s.id] = s
	e.sessMu.Unlock()
	if e.closed.Load() {
		// Close may have collected the sessions before this one registered.
		s.Close(ctx)
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	return s, nil
}

func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return "ses_" + hex.EncodeToString(b[:])
}

// ID is the session's identifier.
func (s *Session) ID() string { return s.id }

// Info describes the session.
func (s *Session) Info() SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SessionInfo{ID: s.id, Tier: api.TierNano, Limits: s.limits, TTL: s.ttl, Cells: s.cells, Created: s.created,
		LastUsed: s.lastUsed, Alive: !s.closed && !s.inst.dead}
}

// ErrSessionBusy is returned when a session is asked to do two things at once.
var ErrSessionBusy = errors.New("session is busy with another request")

// lock takes the session for one operation, refusing instead of queueing behind a running cell.
func (s *Session) lock() error {
	if !s.mu.TryLock() {
		return errdefs.With(errdefs.Conflict, fmt.Errorf("session %q: %w", s.id, ErrSessionBusy))
	}
	return nil
}

// Run executes code in the session's interpreter. A timeout, crash or os._exit ends the interpreter;
// the result says so and later calls fail with ErrSessionGone. A session runs one request at a time;
// another one meanwhile fails with ErrSessionBusy (errdefs.Conflict).
func (s *Session) Run(ctx context.Context, code string, opts ...ExecOption) (*api.Result, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	slot, err := s.eng.admit(ctx)
	if err != nil {
		return nil, err
	}
	defer slot.done()
	if err := s.usable(); err != nil {
		return nil, err
	}
	s.cells++
	s.lastUsed = time.Now()
	s.eng.stats.Runs.Add(1)
	res, err := s.inst.exec(ctx, execRequest{code: code, filename: fmt.Sprintf("<cell-%d>", s.cells), limits: s.limits, slot: slot}, opts...)
	s.lastUsed = time.Now()
	if s.inst.dead {
		s.closeLocked(context.Background())
	}
	return res, err
}

func (s *Session) usable() error {
	if s.closed || s.inst.dead {
		return errdefs.With(errdefs.NotFound, fmt.Errorf("session %q: %w", s.id, ErrSessionGone))
	}
	return nil
}

// WithFS calls fn with the session's filesystem, between runs.
func (s *Session) WithFS(fn func(fs *vfs.FS) error) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return err
	}
	s.lastUsed = time.Now()
	return fn(s.inst.fs)
}

// Close ends the session and frees its interpreter. Closing twice is not an error.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked(ctx)
	return nil
}

func (s *Session) closeLocked(ctx context.Context) {
	if s.closed {
		return
	}
	s.closed = true
	s.inst.close(ctx)
	s.eng.sessMu.Lock()
	delete(s.eng.sessions, s.id)
	s.eng.sessOpen--
	s.eng.sessMu.Unlock()
}

// idleTrim is how long the engine must have admitted no run before free memory regions are trimmed.
const idleTrim = 5 * time.Second

// reapSessions closes sessions idle past their TTL and, once the engine is idle, trims the memory kept
// for recycling; it runs until the engine closes.
func (e *Engine) reapSessions() {
	tick := time.NewTicker(max(min(e.cfg.SessionTTL/10, time.Second), 10*time.Millisecond))
	defer tick.Stop()
	var trimmedAt int64 // the lastUsed value the last trim saw
	for {
		select {
		case <-e.poolStop:
			return
		case <-tick.C:
		}
		if last := e.lastUsed.Load(); last != trimmedAt && time.Since(time.Unix(0, last)) > idleTrim {
			// Once per idle period: what a burst grew into goes back to the kernel.
			trimmedAt = last
			if snap := e.snap.Load(); snap != nil {
				e.regions.trim(snap.mem.size(), e.cfg.MaxConcurrent)
			}
			debug.FreeOSMemory()
		}
		e.sessMu.Lock()
		var idle []*Session
		for _, s := range e.sessions {
			if s.mu.TryLock() { // a session in use is not idle
				if time.Since(s.lastUsed) > s.ttl {
					idle = append(idle, s)
				}
				s.mu.Unlock()
			}
		}
		e.sessMu.Unlock()
		for _, s := range idle {
			e.log.Info("session reaped after idle TTL", "session", s.id, "ttl", s.ttl)
			s.Close(context.Background())
		}
	}
}
