package heavy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/outputs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// fillPool keeps the pool full of started, preloaded sandboxes until the engine closes. After
// PoolIdle without a request it empties the pool (giving the memory back) and waits for the next one.
func (e *Engine) fillPool() {
	defer e.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-e.stop
		cancel()
	}()
	r := &refiller{}
	if !e.cfg.NoCheckpoint {
		r = e.newRefiller(ctx)
	}
	e.golden.Store(r)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if e.idle() {
			e.drainPool()
			select {
			case <-e.stop:
				return
			case <-e.wake:
			}
		}
		select {
		case <-e.stop:
			return
		default:
		}
		if r.image != "" && e.cfg.GoldenMaxAge > 0 && time.Since(r.made) > e.cfg.GoldenMaxAge {
			r = e.rotateGolden(ctx, r)
		}
		s, err := e.refill(ctx, r)
		if err != nil {
			e.log.Error("refilling the heavy pool", "err", err)
			select {
			case <-e.stop:
				return
			case <-time.After(5 * time.Second):
			}
			continue
		}
	offer:
		for {
			select {
			case e.pool <- s:
				break offer
			case <-e.stop:
				e.destroy(s)
				return
			case <-tick.C:
				if e.idle() {
					e.destroy(s)
					break offer
				}
			}
		}
	}
}

// idle reports whether no sandbox was asked for during PoolIdle.
func (e *Engine) idle() bool {
	return e.cfg.PoolIdle > 0 && time.Since(time.Unix(0, e.lastTake.Load())) > e.cfg.PoolIdle
}

// drainPool destroys the pooled sandboxes.
func (e *Engine) drainPool() {
	for {
		select {
		case s := <-e.pool:
			e.destroy(s)
		default:
			return
		}
	}
}

// PoolReady reports started sandboxes waiting in the pool.
func (e *Engine) PoolReady() int { return len(e.pool) }

// take returns a sandbox for one run or session: a pooled one when it fits the memory limit.
func (e *Engine) take(ctx context.Context, memoryMB int) (*sandbox, error) {
	e.lastTake.Store(time.Now().UnixNano())
	select {
	case e.wake <- struct{}{}: // an idle pool starts filling again
	default:
	}
	if memoryMB == e.cfg.Defaults.MemoryLimitMB {
	pooled:
		for {
			select {
			case s := <-e.pool:
				if s.exited() {
					// Killed while it waited (the host's OOM killer, an operator): never handed out, or
					// its run would be reported as the program's crash.
					e.Stats.PoolDead.Add(1)
					e.log.Warn("a pooled heavy sandbox had exited while it waited; replacing it", "id", s.id, "status", s.exitErr)
					e.destroyLater(s)
					continue
				}
				e.Stats.PoolHits.Add(1)
				e.foreground(s)
				return s, nil
			default:
				break pooled
			}
		}
		e.Stats.PoolMisses.Add(1)
		// A miss at the default memory limit restores the golden checkpoint when that is the faster
		// path; the request's own run pays for paging its memory in.
		if r := e.golden.Load(); r != nil && r.image != "" {
			if s, err := e.restore(ctx, r.image, false); err == nil {
				e.Stats.Restored.Add(1)
				return s, nil
			}
		}
		return e.start(ctx, memoryMB, false, false)
	}
	e.Stats.PoolMisses.Add(1)
	return e.start(ctx, memoryMB, false, false)
}

// ErrClosed is returned by a closed engine.
var ErrClosed = errors.New("heavy engine is closed")

// errStopped is what a call in a sandbox that Close killed returns.
var errStopped = errdefs.With(errdefs.Unavailable, fmt.Errorf("run stopped: %w", ErrClosed))

// ErrBusy is returned (as errdefs.Overloaded) when every slot is taken and the queue is full or was
// waited in for QueueWait.
var ErrBusy = errors.New("heavy tier busy")

// admit takes a slot for one sandbox serving a request, waiting in the bounded queue when all are
// taken. The returned release may be called more than once.
func (e *Engine) admit(ctx context.Context) (func(), error) {
	if e.closed.Load() {
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	release := sync.OnceFunc(func() { <-e.slots })
	select {
	case e.slots <- struct{}{}:
		return release, nil
	default:
	}
	busy := func(why string) error {
		return errdefs.With(errdefs.Overloaded, fmt.Errorf("%w: all %d heavy sandboxes are in use and %s; retry later", ErrBusy, e.cfg.MaxConcurrent, why))
	}
	if n := e.queued.Add(1); e.cfg.MaxQueue < 0 || n > int64(e.cfg.MaxQueue) {
		e.queued.Add(-1)
		return nil, busy(fmt.Sprintf("%d requests are waiting", max(e.cfg.MaxQueue, 0)))
	}
	defer e.queued.Add(-1)
	timer := time.NewTimer(e.cfg.QueueWait)
	defer timer.Stop()
	select {
	case e.slots <- struct{}{}:
		return release, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-timer.C:
		return nil, busy(fmt.Sprintf("none came free within %v", e.cfg.QueueWait))
	case <-e.stop:
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
}

// Run executes one program in a fresh sandbox, which is destroyed afterwards.
func (e *Engine) Run(ctx context.Context, req api.RunRequest, stream tier.Stream) (*api.Result, error) {
	res, _, err := e.RunCollect(ctx, req, stream, 0, 0)
	return res, err
}

// RunCollect is Run that also returns the files the program left under /output: each at most
// maxFile bytes and maxTotal in all (zero: collect nothing).
func (e *Engine) RunCollect(ctx context.Context, req api.RunRequest, stream tier.Stream, maxFile, maxTotal int64) (*api.Result, *tier.Collected, error) {
	if req.Tier != "" && req.Tier != api.TierHeavy {
		return nil, nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("tier %q is not served by the heavy engine", req.Tier))
	}
	lim, err := e.Limits(req.Limits)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range req.Files {
		if err := limits.CheckPath(f.Path); err != nil {
			return nil, nil, err
		}
	}
	if err := checkPackages(req.Packages); err != nil {
		return nil, nil, err
	}
	if err := limits.CheckEnv(req.Env); err != nil {
		return nil, nil, err
	}
	release, err := e.admit(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer release()
	s, err := e.take(ctx, lim.MemoryLimitMB)
	if err != nil {
		return nil, nil, err
	}
	defer e.destroyLater(s)
	if err := e.bind(ctx, s); err != nil {
		return nil, nil, err
	}
	if err := e.install(ctx, s, req.Packages); err != nil {
		return nil, nil, err
	}
	if len(req.Env) > 0 {
		if _, err := e.call(ctx, s, map[string]any{"op": "env", "env": req.Env}, timeoutOf(lim), smallLine, nil); err != nil {
			return nil, nil, fmt.Errorf("setting env: %w", err)
		}
	}
	for _, f := range req.Files {
		if _, err := e.call(ctx, s, map[string]any{"op": "write", "path": f.Path, "data": base64.StdEncoding.EncodeToString(f.Data)}, timeoutOf(lim), smallLine, nil); err != nil {
			var ae *agentError
			if errors.As(err, &ae) {
				err = errdefs.With(errdefs.InvalidArgument, err)
			}
			return nil, nil, fmt.Errorf("placing %s: %w", f.Path, err)
		}
	}
	res, hasOutput, err := e.execOutput(ctx, s, req.Code, req.Filename, true, !req.Script, lim, stream)
	if err != nil || maxTotal <= 0 || !hasOutput || s.killed.Load() {
		return res, nil, err
	}
	select {
	case <-s.done:
		return res, nil, nil // the sandbox died: nothing to collect
	default:
	}
	r, err := e.call(ctx, s, map[string]any{"op": "collect", "dir": "/output", "max_file": maxFile, "max_total": maxTotal}, 30*time.Second, base64Len(maxTotal)+listLine, nil)
	if err != nil {
		return res, nil, nil // the result stands; the files could not be read
	}
	var body struct {
		Files   map[string][]byte
		Omitted []string
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		return res, nil, nil
	}
	return res, &tier.Collected{Files: body.Files, Omitted: body.Omitted}, nil
}

// reply is one line from the agent.
type reply struct {
	ID        int             `json:"id"`
	Event     string          `json:"event"`
	Text      string          `json:"text"`
	Data      []byte          `json:"base64"` // a chunk of a read
	Count     int             `json:"count"`  // processes running, for "procs"
	ExitCode  int             `json:"exit_code"`
	Error     *api.Error      `json:"error"`
	Output    json.RawMessage `json:"output"` // a rich output, for "output"
	HasOutput bool            `json:"has_output"`
	Type      string          `json:"type"`
	Message   string          `json:"message"`
	Raw       json.RawMessage
}

// agentError is a request the agent refused ("failed"): Type is the Python exception's class, or
// FileTooLarge, or GuestCrash when the worker died or broke its channel.
type agentError struct{ Type, Message string }

func (e *agentError) Error() string { return e.Type + ": " + e.Message }

// Why a call was cut short.
var (
	errTimeout = errors.New("timeout")
	errDied    = errors.New("sandbox exited")
)

// The longest reply line each kind of request may be answered with (the agent keeps to the same
// caps): a run's result holds an error message and traceback of at most 64 KiB each, and each rich
// output comes in a line of its own (limits.MaxResultBytes is at most 16 MiB, 22 MiB in base64); a read comes in 1 MiB chunks; a listing has
// at most 10,000 entries; other answers are small. lineSlack covers the id and framing.
const (
	runLine    = 24 << 20
	readOpLine = 2 << 20
	listLine   = 8 << 20
	smallLine  = 1 << 20
	lineSlack  = 4 << 10
)

// base64Len is the encoded length of n bytes.
func base64Len(n int64) int { return int(min(n, 1<<40)+2) / 3 * 4 }

// timeoutOf is a run's time limit.
func timeoutOf(lim api.Limits) time.Duration { return time.Duration(lim.TimeoutMS) * time.Millisecond }

// call sends one request and reads the agent's answers until its result, giving stdout, stderr and
// data events to on. Every reply must be a line of at most maxLine bytes answering this request;
// anything else is a protocol fault (errProtocol). The sandbox is killed when ctx ends, timeout
// passes, on fails, or the protocol breaks; call never waits past timeout plus runsc's kill bounds.
func (e *Engine) call(ctx context.Context, s *sandbox, req map[string]any, timeout time.Duration, maxLine int, on func(r *reply) error) (*reply, error) {
	e.busy.Add(1)
	defer e.busy.Add(-1)
	s.nextID++
	id := s.nextID
	s.procs = 0
	req["id"], req["max_line"] = id, maxLine
	head, err := json.Marshal(map[string]any{"id": id, "op": req["op"], "max_line": maxLine})
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	s.maxLine.Store(int64(maxLine + lineSlack))
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, errTimeout)
	defer cancel()
	// An agent that stops reading must not hold the write past the deadline.
	s.in.SetWriteDeadline(time.Time{})
	stopWrite := context.AfterFunc(ctx, func() { s.in.SetWriteDeadline(time.Unix(1, 0)) })
	nl := []byte{'\n'}
	bufs := net.Buffers{head, nl, body, nl} // without copying a body of up to the request's size
	_, err = bufs.WriteTo(s.in)
	stopWrite()
	if err != nil {
		if ctx.Err() != nil {
			e.kill(s, false)
			return nil, context.Cause(ctx)
		}
		if s.closing.Load() {
			return nil, errStopped
		}
		return nil, fmt.Errorf("%w: %v", errDied, err)
	}
	fault := func(err error) (*reply, error) {
		e.kill(s, false)
		return nil, err
	}
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				if s.closing.Load() {
					return nil, errStopped
				}
				return nil, errDied
			}
			if l.err != nil {
				return fault(l.err)
			}
			var r reply
			if err := json.Unmarshal(l.b, &r); err != nil {
				return fault(protocolErr("unreadable reply %s: %v", quote(l.b), err))
			}
			if r.ID != id {
				return fault(protocolErr("a reply for request %d to request %d: %s", r.ID, id, quote(l.b)))
			}
			switch r.Event {
			case "stdout", "stderr", "data", "output":
				if on != nil {
					if err := on(&r); err != nil {
						return fault(err)
					}
				}
			case "procs":
				s.procs = max(s.procs, r.Count)
			case "result":
				r.Raw = l.b
				return &r, nil
			case "failed":
				return nil, &agentError{Type: r.Type, Message: clip(r.Message, 4<<10)}
			default:
				return fault(protocolErr("unknown event %s", quote([]byte(r.Event))))
			}
		case <-ctx.Done():
			return fault(context.Cause(ctx))
		}
	}
}

// clip shortens s to at most n bytes.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

// exec runs code in a sandbox and turns the agent's answer, or the sandbox's death, into a Result.
func (e *Engine) exec(ctx context.Context, s *sandbox, code, filename string, fresh, repl bool, lim api.Limits, stream tier.Stream) (*api.Result, error) {
	res, _, err := e.execOutput(ctx, s, code, filename, fresh, repl, lim, stream)
	return res, err
}

// procsNotable is the process count from which a killed sandbox's message names it.
const procsNotable = 4

// execOutput is exec that also says whether the program left anything under /output. A sandbox's
// first run is always fresh: its worker reseeds its random generators (the pool's came from one
// checkpoint). With repl, a final expression's value is the main result.
func (e *Engine) execOutput(ctx context.Context, s *sandbox, code, filename string, fresh, repl bool, lim api.Limits, stream tier.Stream) (*api.Result, bool, error) {
	start := time.Now()
	fresh = fresh || s.runs == 0
	s.runs++
	var mu sync.Mutex
	var stdout, stderr limits.Output
	stdout.Reset(lim.MaxOutputBytes)
	stderr.Reset(lim.MaxOutputBytes)
	outputFull := errors.New("output limit")
	results := outputs.NewCollector(lim, stream.Output)
	forward := func(r *reply) error {
		if r.Event != "stdout" && r.Event != "stderr" && r.Event != "output" {
			return protocolErr("a %s event during a run", quote([]byte(r.Event)))
		}
		mu.Lock()
		defer mu.Unlock()
		if r.Event == "output" {
			results.Add(r.Output)
			return nil
		}
		w, cb := &stdout, stream.Stdout
		if r.Event == "stderr" {
			w, cb = &stderr, stream.Stderr
		}
		kept, _ := w.Write(r.Text)
		if cb != nil && kept != "" {
			cb(kept)
		}
		if w.Truncated() {
			return outputFull
		}
		return nil
	}
	r, err := e.call(ctx, s, map[string]any{"op": "run", "code": code, "filename": filename, "fresh": fresh, "repl": repl, "svg": lim.FigureSVG}, timeoutOf(lim), runLine, forward)
	res := &api.Result{Tier: api.TierHeavy, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	var ae *agentError
	switch {
	case err == nil:
		res.ExitCode, res.Error = r.ExitCode, r.Error
	case errors.Is(err, errTimeout):
		res.TimedOut, res.ExitCode = true, api.ExitTimeout
		res.Error = &api.Error{Type: api.ErrTimeout, Message: fmt.Sprintf("execution exceeded the %d ms time limit", lim.TimeoutMS)}
	case errors.Is(err, outputFull):
		res.ExitCode = 1
		res.Error = &api.Error{Type: api.ErrOutputLimitExceeded, Message: fmt.Sprintf("output exceeded the %d byte limit; the program was stopped", lim.MaxOutputBytes)}
	case ctx.Err() != nil:
		return nil, false, fmt.Errorf("run cancelled: %w", context.Cause(ctx))
	case errors.Is(err, errProtocol):
		res.ExitCode = api.ExitCrash
		res.Error = &api.Error{Type: api.ErrGuestCrash, Message: err.Error() + "; the sandbox was stopped"}
	case errors.As(err, &ae) && ae.Type == api.ErrGuestCrash:
		res.ExitCode = api.ExitCrash
		res.Error = &api.Error{Type: api.ErrGuestCrash, Message: ae.Message}
	case errors.Is(err, errDied):
		res.Error = e.death(s, lim)
		res.ExitCode, res.MemoryExceeded = api.ExitCrash, res.Error.Type == api.ErrMemoryLimitExceeded
		if res.MemoryExceeded {
			res.ExitCode = api.ExitMemory
		}
	default:
		return nil, false, fmt.Errorf("heavy sandbox: %w", err)
	}
	mu.Lock()
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	res.OutputTruncated = stdout.Truncated() || stderr.Truncated()
	results.Finish(res)
	mu.Unlock()
	return res, r != nil && r.HasOutput, nil
}

// death says why a sandbox's agent went away, once runsc has exited (bounded: a sandbox that does not
// exit is killed).
func (e *Engine) death(s *sandbox, lim api.Limits) *api.Error {
	select {
	case <-s.done:
	case <-time.After(killGrace):
		e.kill(s, false)
		select {
		case <-s.done:
		case <-time.After(killGrace):
			return &api.Error{Type: api.ErrGuestCrash, Message: "the sandbox's agent went away and the sandbox did not exit; it was killed"}
		}
	}
	code := s.cmd.ProcessState.ExitCode()
	if code != api.ExitMemory && code != -1 {
		return &api.Error{Type: api.ErrGuestCrash, Message: fmt.Sprintf("the sandbox exited unexpectedly (status %d)", code)}
	}
	// SIGKILL that we did not send: the memory cgroup's OOM kill.
	if s.procs >= procsNotable {
		return &api.Error{Type: api.ErrMemoryLimitExceeded, Message: fmt.Sprintf("the sandbox was killed (SIGKILL) with %d processes running (process limit %d): together they needed more than its %d MiB memory limit (a fork bomb?)", s.procs, e.cfg.Pids, lim.MemoryLimitMB)}
	}
	return &api.Error{Type: api.ErrMemoryLimitExceeded, Message: fmt.Sprintf("the sandbox was killed (SIGKILL); most likely the program needed more than its %d MiB memory limit", lim.MemoryLimitMB)}
}

// destroyLater tears a used sandbox down in the background: runsc kill and delete take a few hundred
// milliseconds that the caller need not wait for. Close waits for them. Once Close has begun, the
// teardown is done here instead: Close may be in e.wg.Wait already, and an Add from zero then would
// race with it and could let Close return before the teardown (the race detector caught it in
// TestCloseKillsLiveSandboxes).
func (e *Engine) destroyLater(s *sandbox) {
	s.killed.Store(true)
	e.setShares(s, backgroundShares) // its teardown must not slow the next request
	e.mu.Lock()
	closing := e.closed.Load() // Close sets it under e.mu before it waits
	if !closing {
		e.wg.Add(1)
	}
	e.mu.Unlock()
	if closing {
		e.destroy(s)
		return
	}
	go func() {
		defer e.wg.Done()
		e.destroy(s)
	}()
}

// Close stops the pool, lets the calls in flight (runs, session cells and file operations) finish
// until ctx is done, then kills every sandbox the engine still has (pooled, running, sessions: they
// answer errdefs.Unavailable or ErrSessionGone) and removes the engine's state. Every wait after ctx
// ends is bounded by runsc's kill and delete bounds. It returns ctx's error if calls were still
// running when it ended.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed.Swap(true) {
		e.mu.Unlock()
		return nil
	}
	e.mu.Unlock()
	close(e.stop) // the pool filler's context ends: a refill in progress stops
	var err error
	for e.busy.Load() > 0 {
		if ctx.Err() != nil {
			err = fmt.Errorf("closing heavy engine: %d calls still running: %w", e.busy.Load(), ctx.Err())
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// No sandbox is registered any more (closed is set); kill those there are, in parallel.
	e.mu.Lock()
	live := make([]*sandbox, 0, len(e.live))
	for s := range e.live {
		live = append(live, s)
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range live {
		s.closing.Store(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.destroy(s)
		}()
	}
	wg.Wait()
	e.wg.Wait() // the pool filler and background teardowns
	if e.pool != nil {
		e.drainPool()
	}
	// runsc --network=none bind-mounts an empty network namespace under its root; it outlives the
	// sandboxes, so it is unmounted here (possibly stacked).
	unmountUnder(e.cfg.StateDir)
	if e.net != nil {
		if nerr := e.net.Close(); nerr != nil {
			err = errors.Join(err, nerr)
		}
	}
	if e.ownState {
		return errors.Join(err, os.RemoveAll(e.cfg.StateDir))
	}
	// Nothing of a closed engine is needed again: the next one starts from an empty root.
	if entries, rerr := os.ReadDir(e.cfg.StateDir); rerr == nil {
		for _, ent := range entries {
			if ent.Name() != "lock" {
				if rerr := os.RemoveAll(filepath.Join(e.cfg.StateDir, ent.Name())); rerr != nil {
					err = errors.Join(err, fmt.Errorf("removing heavy state: %w", rerr))
				}
			}
		}
	}
	e.lock.Close() // releases the flock
	return err
}

// session is a heavy sandbox kept between runs: variables, imports and files persist until Close or
// until its sandbox dies (a timeout or crash). It holds one of the engine's MaxConcurrent slots for
// its whole life.
type session struct {
	e       *Engine
	s       *sandbox
	limits  api.Limits
	release func() // gives the slot back
	mu      sync.Mutex
	closed  bool // guarded by mu
	// packages were installed at NewSession; a snapshot records them (steps.go).
	packages []string
	lastSnap SnapshotStats // the last Snapshot's; guarded by mu
	restored RestoreStats  // set by Restore before the session is handed out
}

var (
	_ tier.Engine  = (*Engine)(nil)
	_ tier.Session = (*session)(nil)
)

// NewSession takes a slot (waiting in the bounded queue, errdefs.Overloaded beyond it) and starts a
// session with packages installed. The slot is given back when starting fails or at Close.
func (e *Engine) NewSession(ctx context.Context, limits api.Limits, packages []string) (tier.Session, error) {
	lim, err := e.Limits(limits)
	if err != nil {
		return nil, err
	}
	if err := checkPackages(packages); err != nil {
		return nil, err
	}
	release, err := e.admit(ctx)
	if err != nil {
		return nil, err
	}
	s, err := e.take(ctx, lim.MemoryLimitMB)
	if err != nil {
		release()
		return nil, err
	}
	if err = e.bind(ctx, s); err == nil {
		err = e.install(ctx, s, packages)
	}
	if err != nil {
		e.destroyLater(s)
		release()
		return nil, err
	}
	return &session{e: e, s: s, limits: lim, release: release, packages: packages}, nil
}

func (ss *session) usable() error {
	if ss.closed || ss.s.killed.Load() {
		return errdefs.With(errdefs.NotFound, tier.ErrGone)
	}
	select {
	case <-ss.s.done:
		return errdefs.With(errdefs.NotFound, tier.ErrGone)
	default:
	}
	return nil
}

// Alive reports whether the session can still run code (not closed, its sandbox not dead).
func (ss *session) Alive() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.usable() == nil
}

// Run executes code in the session.
func (ss *session) Run(ctx context.Context, code string, stream tier.Stream) (*api.Result, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err := ss.usable(); err != nil {
		return nil, err
	}
	// A session's policy may have been opened since it started (PATCH .../network).
	if err := ss.e.refuseUngoverned(ctx, ss.s); err != nil {
		return nil, err
	}
	res, err := ss.e.exec(ctx, ss.s, code, "<cell>", false, true, ss.limits, stream)
	if err != nil || res.TimedOut || res.MemoryExceeded || res.Error != nil && res.Error.Type == api.ErrGuestCrash || ss.s.killed.Load() {
		ss.closeLocked()
	}
	return res, err
}

// WriteFile places data at the absolute sandbox path p.
func (ss *session) WriteFile(ctx context.Context, p string, data []byte) error {
	if err := limits.CheckPath(p); err != nil {
		return err
	}
	_, err := ss.op(ctx, map[string]any{"op": "write", "path": p, "data": base64.StdEncoding.EncodeToString(data)}, smallLine, nil)
	return err
}

// ReadFile returns the content of the file at the absolute sandbox path p, refusing one larger than
// max bytes (errdefs.TooLarge; max is at most MaxReadBytes, zero means MaxReadBytes). The agent checks
// the size before it reads and sends the file in chunks, so a large file costs neither side more than
// the cap.
func (ss *session) ReadFile(ctx context.Context, p string, max int64) ([]byte, error) {
	if err := limits.CheckPath(p); err != nil {
		return nil, err
	}
	if max <= 0 || max > ss.e.cfg.MaxReadBytes {
		max = ss.e.cfg.MaxReadBytes
	}
	var data []byte
	_, err := ss.op(ctx, map[string]any{"op": "read", "path": p, "max": max}, readOpLine, func(r *reply) error {
		if r.Event != "data" {
			return protocolErr("a %s event during a read", quote([]byte(r.Event)))
		}
		if int64(len(data)+len(r.Data)) > max {
			return protocolErr("a read of %s answered more than the %d bytes asked", p, max)
		}
		data = append(data, r.Data...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// fileEntry is one name in the agent's listing.
type fileEntry struct {
	Name  string  `json:"name"`
	Path  string  `json:"path"`
	Size  int64   `json:"size"`
	IsDir bool    `json:"is_dir"`
	MTime float64 `json:"mtime"`
}

// ListFiles lists the directory dir.
func (ss *session) ListFiles(ctx context.Context, dir string) ([]api.FileInfo, error) {
	if err := limits.CheckPath(dir); err != nil {
		return nil, err
	}
	r, err := ss.op(ctx, map[string]any{"op": "list", "dir": dir}, listLine, nil)
	if err != nil {
		return nil, err
	}
	var body struct{ Files []fileEntry }
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		ss.Close(ctx)
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("%w: %w: unreadable listing: %v", tier.ErrGone, errProtocol, err))
	}
	out := make([]api.FileInfo, 0, len(body.Files))
	for _, e := range body.Files {
		out = append(out, api.FileInfo{Name: e.Name, Path: e.Path, Size: e.Size, IsDir: e.IsDir,
			ModTime: time.Unix(int64(e.MTime), 0).UTC().Format(time.RFC3339Nano)})
	}
	return out, nil
}

// opTimeout bounds a file operation.
const opTimeout = 60 * time.Second

// op runs a file operation through the agent: paths resolve inside the sandbox, as its user, so
// nothing the guest planted (links, "..") can reach the host. The agent's refusals are classified by
// their type; a sandbox that broke the protocol, timed out or died ends the session.
func (ss *session) op(ctx context.Context, req map[string]any, maxLine int, on func(r *reply) error) (*reply, error) {
	return ss.opFor(ctx, req, opTimeout, maxLine, on)
}

// opFor is op with its own time bound.
func (ss *session) opFor(ctx context.Context, req map[string]any, timeout time.Duration, maxLine int, on func(r *reply) error) (*reply, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err := ss.usable(); err != nil {
		return nil, err
	}
	r, err := ss.e.call(ctx, ss.s, req, timeout, maxLine, on)
	if err == nil {
		return r, nil
	}
	var ae *agentError
	switch {
	case errors.As(err, &ae) && (ae.Type == "FileNotFoundError" && req["op"] != "exec" || ae.Type == "NoSuchProcess"):
		return nil, errdefs.With(errdefs.NotFound, err)
	case errors.As(err, &ae) && ae.Type == "FileTooLarge":
		return nil, errdefs.With(errdefs.TooLarge, err)
	case errors.As(err, &ae) && ae.Type == "CommandEnded":
		return nil, errdefs.With(errdefs.Conflict, err)
	case errors.As(err, &ae) && ae.Type != api.ErrGuestCrash:
		return nil, errdefs.With(errdefs.InvalidArgument, err)
	case ctx.Err() != nil && !errors.Is(err, errTimeout):
		ss.closeLocked() // the call killed the sandbox
		return nil, err
	}
	ss.closeLocked()
	return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("%w: %w", tier.ErrGone, err))
}

// Close destroys the session's sandbox and gives its slot back. Closing twice is not an error.
func (ss *session) Close(context.Context) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.closeLocked()
	return nil
}

func (ss *session) closeLocked() {
	if !ss.closed {
		ss.closed = true
		ss.e.destroy(ss.s)
		ss.release()
	}
}
