package heavy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
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
		select {
		case s := <-e.pool:
			e.Stats.PoolHits.Add(1)
			e.foreground(s)
			return s, nil
		default:
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

func (e *Engine) admit(ctx context.Context) (func(), error) {
	if e.closed.Load() {
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	select {
	case e.slots <- struct{}{}:
		return func() { <-e.slots }, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// Stream receives output as the program writes it.
type Stream struct {
	Stdout, Stderr func(text string)
}

// Output is what a run left under /output, within the caps it was collected with.
type Output struct {
	Files   map[string][]byte
	Omitted []string
}

// Run executes one program in a fresh sandbox, which is destroyed afterwards.
func (e *Engine) Run(ctx context.Context, req api.RunRequest, stream Stream) (*api.Result, error) {
	res, _, err := e.RunCollect(ctx, req, stream, 0, 0)
	return res, err
}

// RunCollect is Run that also returns the files the program left under /output: each at most
// maxFile bytes and maxTotal in all (zero: collect nothing).
func (e *Engine) RunCollect(ctx context.Context, req api.RunRequest, stream Stream, maxFile, maxTotal int64) (*api.Result, *Output, error) {
	if req.Tier != "" && req.Tier != api.TierHeavy {
		return nil, nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("tier %q is not served by the heavy engine", req.Tier))
	}
	lim, err := e.Limits(req.Limits)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range req.Files {
		if err := checkPath(f.Path); err != nil {
			return nil, nil, err
		}
	}
	if err := checkPackages(req.Packages); err != nil {
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
	if err := e.install(ctx, s, req.Packages); err != nil {
		return nil, nil, err
	}
	for _, f := range req.Files {
		if _, err := e.call(ctx, s, map[string]any{"op": "write", "path": f.Path, "data": base64.StdEncoding.EncodeToString(f.Data)}, lim, nil); err != nil {
			return nil, nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("placing %s: %w", f.Path, err))
		}
	}
	res, hasOutput, err := e.execOutput(ctx, s, req.Code, req.Filename, true, lim, stream)
	if err != nil || maxTotal <= 0 || !hasOutput || s.killed.Load() {
		return res, nil, err
	}
	select {
	case <-s.done:
		return res, nil, nil // the sandbox died: nothing to collect
	default:
	}
	r, err := e.call(ctx, s, map[string]any{"op": "collect", "dir": "/output", "max_file": maxFile, "max_total": maxTotal}, api.Limits{TimeoutMS: 30_000}, nil)
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
	return res, &Output{Files: body.Files, Omitted: body.Omitted}, nil
}

func checkPath(p string) error {
	switch {
	case p == "" || p[0] != '/':
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("path %q: must be absolute", p))
	case strings.ContainsRune(p, 0):
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("path %q: contains a NUL byte", p))
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("path %q: must not contain \"..\"", p))
		}
	}
	return nil
}

// reply is one line from the agent.
type reply struct {
	ID        int            `json:"id"`
	Event     string         `json:"event"`
	Text      string         `json:"text"`
	ExitCode  int            `json:"exit_code"`
	Error     *api.Error     `json:"error"`
	Artifacts []api.Artifact `json:"artifacts"`
	HasOutput bool           `json:"has_output"`
	Type      string         `json:"type"`
	Message   string         `json:"message"`
	Raw       json.RawMessage
}

// Why a call was cut short.
var (
	errTimeout = errors.New("timeout")
	errDied    = errors.New("sandbox exited")
)

// call sends one request and reads the agent's answers until its result, forwarding output events to
// out. The sandbox is killed when ctx ends or the time limit passes.
func (e *Engine) call(ctx context.Context, s *sandbox, req map[string]any, lim api.Limits, out func(r *reply) error) (*reply, error) {
	s.nextID++
	req["id"] = s.nextID
	line, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, time.Duration(lim.TimeoutMS)*time.Millisecond, errTimeout)
	defer cancel()
	type result struct {
		r   *reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		if _, err := s.in.Write(append(line, '\n')); err != nil {
			done <- result{err: fmt.Errorf("%w: %v", errDied, err)}
			return
		}
		for s.out.Scan() {
			var r reply
			if err := json.Unmarshal(s.out.Bytes(), &r); err != nil {
				done <- result{err: fmt.Errorf("unreadable agent line %q: %w", s.out.Text(), err)}
				return
			}
			switch r.Event {
			case "stdout", "stderr":
				if out != nil {
					if err := out(&r); err != nil {
						done <- result{err: err}
						return
					}
				}
			case "result":
				r.Raw = append(json.RawMessage(nil), s.out.Bytes()...)
				done <- result{r: &r}
				return
			case "failed":
				done <- result{err: fmt.Errorf("%s: %s", r.Type, r.Message)}
				return
			}
		}
		done <- result{err: errDied}
	}()
	select {
	case res := <-done:
		return res.r, res.err
	case <-ctx.Done():
		s.killed.Store(true)
		e.runsc("kill", s.id, "KILL").Run()
		<-done
		return nil, context.Cause(ctx)
	}
}

// exec runs code in a sandbox and turns the agent's answer, or the sandbox's death, into a Result.
func (e *Engine) exec(ctx context.Context, s *sandbox, code, filename string, fresh bool, lim api.Limits, stream Stream) (*api.Result, error) {
	res, _, err := e.execOutput(ctx, s, code, filename, fresh, lim, stream)
	return res, err
}

// execOutput is exec that also says whether the program left anything under /output.
func (e *Engine) execOutput(ctx context.Context, s *sandbox, code, filename string, fresh bool, lim api.Limits, stream Stream) (*api.Result, bool, error) {
	start := time.Now()
	var mu sync.Mutex
	var stdout, stderr capped
	stdout.max, stderr.max = lim.MaxOutputBytes, lim.MaxOutputBytes
	outputFull := errors.New("output limit")
	forward := func(r *reply) error {
		mu.Lock()
		defer mu.Unlock()
		w, cb := &stdout, stream.Stdout
		if r.Event == "stderr" {
			w, cb = &stderr, stream.Stderr
		}
		kept := w.write(r.Text)
		if cb != nil && kept != "" {
			cb(kept)
		}
		if w.truncated {
			return outputFull
		}
		return nil
	}
	r, err := e.call(ctx, s, map[string]any{"op": "run", "code": code, "filename": filename, "fresh": fresh}, lim, forward)
	res := &api.Result{Tier: api.TierHeavy, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	switch {
	case err == nil:
		res.ExitCode, res.Error, res.Artifacts = r.ExitCode, r.Error, r.Artifacts
	case errors.Is(err, errTimeout):
		res.TimedOut, res.ExitCode = true, api.ExitTimeout
		res.Error = &api.Error{Type: api.ErrTimeout, Message: fmt.Sprintf("execution exceeded the %d ms time limit", lim.TimeoutMS)}
	case errors.Is(err, outputFull):
		s.killed.Store(true)
		res.ExitCode = 1
		res.Error = &api.Error{Type: api.ErrOutputLimitExceeded, Message: fmt.Sprintf("output exceeded the %d byte limit; the program was stopped", lim.MaxOutputBytes)}
	case ctx.Err() != nil:
		return nil, false, fmt.Errorf("run cancelled: %w", context.Cause(ctx))
	case errors.Is(err, errDied):
		<-s.done
		code := s.cmd.ProcessState.ExitCode()
		if code == api.ExitMemory || code == -1 {
			// SIGKILL that we did not send: the memory cgroup's OOM kill.
			res.ExitCode, res.MemoryExceeded = api.ExitMemory, true
			res.Error = &api.Error{Type: api.ErrMemoryLimitExceeded, Message: fmt.Sprintf("the sandbox was killed (SIGKILL); most likely the program needed more than its %d MiB memory limit", lim.MemoryLimitMB)}
		} else {
			res.ExitCode = api.ExitCrash
			res.Error = &api.Error{Type: api.ErrGuestCrash, Message: fmt.Sprintf("the sandbox exited unexpectedly (status %d)", code)}
		}
	default:
		return nil, false, fmt.Errorf("heavy sandbox: %w", err)
	}
	mu.Lock()
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	res.OutputTruncated = stdout.truncated || stderr.truncated
	mu.Unlock()
	return res, r != nil && r.HasOutput, nil
}

// capped collects one stream up to max bytes.
type capped struct {
	b         strings.Builder
	max       int
	truncated bool
}

// write keeps what fits and returns it.
func (c *capped) write(s string) string {
	if c.truncated {
		return ""
	}
	if room := c.max - c.b.Len(); len(s) > room {
		s = s[:room]
		c.truncated = true
	}
	c.b.WriteString(s)
	return s
}

func (c *capped) String() string {
	if c.truncated {
		return c.b.String() + api.TruncationMarker
	}
	return c.b.String()
}

// destroyLater tears a used sandbox down in the background: runsc kill and delete take a few hundred
// milliseconds that the caller need not wait for. Close waits for them.
func (e *Engine) destroyLater(s *sandbox) {
	s.killed.Store(true)
	e.setShares(s, backgroundShares) // its teardown must not slow the next request
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.destroy(s)
	}()
}

// Close stops the pool and removes the engine's state.
func (e *Engine) Close(ctx context.Context) error {
	if e.closed.Swap(true) {
		return nil
	}
	close(e.stop)
	e.wg.Wait()
	if e.pool != nil {
		e.drainPool()
	}
	// runsc --network=none bind-mounts an empty network namespace under its root; it outlives the
	// sandboxes, so it is unmounted here (possibly stacked: until the call fails).
	netns := filepath.Join(e.cfg.StateDir, "runsc", "null-netns")
	for i := 0; i < 64 && syscall.Unmount(netns, syscall.MNT_DETACH) == nil; i++ {
	}
	if e.ownState {
		return os.RemoveAll(e.cfg.StateDir)
	}
	return nil
}

// Session is a heavy sandbox kept between runs: variables, imports and files persist until Close or
// until its sandbox dies (a timeout or crash).
type Session struct {
	e      *Engine
	s      *sandbox
	limits api.Limits
	mu     sync.Mutex
	closed bool
}

// NewSession starts a session with packages installed.
func (e *Engine) NewSession(ctx context.Context, limits api.Limits, packages []string) (*Session, error) {
	lim, err := e.Limits(limits)
	if err != nil {
		return nil, err
	}
	if err := checkPackages(packages); err != nil {
		return nil, err
	}
	s, err := e.take(ctx, lim.MemoryLimitMB)
	if err != nil {
		return nil, err
	}
	if err := e.install(ctx, s, packages); err != nil {
		e.destroyLater(s)
		return nil, err
	}
	return &Session{e: e, s: s, limits: lim}, nil
}

// ErrSessionGone is returned for a closed session or one whose sandbox died.
var ErrSessionGone = errors.New("heavy session is closed")

func (ss *Session) usable() error {
	if ss.closed || ss.s.killed.Load() {
		return errdefs.With(errdefs.NotFound, ErrSessionGone)
	}
	select {
	case <-ss.s.done:
		return errdefs.With(errdefs.NotFound, ErrSessionGone)
	default:
	}
	return nil
}

// Alive reports whether the session can still run code (not closed, its sandbox not dead).
func (ss *Session) Alive() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.usable() == nil
}

// Run executes code in the session.
func (ss *Session) Run(ctx context.Context, code string, stream Stream) (*api.Result, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err := ss.usable(); err != nil {
		return nil, err
	}
	release, err := ss.e.admit(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	res, err := ss.e.exec(ctx, ss.s, code, "<cell>", false, ss.limits, stream)
	if err == nil && (res.TimedOut || res.MemoryExceeded || res.Error != nil && res.Error.Type == api.ErrGuestCrash) {
		ss.closeLocked()
	}
	return res, err
}

// WriteFile places data at the absolute sandbox path p.
func (ss *Session) WriteFile(ctx context.Context, p string, data []byte) error {
	if err := checkPath(p); err != nil {
		return err
	}
	_, err := ss.op(ctx, map[string]any{"op": "write", "path": p, "data": base64.StdEncoding.EncodeToString(data)})
	return err
}

// ReadFile returns the content of the file at the absolute sandbox path p.
func (ss *Session) ReadFile(ctx context.Context, p string) ([]byte, error) {
	if err := checkPath(p); err != nil {
		return nil, err
	}
	r, err := ss.op(ctx, map[string]any{"op": "read", "path": p})
	if err != nil {
		return nil, err
	}
	var body struct{ Data []byte }
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		return nil, err
	}
	return body.Data, nil
}

// FileEntry is one name in a listing.
type FileEntry struct {
	Name  string  `json:"name"`
	Path  string  `json:"path"`
	Size  int64   `json:"size"`
	IsDir bool    `json:"is_dir"`
	MTime float64 `json:"mtime"`
}

// ListFiles lists the directory dir.
func (ss *Session) ListFiles(ctx context.Context, dir string) ([]FileEntry, error) {
	if err := checkPath(dir); err != nil {
		return nil, err
	}
	r, err := ss.op(ctx, map[string]any{"op": "list", "dir": dir})
	if err != nil {
		return nil, err
	}
	var body struct{ Files []FileEntry }
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		return nil, err
	}
	return body.Files, nil
}

// op runs a file operation through the agent: paths resolve inside the sandbox, as its user, so
// nothing the guest planted (links, "..") can reach the host.
func (ss *Session) op(ctx context.Context, req map[string]any) (*reply, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err := ss.usable(); err != nil {
		return nil, err
	}
	r, err := ss.e.call(ctx, ss.s, req, api.Limits{TimeoutMS: 60_000}, nil)
	if err != nil {
		if strings.HasPrefix(err.Error(), "FileNotFoundError") {
			return nil, errdefs.With(errdefs.NotFound, err)
		}
		if strings.Contains(err.Error(), "Error:") {
			return nil, errdefs.With(errdefs.InvalidArgument, err)
		}
		return nil, err
	}
	return r, nil
}

// Close destroys the session's sandbox.
func (ss *Session) Close() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.closeLocked()
}

func (ss *Session) closeLocked() {
	if !ss.closed {
		ss.closed = true
		ss.e.destroy(ss.s)
	}
}
