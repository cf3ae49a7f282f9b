package nano

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"runtime/debug"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/vfs"
)

// session keeps one interpreter alive across cells, like a notebook kernel: variables, imports and
// files persist until it is closed or its interpreter dies (a timeout or crash). It is a bare
// sandbox (tier.Session): ids, idle TTLs and refusing a second request while one runs are the
// registry's above it (internal/dispatch). Calls on one session are serialised.
type session struct {
	eng    *Engine
	limits api.Limits
	// guard is the network the session started with (netpolicy.GuardOf of NewSession's context),
	// kept for every cell; PATCH /v1/sessions/{id}/network swaps its policy. Nil: offline.
	guard *netpolicy.Guard

	mu     sync.Mutex // one call at a time
	inst   *instance  // guarded by mu
	cells  int        // guarded by mu
	closed bool       // guarded by mu
	steps  *stepState // what the last Snapshot stored, to store only changes; guarded by mu
	// env is given to the next cell's interpreter (SetEnv), then cleared: os.environ keeps it, and a
	// cell's own changes to it must not be undone. guarded by mu
	env map[string]string
}

var (
	_ tier.Session = (*session)(nil)
	_ tier.Environ = (*session)(nil)
)

// SetEnv adds env to os.environ of the session's interpreter, from its next cell on.
func (s *session) SetEnv(_ context.Context, env map[string]string) error {
	if err := limits.CheckEnv(env); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return err
	}
	if s.env == nil {
		s.env = map[string]string{}
	}
	maps.Copy(s.env, env)
	return nil
}

// NewSession starts a session with the given limits (zero fields take the engine's defaults). The
// nano tier has the standard library only, so packages are refused.
func (e *Engine) NewSession(ctx context.Context, limits api.Limits, packages []string) (tier.Session, error) {
	if len(packages) > 0 {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("packages %v need tier \"heavy\"; the nano tier has the standard library only", packages))
	}
	lim, err := e.Limits(limits)
	if err != nil {
		return nil, err
	}
	s, err := e.startSession(ctx, lim, e.take)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// startSession registers a session with resolved limits and gives it the interpreter start makes.
func (e *Engine) startSession(ctx context.Context, lim api.Limits, start func(context.Context) (*instance, error)) (*session, error) {
	if e.closed.Load() {
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	// The place is reserved before the interpreter is restored and given back if that fails: checking
	// the count and registering later let parallel calls all pass the check.
	e.sessMu.Lock()
	if len(e.sessions) >= e.cfg.MaxSessions {
		e.sessMu.Unlock()
		return nil, errdefs.With(errdefs.Overloaded, fmt.Errorf("%d sessions are open, the most this server allows", e.cfg.MaxSessions))
	}
	s := &session{eng: e, limits: lim, guard: netpolicy.GuardOf(ctx)}
	e.sessions[s] = struct{}{}
	e.sessMu.Unlock()
	inst, err := start(ctx)
	if err != nil {
		e.forget(s)
		return nil, err
	}
	s.mu.Lock()
	closed := s.closed // Close collected it meanwhile
	if !closed {
		s.inst = inst
	}
	s.mu.Unlock()
	if closed {
		inst.close(ctx)
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	if e.closed.Load() {
		// Close may have collected the sessions before this one had its interpreter.
		s.Close(ctx)
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	return s, nil
}

func (e *Engine) forget(s *session) {
	e.sessMu.Lock()
	delete(e.sessions, s)
	e.sessMu.Unlock()
}

// Alive reports whether the session can still run cells.
func (s *session) Alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usable() == nil
}

// Run executes code in the session's interpreter. A timeout, crash or os._exit ends the interpreter;
// the result says so and later calls fail with tier.ErrGone.
func (s *session) Run(ctx context.Context, code string, stream tier.Stream) (*api.Result, error) {
	s.mu.Lock()
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
	s.eng.stats.Runs.Add(1)
	res, err := s.inst.exec(ctx, execRequest{code: code, filename: fmt.Sprintf("<cell-%d>", s.cells), limits: s.limits, slot: slot, guard: s.guard, repl: true, env: s.env}, stream)
	s.env = nil
	if s.inst.dead {
		s.closeLocked(context.Background())
	}
	return res, err
}

func (s *session) usable() error {
	if s.closed || s.inst == nil || s.inst.dead {
		return errdefs.With(errdefs.NotFound, tier.ErrGone)
	}
	return nil
}

// withFS calls fn with the session's filesystem, between cells, and classifies its error.
func (s *session) withFS(fn func(fs *vfs.FS) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return err
	}
	return fsError(fn(s.inst.fs))
}

// WriteFile places data at the absolute sandbox path p, creating parent directories.
func (s *session) WriteFile(_ context.Context, p string, data []byte) error {
	if err := limits.CheckPath(p); err != nil {
		return err
	}
	return s.withFS(func(sfs *vfs.FS) error { return sfs.WriteFile(p, data, 0o644) })
}

// ReadFile returns the file at p; a file larger than max (when positive) is refused.
func (s *session) ReadFile(_ context.Context, p string, max int64) ([]byte, error) {
	if err := limits.CheckPath(p); err != nil {
		return nil, err
	}
	var data []byte
	err := s.withFS(func(sfs *vfs.FS) error {
		var err error
		data, err = sfs.ReadFile(p, max)
		return err
	})
	return data, err
}

// ListFiles lists the directory dir.
func (s *session) ListFiles(_ context.Context, dir string) ([]api.FileInfo, error) {
	if err := limits.CheckPath(dir); err != nil {
		return nil, err
	}
	var entries []vfs.Entry
	err := s.withFS(func(sfs *vfs.FS) error {
		var err error
		entries, err = sfs.ReadDir(dir)
		return err
	})
	out := make([]api.FileInfo, 0, len(entries))
	for _, e := range entries {
		out = append(out, api.FileInfo{Name: e.Name, Path: e.Path, Size: e.Size, IsDir: e.IsDir,
			ModTime: e.ModTime.UTC().Format(time.RFC3339Nano)})
	}
	return out, err
}

// fsError classifies a filesystem error.
func fsError(err error) error {
	switch {
	case err == nil || errdefs.ClassOf(err) != errdefs.Internal:
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

// Close ends the session and frees its interpreter. Closing twice is not an error.
func (s *session) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked(ctx)
	return nil
}

func (s *session) closeLocked(ctx context.Context) {
	if s.closed {
		return
	}
	s.closed = true
	if s.inst != nil {
		s.inst.close(ctx)
	}
	s.eng.forget(s)
}

// idleTrim is how long the engine must have admitted no run before free memory regions are trimmed.
const idleTrim = 5 * time.Second

// trimIdle trims the memory kept for recycling once the engine is idle; it runs until the engine
// closes.
func (e *Engine) trimIdle() {
	tick := time.NewTicker(time.Second)
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
	}
}
