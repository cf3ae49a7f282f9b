package dispatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/snapstore"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Time travel (docs/time-travel.md): every session keeps a log of its steps (start, cells, uploads,
// rewinds, forks). After each step the session's tier, when it is a tier.Snapshotter, saves the
// sandbox's state into the snapshot store; this runs after the step's answer was returned, and the
// session's next call waits for it. A step is restored through the tier's tier.Restorer, or, when
// its snapshot is gone, by replaying its cells from the nearest earlier snapshot.

// snapshotTimeout bounds one snapshot (a heavy checkpoint takes up to about a second).
const snapshotTimeout = 2 * time.Minute

// inspectIdle is how long an inspection sandbox (reading a file at step n) is kept for the next read.
const inspectIdle = 30 * time.Second

// maxStdoutHead is how much of a step's stdout the step list carries.
const maxStdoutHead = 200

// stepRec is one step of a session's log.
type stepRec struct {
	step   api.Step
	result *api.Result
	// state and reason are the step's snapshot as dispatch knows it, when the store does not (none:
	// the tier keeps no snapshots; missing: taking it failed).
	state, reason string
	// vars and files are the state after the step as its snapshot described it, kept for inspection
	// after retention removed the snapshot.
	vars  []api.Variable
	files []api.FileInfo
	// sentWrites marks a cell that sent HTTP writes, which replaying it would send again.
	sentWrites bool
	// replayData is an upload's content, kept (within MaxReplayBytes) so that a replay can redo it.
	replayData []byte
	// foreign says why a step that came from another host's replica (Import) cannot be restored here.
	foreign string
}

// stepLog is a session's steps, guarded by its own mutex so that listing them never waits for a cell.
type stepLog struct {
	mu      sync.Mutex
	steps   []*stepRec // guarded by mu
	current int        // the step the sandbox's state is at; guarded by mu
}

// appendStep adds a step made from the current one and makes it current; it returns its number.
func (l *stepLog) appendStep(rec *stepRec) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	rec.step.N = len(l.steps)
	if rec.step.Kind != api.StepRewind && rec.step.Kind != api.StepFork {
		rec.step.Parent = l.current
		if len(l.steps) == 0 {
			rec.step.Parent = -1
		}
	}
	l.steps = append(l.steps, rec)
	l.current = rec.step.N
	return rec.step.N
}

func (l *stepLog) get(n int) (*stepRec, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n < 0 || n >= len(l.steps) {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("no step %d (the session has steps 0 to %d)", n, len(l.steps)-1))
	}
	return l.steps[n], nil
}

// chainLocked is n and its ancestors, n first.
func (l *stepLog) chainLocked(n int) []*stepRec {
	var out []*stepRec
	for n >= 0 && n < len(l.steps) {
		out = append(out, l.steps[n])
		n = l.steps[n].step.Parent
	}
	return out
}

// newStep makes the record of a step that just ran.
func newStep(kind api.StepKind, t api.Tier, start time.Time, res *api.Result) *stepRec {
	rec := &stepRec{step: api.Step{Kind: kind, Tier: t, At: start.UTC().Format(time.RFC3339Nano),
		DurationMS: float64(time.Since(start).Microseconds()) / 1000}, result: res}
	if res != nil {
		rec.step.ExitCode, rec.step.StdoutHead = res.ExitCode, head(res.Stdout, maxStdoutHead)
		if res.Error != nil {
			rec.step.ErrorType = res.Error.Type
		}
		if res.DurationMS > 0 {
			rec.step.DurationMS = res.DurationMS
		}
	}
	return rec
}

// head is at most n bytes of s, cut at a rune boundary.
func head(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (s *Session) tierName() api.Tier {
	if s.onHeavy() {
		return api.TierHeavy
	}
	return api.TierNano
}

// stepDone ends a request that made step n: it unlocks the session, after snapshotting the sandbox
// in the background when the tier can, holding the session until the snapshot is taken (the next
// call waits for it in lock). Called holding mu instead of unlock.
func (s *Session) stepDone(n int) {
	sn, ok := s.sb.(tier.Snapshotter)
	rec, _ := s.steps.get(n)
	if rec == nil || s.closed || s.gone() {
		s.unlock()
		return
	}
	if s.d.store == nil || !ok {
		s.steps.mu.Lock()
		rec.state, rec.reason = api.SnapshotNone, "the "+string(rec.step.Tier)+" tier keeps no snapshots"
		if s.d.store == nil {
			rec.reason = "time travel is off on this server (no snapshot store)"
		}
		s.steps.mu.Unlock()
		s.unlock()
		return
	}
	s.steps.mu.Lock()
	rec.state = api.SnapshotPending
	s.steps.mu.Unlock()
	done := make(chan struct{})
	s.snapping.Store(&done)
	go func() {
		s.snapshotLocked(n, rec, sn)
		s.unlock()
		s.snapping.Store(nil)
		close(done)
	}()
}

// snapshotLocked saves the sandbox's state as step n's snapshot. A failure (disk full, the tier's
// own) leaves the step missing, saying why; the session goes on.
func (s *Session) snapshotLocked(n int, rec *stepRec, sn tier.Snapshotter) {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	start := time.Now()
	blocks := s.sessionBlocks()
	tx := blocks.Begin()
	snap, err := sn.Snapshot(ctx, blocks)
	if err == nil {
		s.steps.mu.Lock()
		r := snapstore.Record{Owner: s.owner, Step: rec.step, Result: rec.result}
		rec.vars, rec.files = snap.Variables, snap.Files
		s.steps.mu.Unlock()
		if err = tx.Commit(s.id, r, snap); err == nil {
			s.replicate(n, snap)
		}
	} else {
		tx.Abort()
	}
	if err != nil && errors.Is(err, tier.ErrCorrupt) {
		// The tier named a block that is gone: a new SessionBlocks makes it put everything again.
		s.blocks = nil
	}
	if err != nil {
		s.d.log.Warn("snapshot failed", "id", s.id, "step", n, "err", err)
		s.steps.mu.Lock()
		rec.state, rec.reason = api.SnapshotMissing, limits.Text("taking the snapshot failed: "+err.Error(), 512)
		s.steps.mu.Unlock()
		return
	}
	s.steps.mu.Lock()
	rec.state = ""
	cur := s.steps.current
	s.steps.mu.Unlock()
	s.d.store.Retain(s.id, cur)
	s.d.log.Debug("snapshot", "id", s.id, "step", n, "ms", time.Since(start).Milliseconds(), "blocks", len(snap.Blocks))
}

// sessionBlocks is the Blocks the session's snapshots and restores go through (holding mu).
func (s *Session) sessionBlocks() *snapstore.SessionBlocks {
	if s.blocks == nil {
		s.blocks = s.d.store.SessionBlocks()
	}
	return s.blocks
}

// sessionBlocksIf is sessionBlocks, or nil without a store (a replay needs none).
func (s *Session) sessionBlocksIf() tier.Blocks {
	if s.d.store == nil {
		return nil
	}
	return s.sessionBlocks()
}

// waitSnapshot is what lock waits for: a snapshot being taken after the last step.
func (s *Session) waitSnapshot(ctx context.Context) (waited bool, err error) {
	ch := s.snapping.Load()
	if ch == nil {
		return false, nil
	}
	select {
	case <-*ch:
		return true, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// Steps lists the session's steps, oldest first, with what can be restored.
func (s *Session) Steps() api.StepList {
	s.steps.mu.Lock()
	defer s.steps.mu.Unlock()
	out := api.StepList{Session: s.id, Current: s.steps.current, Steps: make([]api.Step, 0, len(s.steps.steps))}
	live := map[int]bool{}
	for _, r := range s.steps.chainLocked(s.steps.current) {
		live[r.step.N] = true
	}
	for _, r := range s.steps.steps {
		out.Steps = append(out.Steps, s.describeLocked(r, !live[r.step.N]))
	}
	return out
}

// describeLocked is r as listed, its snapshot state from the store. Holds steps.mu.
func (s *Session) describeLocked(r *stepRec, abandoned bool) api.Step {
	st := r.step
	st.Abandoned = abandoned
	st.Snapshot = api.StepSnapshot{State: r.state, Reason: r.reason}
	if s.d.store != nil {
		if ss, ok := s.d.store.State(s.id, r.step.N); ok && r.state != api.SnapshotPending {
			st.Snapshot = api.StepSnapshot{State: ss.State, Bytes: ss.Bytes, Reason: ss.Reason}
			st.Pinned = ss.Pinned
		}
	}
	if st.Snapshot.State == "" {
		st.Snapshot.State = api.SnapshotPending
	}
	p := s.planLocked(r.step.N)
	if p.err == nil {
		st.Snapshot.Restorable, st.Snapshot.RestoreOn, st.Snapshot.RestoreBy = true, p.on, p.by
		if p.by == api.RestoreByReplay {
			st.Snapshot.Reason = joinReason(st.Snapshot.Reason, p.why)
		} else if p.on != s.tierName() && !s.archived.Load() {
			st.Snapshot.Reason = joinReason(st.Snapshot.Reason, fmt.Sprintf("its snapshot is of the %s tier: rewinding to it puts the session back on %s", p.on, p.on))
		}
	} else if st.Snapshot.Reason == "" {
		st.Snapshot.Reason = p.err.Error()
	}
	return st
}

func joinReason(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// plan is how step n can be restored: its own snapshot on tier on, or the snapshot of step base (or,
// base -1, a fresh sandbox) and a replay of cells.
type plan struct {
	n     int
	by    string
	on    api.Tier
	base  int
	cells []*stepRec // oldest first
	why   string
	err   error
}

// snapshotUsable reports whether step n's snapshot is in the store and its tier can restore it.
func (s *Session) snapshotUsableLocked(r *stepRec) bool {
	if s.d.store == nil || r.state == api.SnapshotMissing || r.state == api.SnapshotNone {
		return false
	}
	st, ok := s.d.store.State(s.id, r.step.N)
	if !ok && r.state != api.SnapshotPending {
		return false
	}
	if ok && st.State != api.SnapshotStored && st.State != api.SnapshotPending {
		return false
	}
	_, can := s.d.engine(r.step.Tier == api.TierHeavy).(tier.Restorer)
	return can && (r.step.Tier != api.TierHeavy || s.d.heavy != nil)
}

// planLocked says how step n would be restored. Holds steps.mu.
func (s *Session) planLocked(n int) plan {
	chain := s.steps.chainLocked(n)
	if len(chain) == 0 {
		return plan{n: n, err: fmt.Errorf("no step %d", n)}
	}
	target := chain[0]
	if s.snapshotUsableLocked(target) {
		return plan{n: n, by: api.RestoreBySnapshot, on: target.step.Tier, base: n}
	}
	if s.archived.Load() {
		return plan{n: n, err: errors.New("the session was closed (or the server restarted), which keeps only its pinned steps")}
	}
	// Replay: the cells after the nearest usable snapshot of the same tier (or from a fresh sandbox),
	// on the tier step n ran on.
	on := target.step.Tier
	var cells []*stepRec
	base := -1
	for _, r := range chain {
		if r != target && r.step.Tier == on && s.snapshotUsableLocked(r) {
			base = r.step.N
			break
		}
		if r.foreign != "" {
			return plan{n: n, err: errors.New(r.foreign)}
		}
		switch r.step.Kind {
		case api.StepCell, api.StepUpload:
			if r.sentWrites {
				return plan{n: n, err: fmt.Errorf("no snapshot, and replaying step %d would send its HTTP writes again", r.step.N)}
			}
			if r.step.Kind == api.StepUpload && r.replayData == nil {
				return plan{n: n, err: fmt.Errorf("no snapshot, and the upload at step %d was too large to keep for a replay", r.step.N)}
			}
			cells = append(cells, r)
		case api.StepCommand:
			return plan{n: n, err: fmt.Errorf("no snapshot, and step %d is a shell command, which is not replayed", r.step.N)}
		case api.StepFork:
			return plan{n: n, err: errors.New("no snapshot of the fork it started from, so it cannot be replayed")}
		}
	}
	if on == api.TierHeavy && s.d.heavy == nil {
		return plan{n: n, err: errors.New("no snapshot, and the heavy tier is not available here to replay it")}
	}
	slices.Reverse(cells)
	from := "a fresh sandbox"
	if base >= 0 {
		from = fmt.Sprintf("step %d's snapshot", base)
	}
	return plan{n: n, by: api.RestoreByReplay, on: on, base: base, cells: cells,
		why: fmt.Sprintf("no snapshot of its own: restored by replaying %d steps on %s from %s (only as deterministic as its code)", len(cells), on, from)}
}

// restore builds a sandbox in the state after step p.n, following p, reading blocks through
// blocks (the SessionBlocks of the session the sandbox is for, or the store).
func (s *Session) restore(ctx context.Context, p plan, blocks tier.Blocks) (tier.Session, error) {
	eng := s.d.engine(p.on == api.TierHeavy)
	var sb tier.Session
	var err error
	switch {
	case p.base >= 0:
		snap, _, lerr := s.d.store.Load(s.id, p.base)
		if lerr != nil {
			return nil, lerr
		}
		sb, err = eng.(tier.Restorer).Restore(s.withGuard(ctx), snap, blocks, s.requested)
		if errors.Is(err, tier.ErrCorrupt) {
			s.d.store.MarkCorrupt(s.id, p.base, err.Error())
			return nil, errdefs.With(errdefs.Conflict, fmt.Errorf("step %d cannot be restored: %w", p.base, err))
		}
	default:
		sb, err = eng.NewSession(s.withGuard(ctx), s.requested, s.packages)
	}
	if err != nil {
		return nil, fmt.Errorf("restoring step %d: %w", p.n, err)
	}
	for _, c := range p.cells {
		if c.step.Kind == api.StepUpload {
			if err := sb.WriteFile(ctx, c.step.Path, c.replayData); err != nil {
				sb.Close(context.Background())
				return nil, fmt.Errorf("replaying the upload of step %d: %w", c.step.N, err)
			}
			continue
		}
		res, err := sb.Run(s.withGuard(ctx), c.step.Code, tier.Stream{})
		if err != nil {
			sb.Close(context.Background())
			return nil, fmt.Errorf("replaying step %d: %w", c.step.N, err)
		}
		if (res.ExitCode == 0 && res.Error == nil) != (c.step.ExitCode == 0 && c.step.ErrorType == "") {
			sb.Close(context.Background())
			return nil, errdefs.With(errdefs.Conflict, fmt.Errorf("replaying step %d ended otherwise than it had (exit code %d, was %d)", c.step.N, res.ExitCode, c.step.ExitCode))
		}
	}
	return sb, nil
}

// lockSteps takes the session for a time-travel call: like lock, but a session kept only for its
// pinned steps (closed, from before a restart) is taken too; live reports whether it has a sandbox.
func (s *Session) lockSteps(ctx context.Context) (live bool, err error) {
	if s.archived.Load() {
		s.mu.Lock()
		return false, nil
	}
	if err := s.lock(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// Rewind makes the session continue from the state after step n: the state is restored into a new
// sandbox with the session's limits and network policy (on the tier step n's snapshot is of), which
// replaces the current one, and a rewind step is appended; the steps after n on the branch left
// become abandoned.
func (s *Session) Rewind(ctx context.Context, n int) error {
	live, err := s.lockSteps(ctx)
	if err != nil {
		return err
	}
	if !live {
		s.mu.Unlock()
		return errdefs.With(errdefs.Conflict, fmt.Errorf("session %q was closed; only its pinned steps are kept: fork one of them", s.id))
	}
	if _, err := s.steps.get(n); err != nil {
		s.unlock()
		return err
	}
	s.steps.mu.Lock()
	p := s.planLocked(n)
	s.steps.mu.Unlock()
	if p.err != nil {
		s.unlock()
		return errdefs.With(errdefs.Conflict, fmt.Errorf("step %d cannot be restored: %w", n, p.err))
	}
	start := time.Now()
	toHeavy := p.on == api.TierHeavy
	lim, err := s.d.engine(toHeavy).Limits(s.requested)
	if err != nil {
		s.unlock()
		return err
	}
	commit, abort := func() {}, func() {}
	if toHeavy != s.onHeavy() {
		if commit, abort, err = s.place.reserveSwitch(toHeavy, lim.MemoryLimitMB); err != nil {
			s.unlock()
			return err
		}
	}
	// Through the session's SessionBlocks: the tier's caches of its earlier snapshots serve the
	// restore, and the restored sandbox's block ids (step n's, held by the rewind step) are named
	// again by its next snapshot without being put again.
	sb, err := s.restore(ctx, p, s.sessionBlocksIf())
	if err != nil {
		abort()
		s.unlock()
		return err
	}
	s.sb.Close(context.Background())
	s.sb = sb
	commit()
	if toHeavy {
		s.tier.Store(tierHeavy)
	} else {
		s.tier.Store(tierNano)
	}
	s.meta.Lock()
	s.limits = lim
	if !toHeavy {
		s.movedFrom = ""
	}
	s.meta.Unlock()
	s.resetInspection()
	rec := newStep(api.StepRewind, p.on, start, nil)
	rec.step.Target, rec.step.Parent = n, n
	s.steps.mu.Lock()
	s.rebuildHistoryLocked(n)
	s.steps.mu.Unlock()
	m := s.steps.appendStep(rec)
	s.d.log.Info("session rewound", "id", s.id, "to", n, "by", p.by, "tier", p.on, "ms", time.Since(start).Milliseconds())
	if p.by == api.RestoreBySnapshot && s.d.store.Copy(s.id, n, s.id, s.storeRecord(rec)) == nil {
		s.d.store.Retain(s.id, m)
		s.replicateCopy(m)
		s.unlock()
		return nil
	}
	s.stepDone(m)
	return nil
}

// rebuildHistoryLocked makes the cells kept for a move to heavy those that led to step n, when the
// session is on nano and may still move. Holds mu and steps.mu.
func (s *Session) rebuildHistoryLocked(n int) {
	if s.onHeavy() || !s.replayable {
		s.history, s.historyBytes = nil, 0
		return
	}
	s.history, s.historyBytes = nil, 0
	chain := s.steps.chainLocked(n)
	slices.Reverse(chain)
	for _, r := range chain {
		if r.step.Kind == api.StepCell && r.step.Tier == api.TierNano {
			s.history = append(s.history, cell{code: r.step.Code, failed: r.step.ExitCode != 0 || r.step.ErrorType != ""})
			s.historyBytes += len(r.step.Code)
		}
	}
}

func (s *Session) storeRecord(rec *stepRec) snapstore.Record {
	s.steps.mu.Lock()
	defer s.steps.mu.Unlock()
	return snapstore.Record{Owner: s.owner, Step: rec.step, Result: rec.result}
}

// Fork starts a new session, owned by the tenant ctx acts for, in the state after step req.Step of
// this one (which goes on untouched): its own id, the parent's requested limits and network policy,
// req.TTLSeconds or the server's default TTL. Its step 0 is a fork step naming the parent.
func (s *Session) Fork(ctx context.Context, req api.ForkRequest) (*Session, error) {
	ttl := time.Duration(req.TTLSeconds) * time.Second
	switch {
	case ttl < 0 || ttl > maxSessionTTL:
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("ttl_s %d is outside 0 to %d", req.TTLSeconds, int(maxSessionTTL/time.Second)))
	case ttl == 0:
		ttl = s.d.cfg.SessionTTL
	}
	live, err := s.lockSteps(ctx)
	if err != nil {
		return nil, err
	}
	unlock := s.unlock
	if !live {
		unlock = s.mu.Unlock
	}
	defer unlock()
	if _, err := s.steps.get(req.Step); err != nil {
		return nil, err
	}
	s.steps.mu.Lock()
	p := s.planLocked(req.Step)
	s.steps.mu.Unlock()
	if p.err != nil {
		return nil, errdefs.With(errdefs.Conflict, fmt.Errorf("step %d cannot be restored: %w", req.Step, p.err))
	}
	start := time.Now()
	onHeavy := p.on == api.TierHeavy
	lim, err := s.d.engine(onHeavy).Limits(s.requested)
	if err != nil {
		return nil, err
	}
	tenant := TenantOf(ctx)
	now := time.Now()
	f := &Session{id: newID(), d: s.d, owner: tenant.ID, auto: s.auto, ttl: ttl, requested: s.requested, packages: s.packages,
		created: now, lastUsed: now, replayable: s.replayable && !s.archived.Load(), stay: s.stay, limits: lim,
		reason: fmt.Sprintf("forked from step %d of %s", req.Step, s.id)}
	s.meta.Lock()
	f.netSpec = s.netSpec
	s.meta.Unlock()
	var pol *netpolicy.Policy
	if s.guard != nil {
		pol = s.guard.Policy()
	} else if pol, err = s.d.compileNetwork(nil, "", nil); err != nil { // archived: offline
		return nil, err
	}
	f.guard = s.d.newGuard(pol, tenant.ID, f.id)
	if f.place, err = s.d.reserve(tenant, onHeavy, lim.MemoryLimitMB); err != nil {
		return nil, err
	}
	// Through the parent's SessionBlocks, whose snapshots the tier may have cached; the fork's own
	// first snapshot then stores its state afresh (deduplicated).
	sb, err := s.restore(ctx, p, s.sessionBlocksIf())
	if err != nil {
		f.place.release()
		return nil, err
	}
	f.sb = sb
	if onHeavy {
		f.tier.Store(tierHeavy)
	}
	rec := newStep(api.StepFork, p.on, start, nil)
	rec.step.Target, rec.step.ForkedFrom, rec.step.Parent = req.Step, s.id, -1
	s.steps.mu.Lock()
	src := s.steps.steps[req.Step]
	rec.vars, rec.files = src.vars, src.files
	if f.replayable && !onHeavy {
		for _, r := range slices.Backward(s.steps.chainLocked(req.Step)) {
			if r.step.Kind == api.StepCell && r.step.Tier == api.TierNano {
				f.history = append(f.history, cell{code: r.step.Code, failed: r.step.ExitCode != 0 || r.step.ErrorType != ""})
				f.historyBytes += len(r.step.Code)
			}
		}
	}
	s.steps.mu.Unlock()
	f.mu.Lock()
	f.steps.appendStep(rec)
	s.d.mu.Lock()
	s.d.sessions[f.id] = f
	s.d.mu.Unlock()
	s.d.log.Info("session forked", "id", f.id, "from", s.id, "step", req.Step, "by", p.by, "tier", p.on, "ms", time.Since(start).Milliseconds())
	if p.by == api.RestoreBySnapshot && s.d.store.Copy(s.id, p.base, f.id, f.storeRecord(rec)) == nil {
		s.d.store.Retain(f.id, 0)
		f.replicateCopy(0)
		f.unlock()
		return f, nil
	}
	f.stepDone(0)
	return f, nil
}

// Pin keeps step n's snapshot whatever retention says (pin false lets it go again). A session
// closed with pinned steps keeps them.
func (s *Session) Pin(n int, pin bool) error {
	rec, err := s.steps.get(n)
	if err != nil {
		return err
	}
	if s.d.store == nil {
		return errdefs.With(errdefs.Conflict, errors.New("time travel is off on this server (no snapshot store)"))
	}
	if ch := s.snapping.Load(); ch != nil && pin {
		<-*ch // the step's snapshot may be the one being taken
	}
	if err := s.d.store.Pin(s.id, n, pin); err != nil {
		return err
	}
	s.steps.mu.Lock()
	rec.step.Pinned = pin
	s.steps.mu.Unlock()
	if !pin && s.archived.Load() && !s.d.store.EndSession(s.id, true) {
		// A closed session was kept only for its pinned steps: the last one is gone.
		s.d.mu.Lock()
		delete(s.d.archived, s.id)
		s.d.mu.Unlock()
	}
	return nil
}

// Step describes step n: the step, its full result, and the variables and files after it.
func (s *Session) Step(n int) (*api.StepDetail, error) {
	rec, err := s.steps.get(n)
	if err != nil {
		return nil, err
	}
	s.steps.mu.Lock()
	defer s.steps.mu.Unlock()
	live := false
	for _, r := range s.steps.chainLocked(s.steps.current) {
		live = live || r == rec
	}
	d := &api.StepDetail{Step: s.describeLocked(rec, !live), Result: rec.result, Variables: rec.vars, Files: rec.files}
	if d.Variables == nil {
		d.Variables = []api.Variable{}
	}
	if d.Files == nil {
		d.Files = []api.FileInfo{}
	}
	return d, nil
}

// inspection is a sandbox restored at one step to read its files, kept briefly for the next read.
type inspection struct {
	mu    sync.Mutex
	n     int          // guarded by mu
	sb    tier.Session // guarded by mu
	timer *time.Timer  // guarded by mu
}

// StepFile reads the file at p as it was after step n, from the step's snapshot restored into a
// short-lived inspection sandbox (not from a replay: that would run code to read a file).
func (s *Session) StepFile(ctx context.Context, n int, p string, max int64) ([]byte, error) {
	if err := limits.CheckPath(p); err != nil {
		return nil, err
	}
	if _, err := s.steps.get(n); err != nil {
		return nil, err
	}
	if _, err := s.waitSnapshot(ctx); err != nil {
		return nil, err
	}
	in := &s.inspect
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.sb == nil || in.n != n || !in.sb.Alive() {
		s.steps.mu.Lock()
		pl := s.planLocked(n)
		s.steps.mu.Unlock()
		if pl.err == nil && pl.by != api.RestoreBySnapshot {
			pl.err = errors.New("it has no snapshot of its own (rewind or fork to it, which replays its cells)")
		}
		if pl.err != nil {
			return nil, errdefs.With(errdefs.Conflict, fmt.Errorf("step %d cannot be inspected: %w", n, pl.err))
		}
		sb, err := s.restore(ctx, pl, s.d.store)
		if err != nil {
			return nil, err
		}
		s.closeInspectionLocked()
		in.n, in.sb = n, sb
	}
	if in.timer != nil {
		in.timer.Stop()
	}
	in.timer = time.AfterFunc(inspectIdle, s.resetInspection)
	return in.sb.ReadFile(ctx, p, max)
}

func (s *Session) closeInspectionLocked() {
	in := &s.inspect
	if in.sb != nil {
		in.sb.Close(context.Background())
		in.sb = nil
	}
	if in.timer != nil {
		in.timer.Stop()
		in.timer = nil
	}
}

// resetInspection closes the inspection sandbox, if any.
func (s *Session) resetInspection() {
	s.inspect.mu.Lock()
	defer s.inspect.mu.Unlock()
	s.closeInspectionLocked()
}

// endSteps is the step log's part of closing a session: the store drops its snapshots except the
// pinned ones, and a session with pinned steps stays findable for them (StepSession).
func (s *Session) endSteps() {
	s.resetInspection()
	if s.d.store == nil {
		return
	}
	if s.d.store.EndSession(s.id, true) {
		s.archived.Store(true)
		s.d.mu.Lock()
		s.d.archived[s.id] = s
		s.d.mu.Unlock()
	}
}

// StepSession finds a session for its steps: an open one (as Session does), or one closed, or from
// before a restart, that kept pinned steps, which can be listed, inspected and forked.
func (d *Dispatcher) StepSession(ctx context.Context, id string) (*Session, error) {
	d.mu.Lock()
	s := d.archived[id]
	d.mu.Unlock()
	if s != nil && TenantOf(ctx).sees(s.owner) {
		return s, nil
	}
	return d.Session(ctx, id)
}

// loadArchived lists the sessions the store kept from before a restart.
func (d *Dispatcher) loadArchived() {
	for _, a := range d.store.Archived() {
		s := &Session{id: a.Session, d: d, owner: a.Owner, closed: true}
		s.archived.Store(true)
		for _, r := range a.Steps {
			for len(s.steps.steps) < r.Step.N {
				kind := api.StepCell
				if len(s.steps.steps) == 0 {
					kind = api.StepStart
				}
				s.steps.steps = append(s.steps.steps, &stepRec{step: api.Step{N: len(s.steps.steps), Kind: kind, Tier: r.Step.Tier, At: r.Step.At, Parent: len(s.steps.steps) - 1},
					state: api.SnapshotThinned})
			}
			rec := &stepRec{step: r.Step, result: r.Result}
			s.steps.steps = append(s.steps.steps, rec)
			s.steps.current = r.Step.N
			if t, err := time.Parse(time.RFC3339Nano, r.Step.At); err == nil && s.created.IsZero() {
				s.created = t
			}
		}
		if snap, _, err := d.store.Load(a.Session, s.steps.current); err == nil {
			s.steps.steps[s.steps.current].vars, s.steps.steps[s.steps.current].files = snap.Variables, snap.Files
		}
		d.archived[s.id] = s
	}
}

// reserveSwitch takes a place and memoryMB on the other tier for a session that rewinds across
// tiers, which holds both while it restores. commit gives the old place and memory back; abort the
// new ones.
func (p *place) reserveSwitch(toHeavy bool, memoryMB int) (commit, abort func(), err error) {
	d := p.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.tierRoomLocked(toHeavy); err != nil {
		return nil, nil, err
	}
	give, err := d.budget.take(memoryMB, "rewinding the session across tiers")
	if err != nil {
		return nil, nil, err
	}
	d.countLocked(toHeavy, 1)
	commit = func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.countLocked(!toHeavy, -1)
		p.memory()
		p.heavy, p.memory = toHeavy, give
	}
	abort = func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.countLocked(toHeavy, -1)
		give()
	}
	return commit, abort, nil
}
