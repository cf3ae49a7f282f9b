// Package nano is agentbox's fast tier: CPython compiled to wasm32-wasi, run by wazero, with no network,
// a private in-memory filesystem and hard limits on memory, time and output.
//
// Every sandbox is a new module instance whose linear memory is a copy-on-write mapping of a snapshot
// taken after the interpreter was initialised and common modules imported, so a run starts in well under
// a millisecond instead of the tens of milliseconds a plain start costs. See docs/nano-snapshot.md.
package nano

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	wapi "github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/outputs"
	"github.com/entersandbox/agentbox/internal/pywasm"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/vfs"
)

//go:embed runner.py
var runnerFile []byte

// runnerSource is what agentbox_init executes: a prelude that loads the shared rich-results module
// (internal/outputs) as _agentbox_outputs, then runner.py. Both are compiled as "<agentbox-runner>", so
// tracebacks leave their frames out.
var runnerSource = func() []byte {
	quoted, err := json.Marshal(string(outputs.PySource)) // a JSON string is a valid Python literal
	if err != nil {
		panic(err)
	}
	prelude := "import sys as _s, types as _t\n" +
		"_m = _t.ModuleType('_agentbox_outputs')\n" +
		"exec(compile(" + string(quoted) + ", '<agentbox-runner>', 'exec'), _m.__dict__)\n" +
		"_s.modules['_agentbox_outputs'] = _m\n" +
		"del _s, _t, _m\n"
	return append([]byte(prelude), runnerFile...)
}()

// Built-in defaults and ceilings for Config fields left zero.
const (
	defaultTimeout   = 30 * time.Second
	defaultMemoryMB  = 256
	defaultOutput    = 1 << 20
	maxTimeout       = 10 * time.Minute
	maxMemoryMB      = 2048
	maxOutput        = 64 << 20
	defaultPoolSize  = 4
	defaultRotate    = time.Minute
	defaultRotateN   = 10_000
	defaultSessions  = 64
	minMemoryMB      = 32
	defaultQueuePerW = 32
	// defaultGuestsPerCore is MaxConcurrent's default per GOMAXPROCS: measured with `agentbox bench
	// --load --server-concurrency N` (docs/nano-performance.md, "Scheduling").
	defaultGuestsPerCore = 32
	defaultShortRunCPU   = 10 * time.Millisecond
	// defaultSnapshotCache is Config.SnapshotCacheMB's default.
	defaultSnapshotCache = 64
)

// Directories every sandbox has. Work is the working directory and is on sys.path.
const (
	DirData   = "/data"
	DirOutput = "/output"
	DirTmp    = "/tmp"
	DirWork   = "/home/user"
)

// Config configures an Engine. The zero value is ready to use.
type Config struct {
	// Defaults apply to a request's zero limit fields. Zero fields here mean 30 s, 256 MiB and 1 MiB of
	// output per stream.
	Defaults api.Limits
	// Max are the largest limits a request may ask for; asking for more is an invalid-argument error.
	// Zero fields mean 10 min, 2048 MiB and 64 MiB.
	Max api.Limits
	// FS are the quotas of each sandbox's filesystem; zero fields mean vfs's defaults.
	FS vfs.Limits
	// MaxConcurrent is how many runs execute at once, their guests sharing the cores (a running
	// guest holds no Go P, so the kernel schedules their threads); zero means 32 per GOMAXPROCS, so
	// that a short run starts at once beside long ones instead of queueing behind them (see
	// ShortRunCPU and docs/nano-performance.md). A run whose program sleeps (time.sleep, select with
	// a timeout) gives its slot up until it wakes, up to MaxSleeping.
	MaxConcurrent int
	// ShortRunCPU is the CPU time a run's guest thread uses at the process's priority; past it the
	// thread is lowered to nice 10 (Linux only), so that new runs get the CPU before long ones,
	// which keep about a tenth of a short one's share and all of what is idle. Zero means 10 ms,
	// negative disables the lowering: every guest shares the CPU equally.
	ShortRunCPU time.Duration
	// MaxSleeping bounds the runs asleep without a slot, each still holding its sandbox's memory; past
	// it a sleeping program keeps its slot. Zero means 32 per GOMAXPROCS, negative means sleeping
	// programs always keep their slot.
	MaxSleeping int
	// MaxQueue is how many runs may wait for a slot before new ones are refused as overloaded; zero
	// means 32 per GOMAXPROCS, negative means none wait.
	MaxQueue int
	// PoolSize is how many restored, unused sandboxes are kept ready; zero means 4, negative disables
	// the pool.
	PoolSize int
	// RotateAfter and RotateRuns bound how long and for how many sandboxes one snapshot is used before a
	// new one is made in the background. A snapshot fixes the interpreter's str-hash secret, so this is
	// how often that secret changes. Zero means one minute and 10,000 runs; negative disables rotation.
	RotateAfter time.Duration
	RotateRuns  int
	// MaxSessions caps the sessions open or starting, each holding an interpreter's memory; zero
	// means 64. (Idle TTLs are the session registry's, internal/dispatch.)
	MaxSessions int
	// CheckedMemory compiles a bounds check into every guest memory access, as wazero does upstream,
	// instead of masking the address into the sandbox's own reservation (docs/masked-memory.md).
	// False means masked where the platform allows it (Linux); masked code runs CPU-bound Python
	// about a fifth faster. Out-of-bounds accesses trap when checked and wrap when masked.
	CheckedMemory bool
	// CacheDir holds wazero's compilation cache (and saved snapshots); empty means the user cache
	// directory's agentbox/wazero, and "off" disables both.
	CacheDir string
	// SnapshotMaxAge, when positive, saves the first snapshot in CacheDir and lets later engines start
	// from it while it is younger than this, instead of initialising an interpreter (~0.35 s): what a
	// one-shot CLI run wants. A saved snapshot fixes the str-hash secret for that long across
	// processes. Zero means every engine makes its own.
	SnapshotMaxAge time.Duration
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger
	// HTTP is the egress data plane the programs' HTTP requests (urllib.request, http.client,
	// agentbox.http) go through, each under the netpolicy.Guard of its run's context (a session's:
	// the one it started with). Nil, or a run without a Guard, is offline: the requests fail as the
	// sockets do. See docs/egress-nano.md.
	HTTP HTTP
	// HTTPMaxRequestBytes caps one request's body through the bridge; zero means 8 MiB.
	HTTPMaxRequestBytes int64
	// HTTPMaxResponseBytes caps one response's body; zero means 32 MiB.
	HTTPMaxResponseBytes int64
	// SnapshotCacheMB is the memory kept for copies of the pages session snapshots stored or
	// restores read, so that rewinding or forking a recent step copies them instead of reading
	// them from the store (docs/time-travel-nano.md); zero means 64 MiB, negative none.
	SnapshotCacheMB int
}

// Engine runs Python programs in nano sandboxes. It is safe for concurrent use.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	rt       wazero.Runtime
	compiled wazero.CompiledModule
	segments []dataSegment
	stdlib   *vfs.Layer
	baseCfg  wazero.ModuleConfig
	reserve  uint64 // bytes of guest memory a sandbox may grow to (the largest memory limit)
	masked   bool   // guest memory accesses are masked (Config.CheckedMemory, maskedMemory)
	regions  *regionPool

	snapMu   sync.Mutex // serialises snapshot creation
	snap     atomic.Pointer[snapshot]
	rotating atomic.Bool
	// noRestore: raising a demoted guest thread's priority failed once; guest calls hand off to
	// threads of their own since (sched_linux.go).
	noRestore atomic.Bool

	slots    chan struct{} // one token per run using a CPU slot (see runSlot)
	waiting  atomic.Int64
	sleeping atomic.Int64 // runs asleep that gave their slot up, against MaxSleeping
	lastUsed atomic.Int64 // unix nanoseconds of the last admitted run

	// closeMu orders admissions before Close's wait for them: admit adds to inflight under RLock after
	// checking closed, Close sets closed under Lock, so no run is added once Close waits.
	closeMu  sync.RWMutex
	inflight sync.WaitGroup // admitted runs not yet finished, sleeping ones included
	halt     chan struct{}  // closed when Close stops waiting for runs: sleeping programs are stopped
	// haltCtx is cancelled with halt: running programs are stopped (exec cancels its run on it).
	haltCtx  context.Context
	haltRuns context.CancelFunc

	pool     chan *instance
	poolStop chan struct{}
	poolDone sync.WaitGroup

	sessMu sync.Mutex
	// sessions are the sessions open or starting, counted against MaxSessions and closed by Close;
	// guarded by sessMu.
	sessions map[*session]struct{}

	closed    atomic.Bool
	closeOnce sync.Once
	stats     Stats
	pages     *pageCache // of session snapshots (steps.go)
}

// Stats are counters for metrics and benchmarks.
type Stats struct {
	Runs       atomic.Int64
	PoolHits   atomic.Int64
	PoolMisses atomic.Int64
	Snapshots  atomic.Int64
	Refused    atomic.Int64
	// Demoted counts the runs whose guest thread used its ShortRunCPU and was lowered.
	Demoted atomic.Int64
}

// snapshot is an initialised interpreter's linear memory and stack pointer.
type snapshot struct {
	mem     *image
	sp      uint32
	created time.Time
	uses    atomic.Int64
	pages   basePages // its pages' hashes and blocks, for session snapshots (steps.go)
}

// New compiles the interpreter, takes the first snapshot and starts the pool.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	cfg = withDefaults(cfg)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{cfg: cfg, log: log, sessions: map[*session]struct{}{}, halt: make(chan struct{}),
		pages: newPageCache(cfg.SnapshotCacheMB << 20 / osPage)}
	e.haltCtx, e.haltRuns = context.WithCancel(context.Background())
	e.reserve = uint64(cfg.Max.MemoryLimitMB) << 20
	e.masked = maskedMemory && !cfg.CheckedMemory
	e.regions = newRegionPool(e.reserve, cfg.MaxConcurrent+max(cfg.PoolSize, 0)+2, e.masked)

	stripped, segs, err := stripDataSegments(pywasm.Wasm())
	if err != nil {
		return nil, fmt.Errorf("preparing python.wasm: %w", err)
	}
	e.segments = segs

	rcfg := wazero.NewRuntimeConfigCompiler().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(uint32(e.reserve / wasmPage))
	var cacheDir string
	if cfg.CacheDir != "off" {
		dir := cfg.CacheDir
		if dir == "" {
			if base, err := os.UserCacheDir(); err == nil {
				dir = filepath.Join(base, "agentbox", "wazero")
			}
		}
		cacheDir = dir
		if dir != "" {
			cache, err := wazero.NewCompilationCacheWithDir(dir)
			if err != nil {
				log.Warn("compilation cache unavailable", "dir", dir, "err", err)
			} else {
				rcfg = rcfg.WithCompilationCache(cache)
			}
		}
	}
	e.rt = wazero.NewRuntimeWithConfig(ctx, rcfg)
	fail := func(err error) (*Engine, error) {
		e.rt.Close(ctx)
		return nil, err
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, e.rt); err != nil {
		return fail(fmt.Errorf("instantiating WASI: %w", err))
	}
	if _, err := e.rt.NewHostModuleBuilder("agentbox").
		NewFunctionBuilder().
		WithGoFunction(wapi.GoFunc(hostFSErrno), nil, []wapi.ValueType{wapi.ValueTypeI32}).
		Export("fs_errno").
		Instantiate(ctx); err != nil {
		return fail(fmt.Errorf("instantiating host functions: %w", err))
	}
	start := time.Now()
	compileCtx := ctx
	if e.masked {
		compileCtx = experimental.WithMaskedMemory(ctx)
	}
	e.compiled, err = e.rt.CompileModule(compileCtx, stripped)
	if err != nil {
		return fail(fmt.Errorf("compiling python.wasm: %w", err))
	}
	log.Debug("compiled python.wasm", "ms", time.Since(start).Milliseconds())

	zr, err := pywasm.Stdlib()
	if err != nil {
		return fail(err)
	}
	if e.stdlib, err = vfs.NewLayerFromZip(zr, "lib/python3.11"); err != nil {
		return fail(fmt.Errorf("loading the standard library: %w", err))
	}
	e.baseCfg = wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions().
		WithArgs("python3").
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader) // instantiate adds each sandbox's own sleep (instance.sleep)

	var snap *snapshot
	if cfg.SnapshotMaxAge > 0 && cacheDir != "" {
		snap, err = e.savedSnapshot(ctx, filepath.Join(cacheDir, "snapshots"), cfg.SnapshotMaxAge)
	} else {
		snap, err = e.makeSnapshot(ctx)
	}
	if err != nil {
		return fail(err)
	}
	e.snap.Store(snap)

	e.slots = make(chan struct{}, cfg.MaxConcurrent)
	e.poolStop = make(chan struct{})
	if cfg.PoolSize > 0 {
		e.pool = make(chan *instance, cfg.PoolSize)
		e.poolDone.Add(1)
		go e.fillPool()
	}
	go e.trimIdle()
	return e, nil
}

func withDefaults(cfg Config) Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&cfg.Max.TimeoutMS, int(maxTimeout/time.Millisecond))
	def(&cfg.Max.MemoryLimitMB, maxMemoryMB)
	def(&cfg.Max.MaxOutputBytes, maxOutput)
	def(&cfg.Defaults.TimeoutMS, min(int(defaultTimeout/time.Millisecond), cfg.Max.TimeoutMS))
	def(&cfg.Defaults.MemoryLimitMB, min(defaultMemoryMB, cfg.Max.MemoryLimitMB))
	def(&cfg.Defaults.MaxOutputBytes, min(defaultOutput, cfg.Max.MaxOutputBytes))
	cores := runtime.GOMAXPROCS(0)
	def(&cfg.MaxConcurrent, defaultGuestsPerCore*cores)
	if cfg.ShortRunCPU == 0 {
		cfg.ShortRunCPU = defaultShortRunCPU
	}
	def(&cfg.MaxQueue, defaultQueuePerW*cores)
	if cfg.MaxQueue < 0 {
		cfg.MaxQueue = 0
	}
	def(&cfg.MaxSleeping, defaultQueuePerW*cores)
	if cfg.MaxSleeping < 0 {
		cfg.MaxSleeping = 0
	}
	def(&cfg.PoolSize, defaultPoolSize)
	if cfg.RotateAfter == 0 {
		cfg.RotateAfter = defaultRotate
	}
	def(&cfg.RotateRuns, defaultRotateN)
	def(&cfg.MaxSessions, defaultSessions)
	def(&cfg.SnapshotCacheMB, defaultSnapshotCache)
	return cfg
}

// Limits resolves a request's limits against the engine's defaults and maxima.
func (e *Engine) Limits(req api.Limits) (api.Limits, error) {
	out, err := limits.Resolve(req, e.cfg.Defaults, e.cfg.Max, minMemoryMB, api.TierNano)
	if err != nil {
		return out, err
	}
	for _, name := range out.AllowedModules {
		if !validModuleName(name) {
			return out, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("allowed_modules: %q is not a module name", name))
		}
	}
	return out, nil
}

func validModuleName(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// ErrClosed is returned by an engine that has been closed.
var ErrClosed = errors.New("nano engine is closed")

// runSlot is an admitted run: it counts as in flight until done, and holds one of the engine's CPU
// slots except while its program sleeps (instance.sleep gives the slot up and takes it back).
type runSlot struct {
	e    *Engine
	held bool // only touched by the goroutine running the program: host calls run on it
}

// acquire waits for a CPU slot, until ctx is done or the engine halts.
func (s *runSlot) acquire(ctx context.Context) error {
	select {
	case s.e.slots <- struct{}{}:
		s.held = true
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a run slot: %w", context.Cause(ctx))
	case <-s.e.halt:
		return errdefs.With(errdefs.Unavailable, ErrClosed)
	}
}

// release gives the CPU slot up, if held.
func (s *runSlot) release() {
	if s.held {
		s.held = false
		<-s.e.slots
	}
}

// sleep gives the slot up for a sleep, unless MaxSleeping runs sleep without one already: then the
// run keeps it, as a busy one would. It reports whether the slot was given up (then wake must follow).
func (s *runSlot) sleep() bool {
	if !s.held {
		return false
	}
	if s.e.sleeping.Add(1) > int64(s.e.cfg.MaxSleeping) {
		s.e.sleeping.Add(-1)
		return false
	}
	s.release()
	return true
}

// wake ends a sleep that gave the slot up: it takes a slot back, unless the sleep was cut short
// (stopped, non-nil), which it returns.
func (s *runSlot) wake(ctx context.Context, stopped error) error {
	s.e.sleeping.Add(-1)
	if stopped != nil {
		return stopped
	}
	return s.acquire(ctx)
}

// wait sleeps for d, or less when ctx is done or the engine halts (then it says why).
func (e *Engine) wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-e.halt:
		return errdefs.With(errdefs.Unavailable, ErrClosed)
	}
}

// done ends the run.
func (s *runSlot) done() {
	s.release()
	s.e.inflight.Done()
}

// admit waits for a run slot. It refuses at once when MaxQueue runs are already waiting.
func (e *Engine) admit(ctx context.Context) (*runSlot, error) {
	e.closeMu.RLock()
	if e.closed.Load() {
		e.closeMu.RUnlock()
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	e.inflight.Add(1)
	e.closeMu.RUnlock()
	s := &runSlot{e: e}
	e.lastUsed.Store(time.Now().UnixNano())
	select {
	case e.slots <- struct{}{}:
		s.held = true
		return s, nil
	default:
	}
	if e.waiting.Add(1) > int64(e.cfg.MaxQueue) {
		e.waiting.Add(-1)
		e.inflight.Done()
		e.stats.Refused.Add(1)
		return nil, errdefs.With(errdefs.Overloaded, fmt.Errorf("nano tier is at capacity: %d runs executing and %d waiting", e.cfg.MaxConcurrent, e.cfg.MaxQueue))
	}
	defer e.waiting.Add(-1)
	if err := s.acquire(ctx); err != nil {
		e.inflight.Done()
		return nil, err
	}
	return s, nil
}

// Slots reports how many runs execute at once (Config.MaxConcurrent after defaults), which the
// dispatcher's fair shares divide.
func (e *Engine) Slots() int { return e.cfg.MaxConcurrent }

// QueueDepth reports runs waiting for a slot.
func (e *Engine) QueueDepth() int { return int(e.waiting.Load()) }

// PoolReady reports restored sandboxes waiting in the pool.
func (e *Engine) PoolReady() int { return len(e.pool) }

// Stats returns the engine's counters.
func (e *Engine) Stats() *Stats { return &e.stats }

// Run executes one program in a fresh sandbox and returns its result. Problems of the program (an
// exception, a limit) are in the Result; the error reports requests that were invalid or could not be
// served (errdefs classes).
func (e *Engine) Run(ctx context.Context, req api.RunRequest, stream tier.Stream) (*api.Result, error) {
	var out *api.Result
	err := e.RunInstance(ctx, req, stream, func(res *api.Result, _ *vfs.FS) error {
		out = res
		return nil
	})
	return out, err
}

// RunCollect is Run that also returns the files the program left under /output: each at most
// maxFile bytes and maxTotal in all (maxTotal zero: none); the others are named in Omitted.
func (e *Engine) RunCollect(ctx context.Context, req api.RunRequest, stream tier.Stream, maxFile, maxTotal int64) (*api.Result, *tier.Collected, error) {
	var out *api.Result
	var files *tier.Collected
	err := e.RunInstance(ctx, req, stream, func(res *api.Result, sfs *vfs.FS) error {
		out = res
		if maxTotal > 0 {
			files = collect(sfs, maxFile, maxTotal)
		}
		return nil
	})
	return out, files, err
}

// collect gathers the files under /output within the size caps.
func collect(sfs *vfs.FS, maxFile, maxTotal int64) *tier.Collected {
	c := &tier.Collected{Files: map[string][]byte{}}
	var total int64
	sfs.Walk(DirOutput, func(p string, size int64) error {
		if size > maxFile || total+size > maxTotal {
			c.Omitted = append(c.Omitted, p)
			return nil
		}
		data, err := sfs.ReadFile(p, maxFile)
		if err != nil {
			c.Omitted = append(c.Omitted, p)
			return nil
		}
		total += int64(len(data))
		c.Files[p] = data
		return nil
	})
	return c
}

// RunInstance is Run for callers that need the sandbox's filesystem afterwards (files written under
// /output): fn is called with the result and the finished sandbox's filesystem before it is discarded.
func (e *Engine) RunInstance(ctx context.Context, req api.RunRequest, stream tier.Stream, fn func(res *api.Result, fs *vfs.FS) error) error {
	if req.Tier != "" && req.Tier != api.TierNano && req.Tier != api.TierAuto {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("tier %q is not served by the nano engine", req.Tier))
	}
	if len(req.Packages) > 0 {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("packages %v need tier \"heavy\"; the nano tier has the standard library only", req.Packages))
	}
	lim, err := e.Limits(req.Limits)
	if err != nil {
		return err
	}
	for _, f := range req.Files {
		if err := limits.CheckPath(f.Path); err != nil {
			return err
		}
	}
	if err := limits.CheckEnv(req.Env); err != nil {
		return err
	}
	slot, err := e.admit(ctx)
	if err != nil {
		return err
	}
	defer slot.done()
	inst, err := e.take(ctx)
	if err != nil {
		return err
	}
	defer inst.close(ctx)
	for _, f := range req.Files {
		if err := inst.fs.WriteFile(f.Path, f.Data, 0o644); err != nil {
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("placing file %q: %w", f.Path, err))
		}
	}
	e.stats.Runs.Add(1)
	res, err := inst.exec(ctx, execRequest{code: req.Code, filename: req.Filename, stdin: req.Stdin, limits: lim, slot: slot,
		guard: netpolicy.GuardOf(ctx), repl: !req.Script, env: req.Env}, stream)
	if err != nil {
		return err
	}
	return fn(res, inst.fs)
}

// take returns a restored sandbox: from the pool when one is ready, otherwise a new one.
func (e *Engine) take(ctx context.Context) (*instance, error) {
	for {
		select {
		case inst := <-e.pool:
			if inst.snap != e.snap.Load() {
				inst.close(ctx) // made from a snapshot that has since been rotated out
				continue
			}
			e.stats.PoolHits.Add(1)
			e.noteUse(inst.snap)
			return inst, nil
		default:
		}
		break
	}
	if e.pool != nil {
		e.stats.PoolMisses.Add(1)
	}
	inst, err := e.restoreCurrent(ctx)
	if err != nil {
		return nil, err
	}
	e.noteUse(inst.snap)
	return inst, nil
}

// restoreCurrent restores a sandbox from the current snapshot.
func (e *Engine) restoreCurrent(ctx context.Context) (*instance, error) {
	s := e.snap.Load()
	if s == nil {
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	return e.restore(ctx, s)
}

// fillPool keeps the pool full until the engine closes.
func (e *Engine) fillPool() {
	defer e.poolDone.Done()
	ctx := context.Background()
	for {
		select {
		case <-e.poolStop:
			return
		default:
		}
		inst, err := e.restoreCurrent(ctx)
		if err == nil {
			err = inst.warm(ctx)
		}
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return
			}
			e.log.Error("refilling the sandbox pool", "err", err)
			select {
			case <-e.poolStop:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		select {
		case e.pool <- inst:
		case <-e.poolStop:
			inst.close(ctx)
			return
		}
	}
}

// noteUse counts a use of the snapshot and starts a rotation when it is due.
func (e *Engine) noteUse(s *snapshot) {
	n := s.uses.Add(1)
	if e.cfg.RotateAfter < 0 && e.cfg.RotateRuns < 0 {
		return
	}
	due := (e.cfg.RotateRuns > 0 && n >= int64(e.cfg.RotateRuns)) ||
		(e.cfg.RotateAfter > 0 && time.Since(s.created) >= e.cfg.RotateAfter)
	if due && e.rotating.CompareAndSwap(false, true) {
		go func() {
			defer e.rotating.Store(false)
			if e.snap.Load() != s || e.closed.Load() {
				return
			}
			next, err := e.makeSnapshot(context.Background())
			if err != nil {
				e.log.Error("rotating the nano snapshot", "err", err)
				return
			}
			e.snap.Store(next)
		}()
	}
}

// Close stops the pool, closes all sessions and releases the runtime. Runs in progress, session cells
// included, may finish until ctx is done; then every program still running or sleeping is stopped
// (its run fails as errdefs.Unavailable) and the sessions are closed. Close does not wait for a
// running cell under its session's lock.
func (e *Engine) Close(ctx context.Context) error {
	var err error
	e.closeOnce.Do(func() {
		e.closeMu.Lock()
		e.closed.Store(true)
		e.closeMu.Unlock()
		close(e.poolStop)
		e.poolDone.Wait()
		if e.pool != nil {
		drain:
			for {
				select {
				case inst := <-e.pool:
					inst.close(ctx)
				default:
					break drain
				}
			}
		}
		// Wait for runs in progress, as long as ctx allows; no new one is admitted.
		finished := make(chan struct{})
		go func() {
			e.inflight.Wait()
			close(finished)
		}()
		select {
		case <-finished:
		case <-ctx.Done():
			err = fmt.Errorf("closing nano engine: %w", ctx.Err())
		}
		close(e.halt)
		e.haltRuns()
		// The stopped programs return at their next check; their sessions' locks come free then.
		select {
		case <-finished:
		case <-time.After(haltWait):
			e.log.Warn("nano runs still going after they were stopped", "waited", haltWait)
		}
		e.sessMu.Lock()
		sessions := make([]*session, 0, len(e.sessions))
		for s := range e.sessions {
			sessions = append(sessions, s)
		}
		e.sessMu.Unlock()
		for _, s := range sessions {
			s.Close(context.Background())
		}
		e.snap.Store(nil)
		if cerr := e.rt.Close(context.Background()); cerr != nil && err == nil {
			err = fmt.Errorf("closing wazero runtime: %w", cerr)
		}
		e.regions.close()
	})
	return err
}

var _ tier.Engine = (*Engine)(nil)

// haltWait bounds how long Close waits for stopped programs to return.
const haltWait = 10 * time.Second
