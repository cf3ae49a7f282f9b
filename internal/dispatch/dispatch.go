// Package dispatch places runs and sessions on a tier. It routes tier "auto" with the router's rules,
// runs a nano program again on heavy when it failed for want of something heavy has, and keeps a
// session under one id while moving it from nano to heavy (its earlier cells are replayed there and
// its files copied). The HTTP API and the MCP tools both serve through it.
//
// It also admits: every session and run acts for a Tenant (the API key, from the context), which owns
// the sessions it starts; session places and memory are reserved before a sandbox starts, and runs
// get a fair share of each tier's slots per tenant (admit.go).
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/router"
	"github.com/entersandbox/agentbox/internal/snapstore"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Config configures a Dispatcher. Zero values are the defaults given per field.
type Config struct {
	// Heavy serves tier "heavy" and the fallbacks to it; nil (or an engine that is a nil pointer)
	// means this host has no heavy tier: tier "heavy" and packages are refused, and tier "auto" always
	// runs on nano (saying so).
	Heavy tier.Engine
	// NoHeavyReason says why there is no heavy tier when Heavy is nil (not installed, runsc cannot
	// start here, --heavy off); tier "heavy" and packages are then refused with ErrNoHeavy naming
	// it. Nil means ErrNoHeavy's own hint (install it with build/heavy/build.sh).
	NoHeavyReason error
	// Rules route tier "auto"; nil means the shipped rules.
	Rules *router.Rules
	// SessionTTL is the idle time after which a session that asked for none is closed; zero means
	// 10 minutes.
	SessionTTL time.Duration
	// MaxFileBytes caps each /output file a run returns, MaxFilesBytes their total; zero means 8 MiB
	// and 32 MiB. Files beyond the caps are named in FilesOmitted.
	MaxFileBytes  int64
	MaxFilesBytes int64
	// MaxHeavySessions caps the sessions open or starting on heavy (each is a gVisor sandbox of
	// ~90 MiB), MaxNanoSessions those on nano. A place is reserved before the sandbox starts and given
	// back when the start fails or the session ends; a session asked for beyond the cap is refused at
	// once as overloaded (a place frees only when some session ends, so waiting would be unbounded),
	// and an auto session that would move stays on nano. Zero means 16 and 64.
	MaxHeavySessions int
	MaxNanoSessions  int
	// MemoryBudgetMB is the memory that sessions and runs are admitted against: each holds its memory
	// limit from admission until it ends, and what does not fit is refused as overloaded. Zero means
	// DefaultMemoryBudgetMB (three quarters of the host's memory; no budget where that is unknown),
	// negative means no budget.
	MemoryBudgetMB int
	// NanoSlots and HeavySlots are how many runs each tier executes at once (the engines'
	// MaxConcurrent), which the tenants' fair shares divide; zero means what the engine reports
	// (a Slots() int method, as the nano engine's), else GOMAXPROCS for nano and 8 for heavy.
	NanoSlots  int
	HeavySlots int
	// TenantLimits apply to every tenant whose own Tenant.Limits leave a field zero; zero fields mean
	// what TenantLimits documents.
	TenantLimits TenantLimits
	// MaxReplayBytes caps the code of a session's cells kept for replaying them on heavy; a session
	// past it stays on nano. Zero means 4 MiB.
	MaxReplayBytes int
	// Logger receives session moves and reaping; nil discards.
	Logger *slog.Logger
	// Ceiling bounds every run's and session's network (agentbox serve --policy); nil means no
	// ceiling: only offline sandboxes, and a request asking for a network is refused saying so.
	Ceiling *netpolicy.Ceiling
	// NetworkSink receives every network event of every sandbox as it is recorded (the audit log),
	// with the tenant (TenantOf's ID) that started the run or session and its id ("ses_..." or
	// "run_..."); nil logs them to Logger.
	NetworkSink func(tenant, sandbox string, e api.NetworkEvent)
	// Snapshots is the time-travel store: each session step is snapshotted into it by tiers that can
	// (tier.Snapshotter) and restored from it (tier.Restorer); nil means no time travel (steps are
	// listed, with snapshot state "none"). Sessions it kept from before a restart are loaded by New.
	Snapshots *snapstore.Store
	// OnSessionEnd is called after the reaper has closed a session by itself: idle past its TTL
	// (reason "ttl") or whose sandbox had gone ("sandbox gone"), with the session as it was; nil
	// means nothing is told (the audit log records it as session.expire).
	OnSessionEnd func(info api.Session, reason string)
	// SessionClosed is called with the id of every session that ends while the dispatcher runs, for
	// any reason (closed by its client, idle past its TTL, its sandbox gone), but not for those Close
	// ends with the dispatcher. It is called with the session's lock held: it must not block or call
	// back into the session (a fleet forgets the session's record in the background). Nil means
	// nothing is told.
	SessionClosed func(id string)
}

// Output receives a run's output as it is written (what a tier streams, tier.Stream) and the
// router's fallbacks; nil fields discard.
type Output struct {
	Stdout, Stderr func(text string)
	// Output receives each rich output as it is made (tier.Stream.Output).
	Output func(out api.Output)
	// Fallback is called with the nano result that failed, before the run starts again on heavy.
	Fallback func(failed *api.Result, reason string)
}

// stream is what the tiers are given.
func (o Output) stream() tier.Stream {
	return tier.Stream{Stdout: o.Stdout, Stderr: o.Stderr, Output: o.Output}
}

func (o Output) fallback(res *api.Result, reason string) {
	if o.Fallback != nil {
		o.Fallback(res, reason)
	}
}

// Dispatcher places runs and sessions on the nano and heavy tiers.
type Dispatcher struct {
	nano  tier.Engine
	heavy tier.Engine // nil: no heavy tier
	rules *router.Rules
	cfg   Config
	log   *slog.Logger

	store *snapstore.Store // nil: no time travel
	// replicator receives committed steps and ended sessions (SetReplicator); nil: none.
	replicator atomic.Pointer[Replicator]

	nanoRuns  *runGate
	heavyRuns *runGate
	budget    *memoryBudget

	mu       sync.Mutex
	sessions map[string]*Session // guarded by mu
	// archived are closed sessions (or from before a restart) kept for their pinned steps; guarded by mu
	archived map[string]*Session
	// Session places reserved (open or starting sessions), per tier and per tenant; guarded by mu.
	nanoPlaces, heavyPlaces int
	tenantPlaces            map[string]int // guarded by mu
	stop                    chan struct{}
	stopOnce                sync.Once
}

// New returns a Dispatcher over the nano engine n and cfg.Heavy.
func New(n tier.Engine, cfg Config) *Dispatcher {
	if cfg.Rules == nil {
		cfg.Rules = router.DefaultRules()
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 10 * time.Minute
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = 8 << 20
	}
	if cfg.MaxFilesBytes <= 0 {
		cfg.MaxFilesBytes = 32 << 20
	}
	if cfg.MaxHeavySessions <= 0 {
		cfg.MaxHeavySessions = 16
	}
	if cfg.MaxNanoSessions <= 0 {
		cfg.MaxNanoSessions = 64
	}
	if cfg.MaxReplayBytes <= 0 {
		cfg.MaxReplayBytes = 4 << 20
	}
	if cfg.MemoryBudgetMB == 0 {
		cfg.MemoryBudgetMB = DefaultMemoryBudgetMB()
	}
	if cfg.NanoSlots <= 0 {
		cfg.NanoSlots = engineSlots(n, runtime.GOMAXPROCS(0))
	}
	if cfg.HeavySlots <= 0 {
		cfg.HeavySlots = 8
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if isNil(cfg.Heavy) {
		cfg.Heavy = nil // a nil *heavy.Engine in the interface is no heavy tier, not one that panics
	}
	d := &Dispatcher{nano: n, heavy: cfg.Heavy, rules: cfg.Rules, cfg: cfg, log: log,
		nanoRuns: newRunGate(api.TierNano, cfg.NanoSlots), heavyRuns: newRunGate(api.TierHeavy, cfg.HeavySlots),
		budget:   &memoryBudget{totalMB: int64(cfg.MemoryBudgetMB)},
		sessions: map[string]*Session{}, tenantPlaces: map[string]int{}, stop: make(chan struct{}),
		store: cfg.Snapshots, archived: map[string]*Session{}}
	if d.store != nil {
		d.loadArchived()
	}
	go d.reap()
	return d
}

// engineSlots is how many runs e says it executes at once, or def when it does not say.
func engineSlots(e tier.Engine, def int) int {
	if s, ok := e.(interface{ Slots() int }); ok && !isNil(e) && s.Slots() > 0 {
		return s.Slots()
	}
	return def
}

// isNil reports whether e is nil or a nil pointer in the interface.
func isNil(e tier.Engine) bool {
	if e == nil {
		return true
	}
	v := reflect.ValueOf(e)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// ErrNoHeavy is returned for tier "heavy" or packages on a host without the heavy tier.
var ErrNoHeavy = errdefs.With(errdefs.InvalidArgument, errors.New("tier \"heavy\" is not available on this server (install it with build/heavy/build.sh)"))

// noHeavyError is ErrNoHeavy with Config.NoHeavyReason's words instead of the install hint.
type noHeavyError struct{ reason error }

func (e noHeavyError) Error() string {
	return "tier \"heavy\" is not available on this server: " + e.reason.Error()
}
func (e noHeavyError) Is(target error) bool { return target == ErrNoHeavy }
func (e noHeavyError) Unwrap() error        { return e.reason }

// checkPlacement refuses an unknown tier, packages on the nano tier and heavy on a host without it.
func (d *Dispatcher) checkPlacement(t api.Tier, pkgs []string) error {
	switch t {
	case "", api.TierAuto, api.TierNano, api.TierHeavy:
	default:
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("unknown tier %q (want nano, heavy or auto)", t))
	}
	if len(pkgs) > 0 && t == api.TierNano {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("packages %v need tier \"heavy\"; the nano tier has the standard library only", pkgs))
	}
	if d.heavy == nil && (t == api.TierHeavy || len(pkgs) > 0) {
		if d.cfg.NoHeavyReason != nil {
			return errdefs.With(errdefs.InvalidArgument, noHeavyError{d.cfg.NoHeavyReason})
		}
		return ErrNoHeavy
	}
	return nil
}

// route picks the tier for tier "auto" and says why. allowed_modules is a nano policy, so it pins the
// run there.
func (d *Dispatcher) route(req api.RunRequest) (api.Tier, string) {
	if len(req.Limits.AllowedModules) > 0 {
		return api.TierNano, "allowed_modules is a nano-tier policy, so the run stays on nano"
	}
	dec := d.rules.Decide(req)
	if dec.Tier == api.TierHeavy && d.heavy == nil {
		return api.TierNano, dec.Reason + "; the heavy tier is not available here, so it ran on nano"
	}
	return dec.Tier, dec.Reason
}

// Run runs one program in a fresh sandbox on the tier req asks for, routing tier "auto" (or none)
// by its imports, packages and limits, and running it again on heavy when it failed on nano for want
// of something heavy has. A program's own failure is in the response; the error is for requests that
// are invalid or cannot be served.
//
// Its network policy (req.Network, Task, Intent) is compiled inside the ceiling first; an online one
// is carried to the tier as a Guard in ctx (netpolicy.WithGuard), and the events it recorded, on
// every tier the run used, are the result's NetworkEvents.
func (d *Dispatcher) Run(ctx context.Context, req api.RunRequest, out Output) (*api.RunResponse, error) {
	if err := d.checkPlacement(req.Tier, req.Packages); err != nil {
		return nil, err
	}
	p, err := d.compileNetwork(req.Network, req.Task, req.Intent)
	if err != nil {
		return nil, err
	}
	if p.Offline() {
		return d.run(ctx, req, out)
	}
	g := d.newGuard(p, TenantOf(ctx).ID, runID())
	resp, err := d.run(netpolicy.WithGuard(ctx, g), req, out)
	if resp != nil {
		resp.NetworkEvents = append(resp.NetworkEvents, g.Drain()...)
	}
	return resp, err
}

// run places and runs req (Run without the network).
func (d *Dispatcher) run(ctx context.Context, req api.RunRequest, out Output) (*api.RunResponse, error) {
	reason := fmt.Sprintf("tier %q was asked for", req.Tier)
	auto := req.Tier == "" || req.Tier == api.TierAuto
	if auto {
		req.Tier, reason = d.route(req)
	}
	if req.Tier == api.TierHeavy {
		return d.runHeavy(ctx, req, out, reason, "")
	}
	release, err := d.admitRun(ctx, api.TierNano, req.Limits, true)
	if err != nil {
		return nil, err
	}
	defer release()
	resp, err := d.runOn(ctx, d.nano, req, out)
	if err != nil {
		return nil, err
	}
	resp.RouteReason = reason
	if auto && d.heavy != nil && len(req.Limits.AllowedModules) == 0 {
		// Nano runs touch nothing outside their sandbox, so running one again elsewhere is safe.
		if why, ok := d.rules.Fallback(&resp.Result); ok {
			out.fallback(&resp.Result, why)
			release() // the nano sandbox is gone; the heavy run is admitted on its own
			req.Tier = api.TierHeavy
			return d.runHeavy(ctx, req, out, why, api.TierNano)
		}
	}
	return resp, nil
}

func (d *Dispatcher) runHeavy(ctx context.Context, req api.RunRequest, out Output, reason string, from api.Tier) (*api.RunResponse, error) {
	release, err := d.admitRun(ctx, api.TierHeavy, req.Limits, true)
	if err != nil {
		return nil, err
	}
	defer release()
	resp, err := d.runOn(ctx, d.heavy, req, out)
	if err != nil {
		return nil, err
	}
	resp.RouteReason, resp.FallbackFrom = reason, from
	return resp, nil
}

// runOn runs req on the tier e and collects its /output files within the caps.
func (d *Dispatcher) runOn(ctx context.Context, e tier.Engine, req api.RunRequest, out Output) (*api.RunResponse, error) {
	res, files, err := e.RunCollect(ctx, req, out.stream(), d.cfg.MaxFileBytes, d.cfg.MaxFilesBytes)
	if err != nil {
		return nil, err
	}
	resp := &api.RunResponse{Result: *res, Files: map[string][]byte{}}
	if files != nil {
		resp.Files, resp.FilesOmitted = files.Files, files.Omitted
	}
	return resp, nil
}

// admitRun admits a run on tier for the tenant ctx acts for: a place within its fair share (waiting
// in its queue for one), and, with charge, the run's memory limit from the budget. A session's cells
// are not charged: the session holds its memory.
func (d *Dispatcher) admitRun(ctx context.Context, tier api.Tier, lim api.Limits, charge bool) (release func(), err error) {
	t := TenantOf(ctx)
	gate, limits := d.nanoRuns, d.nano.Limits
	if tier == api.TierHeavy {
		gate, limits = d.heavyRuns, d.heavy.Limits
	}
	mb := 0
	if charge {
		resolved, err := limits(lim)
		if err != nil {
			return nil, err
		}
		mb = resolved.MemoryLimitMB
	}
	leave, err := gate.acquire(ctx, t, t.Limits.over(d.cfg.TenantLimits))
	if err != nil {
		return nil, err
	}
	if !charge {
		return leave, nil
	}
	give, err := d.budget.take(mb, "a run")
	if err != nil {
		leave()
		return nil, err
	}
	return func() { give(); leave() }, nil
}

// Stats are the dispatcher's gauges.
type Stats struct {
	RunsWaiting    int  // runs waiting in their tenants' queues for a place on a tier
	MemoryUsedMB   int  // memory limits of the open sessions and running programs
	MemoryBudgetMB int  // what they are admitted against; 0 means no budget
	QueueDepth     int  // nano runs waiting for a slot
	PoolReady      int  // restored nano sandboxes ready
	Sessions       int  // open sessions on nano
	HeavySessions  int  // open sessions on heavy (including moved ones)
	HeavyPoolReady int  // started heavy sandboxes ready
	Heavy          bool // the heavy tier is available
}

// Stats reports the gauges.
func (d *Dispatcher) Stats() Stats {
	st := Stats{PoolReady: d.nano.PoolReady(), Heavy: d.heavy != nil,
		RunsWaiting: d.nanoRuns.waiting() + d.heavyRuns.waiting(), MemoryUsedMB: int(d.budget.used()),
		MemoryBudgetMB: max(d.cfg.MemoryBudgetMB, 0)}
	if q, ok := d.nano.(interface{ QueueDepth() int }); ok {
		st.QueueDepth = q.QueueDepth()
	}
	if d.heavy != nil {
		st.HeavyPoolReady = d.heavy.PoolReady()
	}
	st.Sessions, st.HeavySessions = d.sessionCounts()
	return st
}

// sessionCounts counts the open sessions on each tier.
func (d *Dispatcher) sessionCounts() (onNano, onHeavy int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.sessions {
		if s.tier.Load() == tierHeavy {
			onHeavy++
		} else {
			onNano++
		}
	}
	return onNano, onHeavy
}

// place is a session's reservation: a session place on its tier, one of its tenant's, and its memory
// limit from the budget, taken before the sandbox starts and given back once when the session ends
// or fails to start.
type place struct {
	d      *Dispatcher
	tenant string
	heavy  bool   // guarded by d.mu
	memory func() // gives the memory back; guarded by d.mu
	once   sync.Once
}

// reserve takes a session place on the tier (heavy or nano) for t, and memoryMB of the budget.
func (d *Dispatcher) reserve(t Tenant, heavy bool, memoryMB int) (*place, error) {
	lim := t.Limits.over(d.cfg.TenantLimits)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.tierRoomLocked(heavy); err != nil {
		return nil, err
	}
	if n := d.tenantPlaces[t.ID]; lim.Sessions > 0 && n >= lim.Sessions {
		return nil, errdefs.With(errdefs.Overloaded, fmt.Errorf("%s has %d sessions open or starting, the most it may; close one first", t.label(), n))
	}
	give, err := d.budget.take(memoryMB, "a new session")
	if err != nil {
		return nil, err
	}
	d.countLocked(heavy, 1)
	d.tenantPlaces[t.ID]++
	return &place{d: d, tenant: t.ID, heavy: heavy, memory: give}, nil
}

func (d *Dispatcher) tierRoomLocked(heavy bool) error {
	if heavy && d.heavyPlaces >= d.cfg.MaxHeavySessions {
		return errdefs.With(errdefs.Overloaded, fmt.Errorf("%d heavy sessions are open or starting, the most this server allows", d.heavyPlaces))
	}
	if !heavy && d.nanoPlaces >= d.cfg.MaxNanoSessions {
		return errdefs.With(errdefs.Overloaded, fmt.Errorf("%d nano sessions are open or starting, the most this server allows", d.nanoPlaces))
	}
	return nil
}

func (d *Dispatcher) countLocked(heavy bool, n int) {
	if heavy {
		d.heavyPlaces += n
	} else {
		d.nanoPlaces += n
	}
}

// release gives the place back; later calls do nothing.
func (p *place) release() {
	p.once.Do(func() {
		d := p.d
		d.mu.Lock()
		defer d.mu.Unlock()
		d.countLocked(p.heavy, -1)
		if d.tenantPlaces[p.tenant]--; d.tenantPlaces[p.tenant] <= 0 {
			delete(d.tenantPlaces, p.tenant)
		}
		p.memory()
	})
}

// reserveMove takes a heavy place and memoryMB for a nano session moving there, which holds both
// sandboxes while it moves. commit gives the nano place and memory back; abort the heavy ones.
func (p *place) reserveMove(memoryMB int) (commit, abort func(), err error) {
	d := p.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.tierRoomLocked(true); err != nil {
		return nil, nil, err
	}
	give, err := d.budget.take(memoryMB, "moving the session to heavy")
	if err != nil {
		return nil, nil, err
	}
	d.heavyPlaces++
	commit = func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.nanoPlaces--
		p.memory()
		p.heavy, p.memory = true, give
	}
	abort = func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.heavyPlaces--
		give()
	}
	return commit, abort, nil
}

// Close ends every session; the engines are the caller's to close.
func (d *Dispatcher) Close() {
	d.stopOnce.Do(func() { close(d.stop) })
	d.mu.Lock()
	all := d.sessions
	d.sessions = map[string]*Session{}
	d.mu.Unlock()
	for _, s := range all {
		s.mu.Lock()
		s.closeLocked()
		s.mu.Unlock()
	}
}

// reap closes sessions idle past their TTL and forgets those whose sandbox has gone.
func (d *Dispatcher) reap() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-tick.C:
		}
		d.mu.Lock()
		var ended []*Session
		var reasons []string
		for id, s := range d.sessions {
			// A short hold: a request arriving meanwhile waits for it instead of being refused as busy.
			s.short.Add(1)
			if !s.mu.TryLock() {
				s.short.Add(-1)
				continue // busy, so not idle
			}
			if idle, gone := time.Since(s.lastUsed) > s.ttl, s.gone(); idle || gone {
				reason := "ttl"
				if !idle {
					reason = "sandbox gone"
				}
				ended, reasons = append(ended, s), append(reasons, reason)
				delete(d.sessions, id)
			}
			s.mu.Unlock()
			s.short.Add(-1)
		}
		d.mu.Unlock()
		for i, s := range ended {
			s.mu.Lock()
			info := s.Info()
			s.closeLocked()
			s.mu.Unlock()
			d.log.Info("session ended", "id", s.id, "idle", time.Since(s.lastUsed).Round(time.Second))
			if d.cfg.OnSessionEnd != nil {
				d.cfg.OnSessionEnd(info, reasons[i])
			}
		}
	}
}

// stopping reports whether Close has begun.
func (d *Dispatcher) stopping() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

// forget drops a session that has ended (closeLocked, its lock held) and tells SessionClosed.
func (d *Dispatcher) forget(id string) {
	d.mu.Lock()
	delete(d.sessions, id)
	d.mu.Unlock()
	if d.cfg.SessionClosed != nil && !d.stopping() {
		d.cfg.SessionClosed(id)
	}
}
