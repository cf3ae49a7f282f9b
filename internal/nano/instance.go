package nano

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	wapi "github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/sys"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/outputs"
	"github.com/entersandbox/agentbox/internal/pywasm"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/vfs"
)

// instance is one sandbox: a module instance, its memory and its filesystem.
type instance struct {
	eng    *Engine
	snap   *snapshot
	mod    wapi.Module
	mem    *guestMemory
	fs     *vfs.FS
	stdout *capWriter
	stderr *capWriter
	stdin  *stdinReader
	execFn wapi.Function
	malloc wapi.Function
	free   wapi.Function
	runs   int  // exec calls made; the first one reseeds the guest's random state
	dead   bool // the module has exited or trapped
	// reach is the memory mask the last exec set (masked engines): the guest's accesses, in bounds or
	// not, stay below reach+1+experimental.MaskedMemoryGuard.
	reach uint64
	// cpuUsed is the CPU time the sandbox's calls have used, and cpuFrom the calling thread's CPU
	// time when the call in progress began: the guest's process and thread CPU-time clocks
	// (cpuClock). Only the goroutine calling into the guest touches them.
	cpuUsed, cpuFrom time.Duration
	// cur is the exec call in progress, for host functions that block (sleep). Only the goroutine
	// calling into the guest touches it: wazero runs host functions on the caller's goroutine.
	cur guestCall
	// sent counts the requests of the exec call in progress that went to the engine's HTTP; same
	// goroutine as cur.
	sent int
	// bridgeOpen counts the HTTP bridge device's open handles (atomic: wazero closes them when the
	// module closes, which may be another goroutine).
	bridgeOpen atomic.Int32
}

// guestCall is what a blocking host function needs to know about the call that made it.
type guestCall struct {
	ctx   context.Context  // done at the run's deadline, output cap or cancellation
	slot  *runSlot         // nil when the call holds no run slot (warm-up)
	guard *netpolicy.Guard // the network the program's HTTP requests go out under; nil: offline
}

type fsKey struct{}

// hostFSErrno is agentbox.fs_errno: the errno the filesystem meant by its last EIO (see vfs.TakeErrno).
func hostFSErrno(ctx context.Context, stack []uint64) {
	var errno int32
	if fs, ok := ctx.Value(fsKey{}).(*vfs.FS); ok {
		errno = fs.TakeErrno()
	}
	stack[0] = wapi.EncodeI32(errno)
}

// newFS makes a sandbox filesystem: the shared standard library and the usual empty directories.
func (e *Engine) newFS() (*vfs.FS, error) {
	fs := vfs.New(e.cfg.FS)
	if err := fs.Mount(pywasm.StdlibDir, e.stdlib); err != nil {
		return nil, err
	}
	for _, d := range []string{DirData, DirOutput, DirTmp, DirWork} {
		if err := fs.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return fs, nil
}

// instantiate makes a module instance over mem.
func (e *Engine) instantiate(ctx context.Context, mem *guestMemory, snap *snapshot) (*instance, error) {
	fs, err := e.newFS()
	if err != nil {
		return nil, fmt.Errorf("making sandbox filesystem: %w", err)
	}
	inst := &instance{eng: e, snap: snap, mem: mem, fs: fs,
		stdout: &capWriter{}, stderr: &capWriter{}, stdin: &stdinReader{}}
	if err := fs.AddDevices(bridgeDir, map[string]vfs.Device{bridgeName: bridgeDevice{inst}, staleName: staleDevice{}}); err != nil {
		mem.Free()
		return nil, fmt.Errorf("making sandbox filesystem: %w", err)
	}
	cfg := e.baseCfg.
		WithNanosleep(inst.sleep).
		WithFSConfig(wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(fs, "/")).
		WithStdout(inst.stdout).
		WithStderr(inst.stderr).
		WithStdin(inst.stdin)
	ctx = experimental.WithMemoryAllocator(context.WithValue(ctx, fsKey{}, fs), mem)
	mod, err := e.rt.InstantiateModule(ctx, e.compiled, cfg)
	if err != nil {
		mem.Free()
		return nil, fmt.Errorf("instantiating python.wasm: %w", err)
	}
	inst.mod = mod
	inst.execFn = mod.ExportedFunction("agentbox_exec")
	inst.malloc = mod.ExportedFunction("malloc")
	inst.free = mod.ExportedFunction("free")
	if inst.execFn == nil || inst.malloc == nil || inst.free == nil {
		inst.close(ctx)
		return nil, errors.New("python.wasm lacks agentbox_exec, malloc or free: rebuild it with build/pywasm/build.sh")
	}
	return inst, nil
}

// restore makes a sandbox from a snapshot.
func (e *Engine) restore(ctx context.Context, snap *snapshot) (*instance, error) {
	mem, err := newGuestMemory(e.regions, snap.mem)
	if err != nil {
		return nil, err
	}
	return e.startAt(ctx, mem, snap, snap.sp)
}

// startAt makes a sandbox over mem, which holds an interpreter's memory whose stack pointer is sp
// (snap is the engine snapshot the sandbox counts as made from).
func (e *Engine) startAt(ctx context.Context, mem *guestMemory, snap *snapshot, stackPointer uint32) (*instance, error) {
	inst, err := e.instantiate(ctx, mem, snap)
	if err != nil {
		return nil, err
	}
	sp, ok := inst.mod.ExportedGlobal("__stack_pointer").(wapi.MutableGlobal)
	if !ok {
		inst.close(ctx)
		return nil, errors.New("python.wasm does not export a mutable __stack_pointer")
	}
	sp.Set(uint64(stackPointer))
	return inst, nil
}

// fresh makes an instance as the module itself would start: data segments copied in, constructors run.
func (e *Engine) fresh(ctx context.Context) (*instance, error) {
	mem, err := newGuestMemory(e.regions, nil)
	if err != nil {
		return nil, err
	}
	inst, err := e.instantiate(ctx, mem, nil)
	if err != nil {
		return nil, err
	}
	buf := inst.mod.Memory()
	for _, seg := range e.segments {
		if !buf.Write(seg.Offset, seg.Data) {
			inst.close(ctx)
			return nil, fmt.Errorf("data segment at %#x does not fit the initial memory", seg.Offset)
		}
	}
	if _, err := inst.mod.ExportedFunction("_initialize").Call(inst.ctx(ctx)); err != nil {
		inst.close(ctx)
		return nil, fmt.Errorf("running python.wasm's constructors: %w", err)
	}
	return inst, nil
}

// makeSnapshot initialises an interpreter with the runner loaded and captures its memory.
func (e *Engine) makeSnapshot(ctx context.Context) (*snapshot, error) {
	e.snapMu.Lock()
	defer e.snapMu.Unlock()
	start := time.Now()
	inst, err := e.fresh(ctx)
	if err != nil {
		return nil, fmt.Errorf("making snapshot: %w", err)
	}
	defer inst.close(ctx)
	ptr, err := inst.put(ctx, runnerSource)
	if err != nil {
		return nil, fmt.Errorf("making snapshot: %w", err)
	}
	rc, err := inst.mod.ExportedFunction("agentbox_init").Call(inst.ctx(ctx), uint64(ptr), uint64(len(runnerSource)))
	if err != nil || rc[0] != 0 {
		return nil, fmt.Errorf("initialising the interpreter (rc %v, err %v): %s", rc, err, inst.stderr.String())
	}
	if _, err := inst.free.Call(inst.ctx(ctx), uint64(ptr)); err != nil {
		return nil, fmt.Errorf("making snapshot: %w", err)
	}
	sp := uint32(inst.mod.ExportedGlobal("__stack_pointer").Get())
	size := inst.mod.Memory().Size()
	// The image's memory is shared by the sandboxes restored from it (cow.go). Where it cannot be, the
	// initialised memory itself becomes the image (copying it would touch 10 MB of fresh pages); it is
	// unmapped when the snapshot is garbage, after rotation and the last restore from it.
	img, err := newSharedImage(inst.mem.bytes(int(size)))
	if err != nil {
		return nil, fmt.Errorf("making snapshot: %w", err)
	}
	s := &snapshot{mem: img, sp: sp, created: time.Now()}
	if img.shared == nil {
		inst.mem.keep = true
		runtime.AddCleanup(s, func(r *region) { e.regions.unmap(r) }, inst.mem.r)
	}
	e.stats.Snapshots.Add(1)
	e.log.Debug("nano snapshot made", "ms", time.Since(start).Milliseconds(), "bytes", size)
	return s, nil
}

func (inst *instance) ctx(ctx context.Context) context.Context {
	return context.WithValue(ctx, fsKey{}, inst.fs)
}

// put copies b into newly allocated guest memory.
func (inst *instance) put(ctx context.Context, b []byte) (uint32, error) {
	res, err := inst.malloc.Call(inst.ctx(ctx), uint64(len(b)+1))
	if err != nil {
		return 0, fmt.Errorf("allocating %d bytes in the guest: %w", len(b), err)
	}
	ptr := uint32(res[0])
	if ptr == 0 {
		return 0, errGuestOOM
	}
	if !inst.mod.Memory().Write(ptr, b) {
		return 0, fmt.Errorf("writing %d bytes at %#x: out of range", len(b), ptr)
	}
	return ptr, nil
}

var errGuestOOM = errors.New("guest out of memory")

func (inst *instance) close(ctx context.Context) {
	if inst.mod != nil {
		inst.mod.Close(ctx)
	}
	// Free is idempotent, and needed even after Close: when the run's context closed the module while
	// a host call was stopping the guest (instance.sleep), wazero marks it closed but leaves its
	// memory for a later check that an unwinding call never makes, and Close then does nothing.
	if inst.mem != nil {
		inst.mem.Free()
	}
	inst.dead = true
}

type execRequest struct {
	code     string
	filename string
	stdin    []byte
	limits   api.Limits
	slot     *runSlot          // the run's admission; nil for a warm-up
	guard    *netpolicy.Guard  // nil: offline
	repl     bool              // a final expression's value is the main result
	env      map[string]string // added to os.environ before the code runs
}

type runnerRequest struct {
	Code     string   `json:"code"`
	Filename string   `json:"filename"`
	Fresh    bool     `json:"fresh,omitempty"`
	Allowed  []string `json:"allowed,omitempty"`
	// Network says the program's HTTP requests go to the host bridge; false: offline, as the
	// sockets are.
	Network bool   `json:"network,omitempty"`
	Repl    bool   `json:"repl,omitempty"`
	SVG     bool   `json:"svg,omitempty"`
	Frame   string `json:"frame"`
	// Env is added to os.environ before the code runs.
	Env map[string]string `json:"env,omitempty"`
}

// replyOK is runner.py's _REPLY_OK: the reply of a run that exited 0 without an error.
var replyOK = []byte(`{"exit_code": 0, "error": null, "missing": null}`)

type runnerReply struct {
	ExitCode int          `json:"exit_code"`
	Error    *api.Error   `json:"error"`
	Missing  *api.Missing `json:"missing"`
}

// warm makes a pooled sandbox's first exec happen before a request needs it: the guest reseeds its
// random state and runs the runner once on a one-line expression, so the first costs (about half the
// first run's time) are paid in the background, growing the call stack as deep as compiling a line
// of code takes among them. No user code has run when it is handed out.
func (inst *instance) warm(ctx context.Context) error {
	lim := inst.eng.cfg.Defaults
	res, err := inst.exec(ctx, execRequest{code: warmUpCode, filename: "<warm-up>", limits: lim, repl: true}, tier.Stream{})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 || res.Error != nil {
		inst.close(ctx)
		return fmt.Errorf("warming a pooled sandbox: exit %d %+v", res.ExitCode, res.Error)
	}
	return nil
}

// warmUpCode is what warm runs: an expression statement compiled in the REPL's mode, as most cells
// are, whose value (None) is no result.
const warmUpCode = "None"

// Why a run was stopped from outside.
var (
	errTimeout     = errors.New("timeout")
	errOutputLimit = errors.New("output limit")
)

// exec runs code in the instance. The instance is left dead when the guest exited, trapped or was
// stopped.
func (inst *instance) exec(ctx context.Context, req execRequest, stream tier.Stream) (*api.Result, error) {
	if inst.dead {
		return nil, errors.New("sandbox is no longer running")
	}
	if req.filename == "" {
		req.filename = "main.py"
	}
	start := time.Now()
	lim := req.limits
	inst.mem.limit.Store(uint64(lim.MemoryLimitMB) << 20)
	inst.mem.exceeded.Store(false)
	if inst.eng.masked {
		// What the guest can write, in bounds or not, follows this run's limit (docs/masked-memory.md).
		reach := min(reachMask(max(uint64(lim.MemoryLimitMB)<<20, uint64(inst.mod.Memory().Size()))), inst.mem.Mask())
		if reach != inst.reach { // a session's cells and a pool's runs mostly keep one limit
			if err := experimental.SetMemoryMask(inst.mod, reach); err != nil {
				return nil, fmt.Errorf("narrowing the guest's memory reach: %w", err)
			}
			inst.reach = reach
		}
	}
	runCtx, cancel := context.WithCancelCause(inst.ctx(ctx))
	defer cancel(nil)
	// The engine's Close stops runs still going when its grace period ends.
	stopOnHalt := context.AfterFunc(inst.eng.haltCtx, func() { cancel(ErrClosed) })
	defer stopOnHalt()
	timer := time.AfterFunc(time.Duration(lim.TimeoutMS)*time.Millisecond, func() { cancel(errTimeout) })
	defer timer.Stop()
	onFull := func() { cancel(errOutputLimit) }
	inst.stdout.reset(lim.MaxOutputBytes, stream.Stdout, onFull)
	inst.stderr.reset(lim.MaxOutputBytes, stream.Stderr, onFull)
	inst.stdin.reset(req.stdin)
	frame := newFrame()
	results := outputs.NewCollector(lim, stream.Output)
	inst.stdout.frames(frame, results.Add)
	defer inst.stdout.frames(nil, nil)

	payload, err := json.Marshal(runnerRequest{Code: req.code, Filename: req.filename, Fresh: inst.runs == 0, Allowed: lim.AllowedModules,
		Network: networked(req.guard, inst.eng.cfg.HTTP), Repl: req.repl, SVG: lim.FigureSVG, Frame: string(frame), Env: req.env})
	if err != nil {
		return nil, err
	}
	inst.runs++
	res := &api.Result{Tier: api.TierNano}
	inst.cur, inst.sent = guestCall{ctx: runCtx, slot: req.slot, guard: req.guard}, 0
	reply, callErr := inst.call(runCtx, payload)
	inst.cur = guestCall{}
	res.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	res.MemoryExceeded = inst.mem.exceeded.Load()

	switch cause := context.Cause(runCtx); {
	case callErr == nil:
		var rr runnerReply
		if bytes.Equal(reply, replyOK) {
			// most runs: nothing to decode
		} else if err := json.Unmarshal(reply, &rr); err != nil {
			res.ExitCode = 1
			res.Error = &api.Error{Type: api.ErrSandbox, Message: fmt.Sprintf("unreadable runner reply: %v", err)}
			break
		}
		res.ExitCode, res.Error, res.Missing = rr.ExitCode, rr.Error, rr.Missing
		if res.MemoryExceeded && res.ExitCode != 0 {
			res.ExitCode = api.ExitMemory
			res.Error = memoryError(lim, res.Error)
			res.Missing = nil
		}
	case errors.Is(cause, errTimeout):
		inst.dead = true
		res.TimedOut = true
		res.ExitCode = api.ExitTimeout
		res.Error = &api.Error{Type: api.ErrTimeout, Message: fmt.Sprintf("execution exceeded the %d ms time limit", lim.TimeoutMS)}
	case errors.Is(cause, errOutputLimit):
		inst.dead = true
		res.ExitCode = 1
		res.Error = &api.Error{Type: api.ErrOutputLimitExceeded, Message: fmt.Sprintf("output exceeded the %d byte limit; the program was stopped", lim.MaxOutputBytes)}
	case ctx.Err() != nil:
		inst.dead = true
		return nil, fmt.Errorf("run cancelled: %w", context.Cause(ctx))
	case errors.Is(cause, ErrClosed) || errors.Is(callErr, ErrClosed):
		inst.dead = true // the engine stopped the program (Close)
		return nil, errdefs.With(errdefs.Unavailable, fmt.Errorf("run stopped: %w", ErrClosed))
	default:
		inst.dead = true
		var exit *sys.ExitError
		switch {
		case errors.As(callErr, &exit):
			// The program called os._exit (WASI proc_exit).
			res.ExitCode = int(exit.ExitCode())
		case res.MemoryExceeded:
			res.ExitCode = api.ExitMemory
			res.Error = memoryError(lim, nil)
		case errors.Is(callErr, errGuestOOM):
			res.ExitCode = api.ExitMemory
			res.MemoryExceeded = true
			res.Error = memoryError(lim, nil)
		default:
			res.ExitCode = api.ExitCrash
			res.Error = &api.Error{Type: api.ErrGuestCrash, Message: crashMessage(callErr)}
		}
	}
	if inst.sent > 0 {
		// The fallback runs a failed program again on heavy; one that reached the network would send
		// its requests twice.
		res.Missing = nil
	}
	res.Stdout, res.Stderr = inst.stdout.String(), inst.stderr.String()
	if inst.stdout.Truncated() || inst.stderr.Truncated() {
		res.OutputTruncated = true
	}
	results.Finish(res)
	return res, nil
}

// newFrame is a run's output marker (see runner.py): random, so that no printed text starts with it
// by chance; a program that writes it on purpose only makes outputs of its own, like display(). The
// guest is told its run's marker, so it need not be secret: the runtime's per-thread generator
// (math/rand/v2) serves, at a fraction of a crypto/rand read's cost (a getrandom call each).
func newFrame() []byte {
	b := make([]byte, 0, len(framePrefix)+33)
	b = append(b, framePrefix...)
	b = strconv.AppendUint(b, rand.Uint64(), 36)
	b = append(b, '.')
	b = strconv.AppendUint(b, rand.Uint64(), 36)
	return append(b, ':')
}

const framePrefix = "\x00agentbox-output:"

func memoryError(lim api.Limits, pyErr *api.Error) *api.Error {
	e := &api.Error{Type: api.ErrMemoryLimitExceeded, Message: fmt.Sprintf("the program needed more than its %d MiB memory limit", lim.MemoryLimitMB)}
	if pyErr != nil {
		e.Traceback = pyErr.Traceback
	}
	return e
}

// crashMessage turns a wazero trap into a sentence.
func crashMessage(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "stack overflow"), strings.Contains(msg, "out of bounds memory access"):
		return "the program crashed below Python (WebAssembly trap: " + firstLine(msg) + "); deep recursion in C code such as repr or json of nested data overflows the C stack"
	default:
		return "the program crashed below Python (WebAssembly trap: " + firstLine(msg) + ")"
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// call hands a request to the runner and returns its reply. The call of an admitted run runs on a
// guest thread that long runs are demoted on (sched_linux.go); warm-ups and snapshots, which hold no
// slot, run where they are.
func (inst *instance) call(ctx context.Context, payload []byte) ([]byte, error) {
	if inst.cur.slot == nil || !threadDemotion || inst.eng.cfg.ShortRunCPU < 0 {
		return inst.callHere(ctx, payload)
	}
	var reply []byte
	var err error
	inst.eng.onGuestThread(func() { reply, err = inst.callHere(ctx, payload) })
	return reply, err
}

func (inst *instance) callHere(ctx context.Context, payload []byte) ([]byte, error) {
	ptr, err := inst.put(ctx, payload)
	if err != nil {
		return nil, err
	}
	out, err := inst.cpuTimed(ctx, func(ctx context.Context) ([]uint64, error) {
		return inst.execFn.Call(ctx, uint64(ptr), uint64(len(payload)))
	})
	if err != nil {
		return nil, err
	}
	mem := inst.mod.Memory()
	hdr, ok := mem.Read(uint32(out[0]), 8)
	if !ok {
		return nil, errors.New("runner reply header out of range")
	}
	rp, rl := binary.LittleEndian.Uint32(hdr), binary.LittleEndian.Uint32(hdr[4:])
	if rp == 0 {
		return nil, fmt.Errorf("runner failed: %s", inst.stderr.String())
	}
	body, ok := mem.Read(rp, rl)
	if !ok {
		return nil, errors.New("runner reply out of range")
	}
	reply := bytes.Clone(body)
	if _, err := inst.free.Call(ctx, uint64(ptr)); err != nil {
		return nil, err
	}
	return reply, nil
}

// cpuTimed makes call, counting the CPU time its thread spends in cpuUsed, and lets the guest read
// that count as its process and thread CPU-time clocks (Python's time.process_time; upstream wazero
// refuses those clocks, and CPython then falls back to wasi-libc's emulation, which
// counts from the monotonic reading stored in the snapshot and returned garbage). The thread is
// locked for the call so that every reading is of one thread.
func (inst *instance) cpuTimed(ctx context.Context, call func(context.Context) ([]uint64, error)) ([]uint64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	from, ok := threadCPU()
	if !ok {
		return call(ctx)
	}
	inst.cpuFrom = from
	defer func() {
		now, _ := threadCPU()
		inst.cpuUsed += now - from
	}()
	return call(experimental.WithCPUClock(ctx, inst.cpuClock))
}

// cpuClock is the guest's CPU-time clock, in nanoseconds: what its calls have used, this one included.
func (inst *instance) cpuClock() int64 {
	now, _ := threadCPU()
	return int64(inst.cpuUsed + now - inst.cpuFrom)
}

// sleep is the sandbox's WASI clock wait: poll_oneoff with a relative clock, which time.sleep and
// select.select's timeout come down to. wazero's own (WithSysNanosleep) is a time.Sleep that neither a
// deadline nor a cancellation can cut short, and it kept the run's CPU slot. This one gives the slot
// up while it waits (within Config.MaxSleeping) and takes it back to wake. When the run's context is
// done (deadline, output cap, cancellation) or the engine halts, it stops the guest at once, as
// WithCloseOnContextDone does for running code: the panic unwinds the guest (Python cannot catch it)
// and the call returns an error, which exec reads by the context's cause.
func (inst *instance) sleep(ns int64) {
	c := inst.cur
	ctx := c.ctx
	if ctx == nil {
		ctx = context.Background() // outside exec (constructors, snapshot set-up): no deadline
	}
	gaveUp := c.slot != nil && c.slot.sleep()
	err := inst.eng.wait(ctx, time.Duration(ns))
	if gaveUp {
		err = c.slot.wake(ctx, err)
	}
	if err != nil {
		stopGuest(err)
	}
}

// capWriter is the guest's stdout or stderr: a limits.Output that also streams what it keeps and
// calls onFull, which stops the guest, on the write that passes the cap.
type capWriter struct {
	limits.Output
	mu      sync.Mutex
	onWrite func(string) // guarded by mu
	onFull  func()       // guarded by mu
	frame   []byte       // a write starting with it is a rich output, given to onFrame; guarded by mu
	onFrame func([]byte) // guarded by mu
}

// frames sets the marker of rich outputs written to this stream and what takes them (nil: none).
func (w *capWriter) frames(frame []byte, onFrame func([]byte)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.frame, w.onFrame = frame, onFrame
}

func (w *capWriter) reset(max int, onWrite func(string), onFull func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.Reset(max)
	w.onWrite, w.onFull = onWrite, onFull
}

func (w *capWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.onFrame != nil && bytes.HasPrefix(p, w.frame) {
		w.onFrame(p[len(w.frame):])
		return len(p), nil
	}
	kept, full := w.Output.Write(string(p))
	if w.onWrite != nil && kept != "" {
		w.onWrite(kept)
	}
	if full && w.onFull != nil {
		w.onFull()
	}
	return len(p), nil
}

// stdinReader is a sandbox's standard input, replaced before each run.
type stdinReader struct {
	mu sync.Mutex
	r  bytes.Reader
}

func (s *stdinReader) reset(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.r.Reset(b)
}

func (s *stdinReader) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.r.Read(p)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// ColdRun runs code the way the stock python.wasm's _start would: a new instance, data segments copied
// in, constructors run, then Py_BytesMain(["python3", "-c", code]) with no snapshot. It exists as the
// baseline that benchmarks compare snapshot restores against; the exit code is Python's.
func (e *Engine) ColdRun(ctx context.Context, code string) (int, error) {
	inst, err := e.fresh(ctx)
	if err != nil {
		return 0, err
	}
	defer inst.close(ctx)
	inst.stdout.reset(1<<20, nil, nil)
	inst.stderr.reset(1<<20, nil, nil)
	inst.cur = guestCall{ctx: ctx}
	ptr, err := inst.put(ctx, []byte(code))
	if err != nil {
		return 0, err
	}
	rc, err := inst.mod.ExportedFunction("agentbox_main").Call(inst.ctx(ctx), uint64(ptr), uint64(len(code)))
	if err != nil {
		var exit *sys.ExitError
		if errors.As(err, &exit) {
			return int(exit.ExitCode()), nil
		}
		return 0, fmt.Errorf("cold run: %w", err)
	}
	return int(int32(rc[0])), nil
}
