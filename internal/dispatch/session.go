package dispatch

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/snapstore"
	"github.com/entersandbox/agentbox/internal/tier"
)

// maxSessionTTL bounds a session's requested idle TTL.
const maxSessionTTL = 24 * time.Hour

const (
	tierNano int32 = iota
	tierHeavy
)

// ErrSessionGone is returned for a session that was closed, reaped, or whose sandbox died. It is the
// tiers' own error, so that a sandbox found dead mid-call reads the same as a session already gone.
var ErrSessionGone = tier.ErrGone

// ErrSessionBusy is returned when a session is asked to do two things at once.
var ErrSessionBusy = errors.New("session is busy with another request")

// Session is a sandbox that keeps its interpreter between runs, on one tier at a time. A session of
// tier "auto" starts on nano and moves to heavy, under the same id, when a cell needs it.
type Session struct {
	id    string
	d     *Dispatcher
	owner string // the tenant that started it; only it (or an admin) finds it
	auto  bool
	ttl   time.Duration
	// requested are the limits asked for; a move resolves them again against heavy's defaults.
	requested api.Limits
	created   time.Time
	tier      atomic.Int32 // tierNano or tierHeavy: which engine sb is on

	mu sync.Mutex // one request at a time
	// short counts requests holding mu for a bounded moment (a command follower's read): lock waits
	// up to shortWait for them instead of refusing as busy.
	short atomic.Int32
	// env is the environment the session's cells and commands get (SessionRequest.Env); set at start.
	env map[string]string
	// sb is the sandbox, on nano or on heavy as tier says; a move replaces it. guarded by mu
	sb    tier.Session
	place *place // guarded by mu
	// history holds the cells run on nano while the session may still move, to replay them on heavy.
	history      []cell // guarded by mu
	historyBytes int    // guarded by mu
	replayable   bool   // guarded by mu
	stay         string // why the session can no longer move, once replayable is false; guarded by mu
	closed       bool   // guarded by mu
	// guard is the session's network policy in force, on whichever tier it is; SetNetwork swaps its
	// policy without waiting for mu.
	guard *netpolicy.Guard
	// packages were installed at the start; a replay on a fresh sandbox installs them again.
	packages []string
	// steps is the time-travel log (steps.go), with its own lock; snapping is set while the snapshot
	// after the last step is being taken, holding mu, so that lock waits for it instead of refusing.
	steps    stepLog
	snapping atomic.Pointer[chan struct{}]
	inspect  inspection
	// blocks is what the sandbox's snapshots go through (nil: a new one at the next); guarded by mu
	blocks *snapstore.SessionBlocks
	// archived marks a closed session kept for its pinned steps.
	archived atomic.Bool

	// meta lets Info read these without waiting for a running cell. They are written holding mu and
	// meta, so the reaper, which holds mu, may read lastUsed without meta.
	meta      sync.Mutex
	limits    api.Limits // guarded by meta
	cells     int        // guarded by meta
	lastUsed  time.Time  // guarded by meta
	reason    string     // guarded by meta
	movedFrom api.Tier   // guarded by meta
	netSpec   netSource  // what guard's policy was compiled from, for a replica; guarded by meta
}

type cell struct {
	code   string
	failed bool
}

// NewSession starts a session owned by the tenant ctx acts for. Tier "auto" (or none) starts on heavy
// when packages or limits need it and on nano otherwise, from where it moves to heavy when a cell
// needs heavy. Its place on the tier and its memory are reserved before the sandbox starts.
func (d *Dispatcher) NewSession(ctx context.Context, req api.SessionRequest) (*Session, error) {
	if err := d.checkPlacement(req.Tier, req.Packages); err != nil {
		return nil, err
	}
	if err := limits.CheckEnv(req.Env); err != nil {
		return nil, err
	}
	ttl := time.Duration(req.TTLSeconds) * time.Second
	switch {
	case ttl < 0 || ttl > maxSessionTTL:
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("ttl_s %d is outside 0 to %d", req.TTLSeconds, int(maxSessionTTL/time.Second)))
	case ttl == 0:
		ttl = d.cfg.SessionTTL
	}
	p, err := d.compileNetwork(req.Network, req.Task, req.Intent)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tenant := TenantOf(ctx)
	s := &Session{id: newID(), d: d, owner: tenant.ID, ttl: ttl, requested: req.Limits, packages: req.Packages, created: now, lastUsed: now, replayable: true, env: req.Env,
		netSpec: netSource{network: req.Network, task: req.Task, intent: req.Intent}}
	// A session always carries its Guard, offline or not, so that PATCH .../network can open it later.
	s.guard = d.newGuard(p, tenant.ID, s.id)
	ctx = s.withGuard(ctx)
	tier := req.Tier
	s.reason = fmt.Sprintf("tier %q was asked for", tier)
	if tier == "" || tier == api.TierAuto {
		s.auto = true
		tier, s.reason = d.route(api.RunRequest{Limits: req.Limits, Packages: req.Packages})
		if tier == api.TierNano && d.heavy != nil && len(req.Limits.AllowedModules) == 0 {
			s.reason = "a new session starts on nano, the fastest tier, and moves to heavy when a cell needs it"
		}
	}
	onHeavy := tier == api.TierHeavy
	eng := d.engine(onHeavy)
	lim, err := eng.Limits(req.Limits)
	if err != nil {
		return nil, err
	}
	if s.place, err = d.reserve(tenant, onHeavy, lim.MemoryLimitMB); err != nil {
		return nil, err
	}
	sb, err := eng.NewSession(ctx, req.Limits, req.Packages)
	if err != nil {
		s.place.release()
		return nil, err
	}
	if err := setEnv(ctx, sb, req.Env); err != nil {
		sb.Close(context.Background())
		s.place.release()
		return nil, err
	}
	s.guard.Drain() // what installing packages did is not a cell's; the sink has it
	s.sb, s.limits = sb, lim
	if onHeavy {
		s.tier.Store(tierHeavy)
	}
	s.mu.Lock() // held until step 0's snapshot is taken
	s.steps.appendStep(newStep(api.StepStart, tier, now, nil))
	d.mu.Lock()
	d.sessions[s.id] = s
	d.mu.Unlock()
	s.stepDone(0)
	return s, nil
}

// engine is the heavy engine or the nano one.
func (d *Dispatcher) engine(heavy bool) tier.Engine {
	if heavy {
		return d.heavy
	}
	return d.nano
}

func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return "ses_" + hex.EncodeToString(b[:])
}

// Session returns an open session by id, if the tenant ctx acts for may see it. Another tenant's
// session is not found, exactly like one that does not exist, so that ids reveal nothing.
func (d *Dispatcher) Session(ctx context.Context, id string) (*Session, error) {
	d.mu.Lock()
	s := d.sessions[id]
	d.mu.Unlock()
	if s == nil || !TenantOf(ctx).sees(s.owner) {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("session %q: %w (unknown id, closed, or idle past its TTL)", id, ErrSessionGone))
	}
	return s, nil
}

// Sessions describes the open sessions the tenant ctx acts for may see, oldest first.
func (d *Dispatcher) Sessions(ctx context.Context) []api.Session {
	t := TenantOf(ctx)
	d.mu.Lock()
	all := make([]*Session, 0, len(d.sessions))
	for _, s := range d.sessions {
		if t.sees(s.owner) {
			all = append(all, s)
		}
	}
	d.mu.Unlock()
	slices.SortFunc(all, func(a, b *Session) int { return a.created.Compare(b.created) })
	out := make([]api.Session, len(all))
	for i, s := range all {
		out[i] = s.Info()
	}
	return out
}

// ID is the session's identifier; it stays the same when the session moves to heavy.
func (s *Session) ID() string { return s.id }

// Info describes the session.
func (s *Session) Info() api.Session {
	s.meta.Lock()
	defer s.meta.Unlock()
	tier := api.TierNano
	if s.tier.Load() == tierHeavy {
		tier = api.TierHeavy
	}
	s.steps.mu.Lock()
	steps, current := len(s.steps.steps), s.steps.current
	s.steps.mu.Unlock()
	return api.Session{ID: s.id, Owner: s.owner, Tier: tier, Limits: s.limits, TTLSeconds: int(s.ttl / time.Second), Cells: s.cells,
		CreatedAt: s.created.UTC().Format(time.RFC3339Nano), LastUsedAt: s.lastUsed.UTC().Format(time.RFC3339Nano),
		RouteReason: s.reason, MovedFrom: s.movedFrom, Steps: steps, CurrentStep: current}
}

// lock takes the session for one request, refusing instead of queueing behind a running cell; it
// waits (as long as ctx lets it) for the snapshot of the last step, and briefly for a short request
// (a poll of a background command).
func (s *Session) lock(ctx context.Context) error {
	for !s.mu.TryLock() {
		waited, err := s.waitSnapshot(ctx)
		if err != nil {
			return err
		}
		if waited {
			continue
		}
		if s.mu.TryLock() || s.waitShort() { // the snapshot ended between the two looks, or a poll let go
			break
		}
		return errdefs.With(errdefs.Conflict, fmt.Errorf("session %q: %w", s.id, ErrSessionBusy))
	}
	if s.closed {
		s.mu.Unlock()
		return errdefs.With(errdefs.NotFound, fmt.Errorf("session %q: %w", s.id, ErrSessionGone))
	}
	s.touch(0)
	return nil
}

// unlock releases the session, ending it if its sandbox died meanwhile.
func (s *Session) unlock() {
	if !s.closed && s.gone() {
		s.closeLocked()
	}
	s.touch(0)
	s.mu.Unlock()
}

// waitShort takes mu once a short request holding it lets go, within shortWait; false when the
// holder is not short or does not let go in time.
//
// A short request counts itself before it locks and uncounts after it unlocks, so a failed TryLock
// followed by a count of zero can also mean that it let go between the two looks. The holder is
// taken for a long one only when two looks a millisecond apart both say so.
func (s *Session) waitShort() bool {
	deadline := time.Now().Add(shortWait)
	notShort := 0
	for time.Now().Before(deadline) {
		if s.mu.TryLock() {
			return true
		}
		if s.short.Load() > 0 {
			notShort = 0
		} else if notShort++; notShort == 2 {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

func (s *Session) touch(cells int) {
	s.meta.Lock()
	s.cells += cells
	s.lastUsed = time.Now()
	s.meta.Unlock()
}

// gone reports whether the session's sandbox has died (a timeout, a crash, an OOM kill).
func (s *Session) gone() bool { return !s.sb.Alive() }

// onHeavy reports whether the session is on the heavy tier.
func (s *Session) onHeavy() bool { return s.tier.Load() == tierHeavy }

// closeLocked frees the sandbox and forgets the session.
func (s *Session) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	s.sb.Close(context.Background())
	s.history = nil
	s.place.release()
	s.d.forget(s.id)
	s.endSteps()
	s.replicateEnd()
}

// Close ends the session. Closing twice is not an error.
func (s *Session) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked()
}

// movable reports whether the session may still move to heavy.
func (s *Session) movable() bool {
	return s.auto && !s.onHeavy() && s.d.heavy != nil && s.replayable && len(s.requested.AllowedModules) == 0
}

// Run executes code in the session. In a session of tier "auto" on nano, a cell whose imports need
// heavy moves the session there first, and a cell that fails on nano for want of something heavy has
// moves it and runs again there; the result's route_reason and fallback_from say so. The cell's
// network events (the move's replay included) are the result's NetworkEvents.
func (s *Session) Run(ctx context.Context, code string, out Output) (*api.Result, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	start, n := time.Now(), -1
	defer func() { s.stepDone(n) }()
	onNano := !s.onHeavy()
	res, err := s.run(s.withGuard(ctx), code, out)
	events := s.guard.Drain()
	if err == nil && res != nil {
		rec := newStep(api.StepCell, s.tierName(), start, res)
		rec.step.Code, rec.sentWrites = code, sentWrites(events)
		n = s.steps.appendStep(rec)
	}
	if onNano && !s.onHeavy() && sentWrites(events) {
		// A move replays the nano cells on heavy: it would send this cell's writes again.
		s.replayable, s.history = false, nil
		s.stay = "a cell sent HTTP writes (POST, PUT, PATCH or DELETE), which replaying it on heavy would send again, so the session stays on nano"
	}
	if res != nil {
		res.NetworkEvents = append(res.NetworkEvents, events...)
	} // else a failed cell's events are in the sink, not the next cell's result
	return res, err
}

// sentWrites reports whether events include a write request that left the sandbox.
func sentWrites(events []api.NetworkEvent) bool {
	for _, e := range events {
		switch e.Method {
		case "POST", "PUT", "PATCH", "DELETE":
			if e.Verdict == api.VerdictAllowed || e.Verdict == api.VerdictRedacted {
				return true
			}
		}
	}
	return false
}

func (s *Session) run(ctx context.Context, code string, out Output) (*api.Result, error) {
	// The cell holds one of its tenant's places on the tier it starts on, also while it moves; the
	// session holds its memory.
	on := api.TierNano
	if s.onHeavy() {
		on = api.TierHeavy
	}
	release, err := s.d.admitRun(ctx, on, s.requested, false)
	if err != nil {
		return nil, err
	}
	defer release()
	s.touch(1)
	if s.onHeavy() {
		res, err := s.sb.Run(ctx, code, out.stream())
		if res != nil {
			s.meta.Lock()
			res.RouteReason = "the session is on heavy: " + s.reason
			s.meta.Unlock()
		}
		return res, err
	}
	reason := "the session is on nano: " + s.reason
	tried := false // one move attempt per cell: a second would fail the same way
	if s.movable() {
		tier, why := s.d.route(api.RunRequest{Code: code, Limits: s.requested})
		reason = why
		if tier == api.TierHeavy {
			tried = true
			moved, err := s.moveLocked(ctx, why)
			if err == nil {
				res, err := s.sb.Run(ctx, code, out.stream())
				if res != nil {
					res.RouteReason = why + "; " + moved
				}
				return res, err
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			reason = fmt.Sprintf("%s, but the session could not move to heavy (%v), so the cell ran on nano", why, err)
		}
	} else if s.auto {
		reason = s.stayReason()
	}
	res, err := s.sb.Run(ctx, code, out.stream())
	if err != nil {
		return nil, err
	}
	res.RouteReason = reason
	if s.movable() && !tried {
		if why, ok := s.d.rules.Fallback(res); ok {
			moved, merr := s.moveLocked(ctx, why)
			if merr == nil {
				out.fallback(res, why)
				hres, herr := s.sb.Run(ctx, code, out.stream())
				if hres != nil {
					hres.RouteReason, hres.FallbackFrom = why+"; "+moved, api.TierNano
				}
				return hres, herr
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			res.RouteReason = fmt.Sprintf("%s, but the session could not move to heavy: %v", why, merr)
		}
	}
	s.record(code, res.Error != nil || res.ExitCode != 0)
	return res, nil
}

// stayReason says why an auto session on nano will not move.
func (s *Session) stayReason() string {
	switch {
	case s.d.heavy == nil:
		return "the heavy tier is not available here, so the session stays on nano"
	case len(s.requested.AllowedModules) > 0:
		return "allowed_modules is a nano-tier policy, so the session stays on nano"
	}
	return s.stay
}

// record keeps a nano cell for replaying on heavy, while the history stays within its cap.
func (s *Session) record(code string, failed bool) {
	if !s.replayable {
		return
	}
	if s.historyBytes+len(code) > s.d.cfg.MaxReplayBytes {
		s.replayable, s.history = false, nil
		s.stay = fmt.Sprintf("the session's cells passed %d bytes, too much to replay on heavy, so it stays on nano", s.d.cfg.MaxReplayBytes)
		return
	}
	s.history = append(s.history, cell{code: code, failed: failed})
	s.historyBytes += len(code)
}

// writableDirs are the directories a program can write, copied when a session moves. Both tiers
// have them; dispatch knows them so that a move needs nothing of a tier beyond tier.Session.
var writableDirs = []string{"/data", "/output", "/tmp", "/home/user"}

// moveLocked moves the session from nano to heavy: a heavy session starts, the nano files are copied
// in, the earlier cells are replayed in order (their output discarded), and the files are copied
// again so that the final state is nano's even where a replayed cell appended to a file. It says what
// it did. On failure the session stays on nano, untouched.
func (s *Session) moveLocked(ctx context.Context, why string) (string, error) {
	start := time.Now()
	limits, err := s.d.heavy.Limits(s.requested)
	if err != nil {
		return "", err
	}
	commit, abort, err := s.place.reserveMove(limits.MemoryLimitMB)
	if err != nil {
		return "", err
	}
	files, err := readFiles(ctx, s.sb)
	if err != nil {
		abort()
		return "", fmt.Errorf("reading the nano files: %w", err)
	}
	hs, err := s.d.heavy.NewSession(ctx, s.requested, nil)
	if err != nil {
		abort()
		return "", fmt.Errorf("starting a heavy session: %w", err)
	}
	fail := func(err error) (string, error) {
		hs.Close(context.Background())
		abort()
		return "", err
	}
	if err := setEnv(ctx, hs, s.env); err != nil {
		return fail(err)
	}
	if err := copyFiles(ctx, hs, files); err != nil {
		return fail(err)
	}
	for i, c := range s.history {
		res, err := hs.Run(ctx, c.code, tier.Stream{})
		if err != nil {
			return fail(fmt.Errorf("replaying cell %d: %w", i+1, err))
		}
		if (res.Error != nil || res.ExitCode != 0) && !c.failed {
			what := fmt.Sprintf("exit code %d", res.ExitCode)
			if res.Error != nil {
				what = res.Error.Type + ": " + firstLine(res.Error.Message)
			}
			// Replaying is deterministic enough that trying again would fail again.
			s.replayable, s.history = false, nil
			s.stay = fmt.Sprintf("replaying cell %d failed on heavy where it had worked on nano (%s), so the session stays on nano", i+1, what)
			return fail(fmt.Errorf("replaying cell %d failed on heavy where it had worked on nano: %s", i+1, what))
		}
	}
	if len(s.history) > 0 {
		if err := copyFiles(ctx, hs, files); err != nil {
			return fail(err)
		}
	}
	s.sb.Close(ctx)
	s.sb = hs
	commit()
	s.tier.Store(tierHeavy)
	s.meta.Lock()
	s.limits, s.movedFrom, s.reason = limits, api.TierNano, why
	s.meta.Unlock()
	summary := fmt.Sprintf("the session moved to heavy (%d earlier cells replayed, %d files copied)", len(s.history), len(files))
	s.d.log.Info("session moved to heavy", "id", s.id, "cells", len(s.history), "files", len(files),
		"ms", time.Since(start).Milliseconds(), "reason", why)
	s.history, s.historyBytes = nil, 0
	return summary, nil
}

type fileData struct {
	path string
	data []byte
}

// readFiles reads every regular file under writableDirs of sb, through the tier.Session interface
// (ListFiles and ReadFile), so any tier's session can be the source of a move.
func readFiles(ctx context.Context, sb tier.Session) ([]fileData, error) {
	var files []fileData
	var walk func(dir string) error
	walk = func(dir string) error {
		entries, err := sb.ListFiles(ctx, dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.IsDir {
				if err := walk(e.Path); err != nil {
					return err
				}
				continue
			}
			data, err := sb.ReadFile(ctx, e.Path, 0)
			if err != nil {
				return fmt.Errorf("%s: %w", e.Path, err)
			}
			files = append(files, fileData{e.Path, data})
		}
		return nil
	}
	for _, dir := range writableDirs {
		if err := walk(dir); err != nil && errdefs.ClassOf(err) != errdefs.NotFound {
			return nil, err
		}
	}
	return files, nil
}

func copyFiles(ctx context.Context, hs tier.Session, files []fileData) error {
	for _, f := range files {
		if err := hs.WriteFile(ctx, f.path, f.data); err != nil {
			return fmt.Errorf("copying %s: %w", f.path, err)
		}
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// WriteFile places data at the absolute sandbox path p, creating parent directories.
func (s *Session) WriteFile(ctx context.Context, p string, data []byte) error {
	if err := limits.CheckPath(p); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	start, n := time.Now(), -1
	defer func() { s.stepDone(n) }()
	if err := s.sb.WriteFile(ctx, p, data); err != nil {
		return err
	}
	rec := newStep(api.StepUpload, s.tierName(), start, nil)
	rec.step.Path = p
	if len(data) <= s.d.cfg.MaxReplayBytes {
		rec.replayData = bytes.Clone(data)
		if rec.replayData == nil {
			rec.replayData = []byte{}
		}
	}
	n = s.steps.appendStep(rec)
	return nil
}

// ReadFile returns the file at p; a file larger than max (when positive) is refused.
func (s *Session) ReadFile(ctx context.Context, p string, max int64) ([]byte, error) {
	if err := limits.CheckPath(p); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	return s.sb.ReadFile(ctx, p, max)
}

// ListFiles lists the directory dir.
func (s *Session) ListFiles(ctx context.Context, dir string) ([]api.FileInfo, error) {
	if err := limits.CheckPath(dir); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	out, err := s.sb.ListFiles(ctx, dir)
	if out == nil {
		out = []api.FileInfo{}
	}
	return out, err
}
