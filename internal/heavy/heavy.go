// Package heavy is agentbox's full-Python tier: CPython 3.11 with numpy, pandas, matplotlib and scipy
// from Debian, each sandbox a gVisor (runsc) container with a read-only root filesystem, private
// size-limited /tmp and /home/user, memory, CPU and process limits, an unprivileged user and no
// network (or, with Config.Network, one that leads only to the egress proxy: network.go). Inside, a
// small agent (agent.py) runs programs and reports results and charts over a line-delimited JSON
// protocol on stdio; programs run in a worker process the agent forks, which cannot reach that
// protocol. See docs/heavy-tier.md.
package heavy

import (
	"bufio"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/netns"
	"github.com/entersandbox/agentbox/internal/outputs"
	"golang.org/x/sys/unix"
)

//go:embed agent.py
var agentSource []byte

// Built-in defaults and ceilings for Config fields left zero.
const (
	defaultTimeout  = 60 * time.Second
	defaultMemoryMB = 1024
	defaultOutput   = 1 << 20
	maxTimeout      = 30 * time.Minute
	maxMemoryMB     = 8192
	maxOutput       = 64 << 20
	minMemoryMB     = 128
	defaultPids     = 64
	defaultTmpMB    = 512
	defaultPool     = 2
	startTimeout    = 60 * time.Second
)

// Config configures an Engine. The zero value uses the artefacts build/heavy/build.sh made.
type Config struct {
	// Runsc and Rootfs locate gVisor's runtime and the root filesystem; empty means the build
	// script's cache (~/.cache/agentbox/heavy/bin/runsc and .../rootfs).
	Runsc  string
	Rootfs string
	// StateDir is the engine's state root: runsc's --root, the sandboxes' bundles, golden checkpoints
	// and the agent's files (see state.go). The engine locks it (a second engine on it is refused with
	// ErrStateInUse) and, at New, sweeps what a crashed engine left there: runsc containers and
	// processes, cgroups, mounts and files. Empty means a new private directory under os.TempDir(),
	// removed at Close and never swept (servers pass one; see DefaultStateDir).
	StateDir string
	// Defaults apply to a request's zero limit fields; zero fields here mean 60 s, 1024 MiB and 1 MiB
	// of output per stream. Max are the largest a request may ask for; zero fields mean 30 min,
	// 8192 MiB and 64 MiB.
	Defaults api.Limits
	Max      api.Limits
	// Pids caps processes and threads per sandbox (RLIMIT_NPROC, enforced by gVisor); zero means 64.
	Pids int
	// DiskMB caps each of /tmp and /home/user; zero means 512 MiB.
	DiskMB int
	// PoolSize is how many started sandboxes (numpy, pandas and matplotlib imported) are kept ready;
	// zero means 2, negative disables the pool. The pool is refilled by restoring a golden checkpoint
	// of such a sandbox when that measures faster than a cold start, unless NoCheckpoint.
	PoolSize     int
	NoCheckpoint bool
	// GoldenMaxAge is how long one golden checkpoint serves before the pool makes a new one, so that
	// the str-hash secret pooled sandboxes share (see docs/heavy-tier.md) changes; zero means 10
	// minutes, negative never.
	GoldenMaxAge time.Duration
	// PoolIdle empties the pool after this long without a request (the next one refills it); zero
	// means 10 minutes, negative never.
	PoolIdle time.Duration
	// MaxConcurrent caps the sandboxes serving requests at once: one-shot runs, and open sessions,
	// each of which holds its place from NewSession until Close. The PoolSize sandboxes waiting in the
	// pool come on top. Zero means 24: room for the dispatcher's default 16 heavy sessions and 8
	// one-shot runs besides, so open sessions alone cannot lock runs out.
	MaxConcurrent int
	// MaxQueue caps the requests waiting for a place when all MaxConcurrent are taken: beyond it, or
	// after QueueWait in the queue, a request is refused as errdefs.Overloaded (HTTP 429 with
	// Retry-After). Zero means 2×MaxConcurrent; negative means no queue (refuse at once).
	MaxQueue int
	// QueueWait is the longest a request waits in the queue; zero means 30 seconds.
	QueueWait time.Duration
	// MaxReadBytes caps a file a session's ReadFile returns (larger ones are errdefs.TooLarge); zero
	// means 64 MiB.
	MaxReadBytes int64
	// PackageIndex is the PEP 503 index that `packages` are fetched from, on the host; empty refuses
	// package requests. PackageCache holds the fetched wheels; empty means the heavy cache's
	// "packages". Python is the host interpreter whose pip fetches them; empty means python3.
	PackageIndex string
	PackageCache string
	Python       string
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger
	// Network, when set, gives every sandbox (pooled ones too) a governed network: its own network
	// namespace and veth, runsc --network=sandbox, all TCP redirected to Network's proxy and DNS to
	// its stub, and the request's netpolicy.Guard (from the context) attached at hand-out (see
	// network.go and docs/egress-netns.md). New fails, naming the missing piece, when the host cannot
	// do this. Nil means offline sandboxes (--network=none) whatever a request carries.
	Network Network
	// NetworkRange is the IPv4 range the sandboxes' /30s come from; zero means 10.200.0.0/16. Two
	// networked engines on one host need ranges that do not overlap.
	NetworkRange netip.Prefix
	// OfflineReason says why Network is nil on a server that governs networks (the host lacks a piece
	// it needs); requests whose policy allows traffic are then refused with it (errdefs.Unavailable)
	// instead of running offline. Empty: a generic reason.
	OfflineReason string
}

// Engine runs programs in heavy sandboxes. It is safe for concurrent use.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	agentDir string
	etcDir   string // the sandboxes' /etc/hostname and /etc/resolv.conf
	nice     string // path of nice(1) for runscLow; empty runs background work at normal priority
	ownState bool
	lock     *os.File // the state root's flock; nil for a private root
	pool     chan *sandbox
	stop     chan struct{}
	wg       sync.WaitGroup // the pool filler and background teardowns; teardowns Add under mu while closed is false
	slots    chan struct{}  // one token per sandbox serving a request (runs and sessions)
	queued   atomic.Int64   // requests waiting for a slot
	wake     chan struct{}
	lastTake atomic.Int64
	golden   atomic.Pointer[refiller] // set once the pool's refill path is chosen
	net      *netns.Manager           // the sandboxes' namespaces; nil without Config.Network
	closed   atomic.Bool              // set under mu: no sandbox is registered once Close has listed them
	busy     atomic.Int64             // agent calls in flight, which Close lets finish until its ctx ends
	mu       sync.Mutex
	live     map[*sandbox]struct{} // every sandbox from its bundle to its teardown; guarded by mu
	Stats    Stats
}

// Stats are counters for metrics and benchmarks.
type Stats struct {
	PoolHits   atomic.Int64
	PoolMisses atomic.Int64
	Started    atomic.Int64 // runsc run or restore invocations
	Restored   atomic.Int64 // pool refills from the golden checkpoint
	PoolDead   atomic.Int64 // pooled sandboxes found exited when taken, replaced instead of handed out
}

// ErrNotInstalled means runsc or the root filesystem is missing.
var ErrNotInstalled = errors.New("heavy tier not installed: run build/heavy/build.sh (scripts/setup.sh does)")

func cacheDir() string {
	if d := os.Getenv("AGENTBOX_HEAVY_CACHE"); d != "" {
		return d
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "agentbox", "heavy")
}

// Installed reports whether the runsc and root filesystem cfg names (empty: the build script's cache)
// are in place, as ErrNotInstalled (wrapped) when not, and ErrNested when this process runs inside
// gVisor, where runsc cannot start. It starts nothing, so a caller can tell whether there is a heavy
// tier before paying for an Engine.
func Installed(cfg Config) error {
	if underGVisor() {
		return ErrNested
	}
	runsc, rootfs := cfg.Runsc, cfg.Rootfs
	if runsc == "" {
		runsc = filepath.Join(cacheDir(), "bin", "runsc")
	}
	if rootfs == "" {
		rootfs = filepath.Join(cacheDir(), "rootfs")
	}
	if _, err := os.Stat(runsc); err != nil {
		return fmt.Errorf("%w (%v)", ErrNotInstalled, err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "usr", "bin", "python3")); err != nil {
		return fmt.Errorf("%w (%v)", ErrNotInstalled, err)
	}
	return nil
}

// New checks the installation, prepares the agent and starts filling the pool.
func New(ctx context.Context, cfg Config) (*Engine, error) {
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
	def(&cfg.Pids, defaultPids)
	def(&cfg.DiskMB, defaultTmpMB)
	def(&cfg.PoolSize, defaultPool)
	def(&cfg.MaxConcurrent, 24)
	def(&cfg.MaxQueue, 2*cfg.MaxConcurrent)
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = 30 * time.Second
	}
	if cfg.MaxReadBytes <= 0 {
		cfg.MaxReadBytes = 64 << 20
	}
	if cfg.Runsc == "" {
		cfg.Runsc = filepath.Join(cacheDir(), "bin", "runsc")
	}
	if cfg.Rootfs == "" {
		cfg.Rootfs = filepath.Join(cacheDir(), "rootfs")
	}
	if cfg.PackageCache == "" {
		cfg.PackageCache = filepath.Join(cacheDir(), "packages")
	}
	if cfg.Python == "" {
		cfg.Python = "python3"
	}
	if err := os.MkdirAll(cfg.PackageCache, 0o755); err != nil {
		return nil, err
	}
	if err := Installed(cfg); err != nil {
		return nil, err
	}
	// runsc mounts "safely" and refuses a root reached through a symbolic link.
	rootfs, err := filepath.EvalSymlinks(cfg.Rootfs)
	if err != nil {
		return nil, err
	}
	cfg.Rootfs = rootfs
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.PoolIdle == 0 {
		cfg.PoolIdle = 10 * time.Minute
	}
	if cfg.GoldenMaxAge == 0 {
		cfg.GoldenMaxAge = 10 * time.Minute
	}
	e := &Engine{cfg: cfg, log: log, stop: make(chan struct{}), slots: make(chan struct{}, cfg.MaxConcurrent), wake: make(chan struct{}, 1),
		live: map[*sandbox]struct{}{}}
	e.lastTake.Store(time.Now().UnixNano())
	e.nice, _ = exec.LookPath("nice")
	var cu cleanup
	defer cu.run()
	if e.cfg.StateDir == "" {
		dir, err := os.MkdirTemp("", "agentbox-heavy-")
		if err != nil {
			return nil, err
		}
		e.cfg.StateDir, e.ownState = dir, true
		cu.add(func() { os.RemoveAll(dir) })
	} else {
		// runsc wants absolute paths, and the sweep compares them with /proc's.
		dir, err := filepath.Abs(e.cfg.StateDir)
		if err != nil {
			return nil, fmt.Errorf("heavy state directory: %w", err)
		}
		e.cfg.StateDir = dir
		if e.lock, err = lockState(dir); err != nil {
			return nil, err
		}
		cu.add(func() { e.lock.Close() })
		if n := e.sweep(); n != (sweepCounts{}) {
			log.Info("heavy: swept what a previous server left in the state directory", "dir", dir, "containers", n.Containers,
				"processes", n.Processes, "cgroups", n.Cgroups, "mounts", n.Mounts, "entries", n.Entries,
				"veths", n.Network.Links, "namespaces", n.Network.Namespaces, "nft_tables", n.Network.Tables)
		}
	}
	e.agentDir = filepath.Join(e.cfg.StateDir, "agent")
	if err := os.MkdirAll(e.agentDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(e.agentDir, "agent.py"), agentSource, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(e.agentDir, "outputs.py"), outputs.PySource, 0o644); err != nil {
		return nil, err
	}
	// The root filesystem keeps what debootstrap copied from the build machine; every sandbox sees
	// neutral ones instead (there is no network: no nameserver).
	e.etcDir = filepath.Join(e.cfg.StateDir, "etc")
	if err := os.MkdirAll(e.etcDir, 0o755); err != nil {
		return nil, err
	}
	for name, content := range sandboxEtc {
		if err := os.WriteFile(filepath.Join(e.etcDir, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	if cfg.Network != nil {
		if err := e.setupNetwork(); err != nil {
			return nil, err
		}
		cu.add(func() { e.net.Close() })
	}
	cu.release()
	if cfg.PoolSize > 0 {
		e.pool = make(chan *sandbox, cfg.PoolSize)
		e.wg.Add(1)
		go e.fillPool()
	}
	return e, nil
}

// sandboxEtc are the files bound over the root filesystem's /etc in every sandbox.
var sandboxEtc = map[string]string{
	"hostname":    "sandbox\n",
	"resolv.conf": "# agentbox sandbox: there is no network\n",
}

// Limits resolves a request's limits against the engine's defaults and maxima.
func (e *Engine) Limits(req api.Limits) (api.Limits, error) {
	if len(req.AllowedModules) > 0 {
		return req, errdefs.With(errdefs.InvalidArgument, errors.New("allowed_modules is a nano-tier policy; the heavy tier does not enforce it"))
	}
	return limits.Resolve(req, e.cfg.Defaults, e.cfg.Max, minMemoryMB, api.TierHeavy)
}

// sandbox is one running container and the agent inside it. A sandbox serves one caller at a time
// (a one-shot run, or a session under its lock): nextID, runs and procs belong to that caller.
type sandbox struct {
	id      string
	bundle  string
	cmd     *exec.Cmd
	in      *os.File       // the agent's stdin: requests
	out     *os.File       // the agent's stdout: replies, read by readLoop only
	lines   chan agentLine // replies from readLoop; closed at EOF
	maxLine atomic.Int64   // longest reply line readLoop accepts now (set by each call)
	quit    chan struct{}  // closed by destroy: readLoop stops
	quitted sync.Once      // closes quit
	done    chan struct{}  // closed when runsc exits, after exitErr is set
	exitErr error          // set before done is closed; read only after <-done
	stderr  *limitedBuffer // runsc's and the supervisor's stderr, for diagnostics
	killed  atomic.Bool    // we stopped it (timeout, output cap, protocol fault, close)
	closing atomic.Bool    // Close is killing it: its calls fail with errStopped, not as a crash
	removed bool           // destroy took it out of Engine.live: it must not start; guarded by Engine.mu
	torn    sync.Once      // destroy's teardown runs once, whoever asks first (Close, a session, a run)
	memory  int            // MiB the container was started with
	nextID  int            // last request id sent
	runs    int            // runs so far: the first one is always fresh
	procs   int            // most processes the agent reported during the current call
	ns      *netns.NS      // its network namespace; nil without Config.Network
	unbind  func()         // detaches the request's policy bound at hand-out; guarded by Engine.mu
}

// agentLine is one reply line, or why reading stopped.
type agentLine struct {
	b   []byte
	err error
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return "agentbox-" + hex.EncodeToString(b[:])
}

func (e *Engine) runsc(args ...string) *exec.Cmd {
	network := "--network=none"
	if e.net != nil {
		network = "--network=sandbox" // in the namespace the spec names (network.go)
	}
	base := []string{"--root", filepath.Join(e.cfg.StateDir, "runsc"), "--platform=systrap", network}
	if dir := os.Getenv("AGENTBOX_RUNSC_DEBUG"); dir != "" {
		// runsc's own logs, one file per command, for diagnosing start-up failures.
		base = append(base, "--debug", "--debug-log="+dir+"/")
	}
	return exec.Command(e.cfg.Runsc, append(base, args...)...)
}

// runscLow is runsc at the lowest CPU priority, for work no request waits on: pool refills and
// teardowns. A sandbox it starts inherits the niceness, which only orders it against the other
// processes of its own cgroup (its gofer); against everything else its cgroup's CPU share counts.
func (e *Engine) runscLow(args ...string) *exec.Cmd {
	cmd := e.runsc(args...)
	if e.nice != "" {
		cmd.Args = append([]string{e.nice, "-n", "19"}, cmd.Args...)
		cmd.Path = e.nice
	}
	return cmd
}

// runscFor is runscLow for background work, runsc otherwise.
func (e *Engine) runscFor(background bool) func(args ...string) *exec.Cmd {
	if background {
		return e.runscLow
	}
	return e.runsc
}

// How long runsc kill and delete may take before they are killed, and how long a killed sandbox may
// take to exit before runsc itself gets SIGKILL. Variables for the tests.
var (
	runscTimeout = 10 * time.Second
	killGrace    = 5 * time.Second
)

// runBounded runs cmd (runsc what), killing it after d: a runsc that hangs must not hold a request or
// the engine.
func runBounded(what string, cmd *exec.Cmd, d time.Duration) error {
	return runBoundedCtx(context.Background(), what, cmd, d)
}

// runBoundedCtx is runBounded that also kills cmd when ctx ends.
func runBoundedCtx(ctx context.Context, what string, cmd *exec.Cmd, d time.Duration) error {
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("runsc %s: no answer within %v", what, d)
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("runsc %s: %w", what, context.Cause(ctx))
	}
}

// start creates and starts a sandbox and waits for its agent to say it is ready. background
// sandboxes (pool refills, the golden checkpoint) get a small CPU share until a request takes them.
func (e *Engine) start(ctx context.Context, memoryMB int, preload, background bool) (*sandbox, error) {
	s, err := e.newSandbox(ctx, memoryMB, preload, background, "run")
	if err != nil {
		return nil, err
	}
	return e.attach(ctx, s, true)
}

// newSandbox registers a sandbox with the engine (Close kills what is registered) and writes its
// bundle; its command is runsc with args, then --bundle and its id. Every early return undoes both.
func (e *Engine) newSandbox(ctx context.Context, memoryMB int, preload, background bool, args ...string) (*sandbox, error) {
	return e.newSandboxSpec(ctx, memoryMB, e.spec(memoryMB, preload, background), background, args...)
}

// newSandboxSpec is newSandbox with the OCI spec given.
func (e *Engine) newSandboxSpec(ctx context.Context, memoryMB int, spec map[string]any, background bool, args ...string) (*sandbox, error) {
	s := &sandbox{id: newID(), done: make(chan struct{}), memory: memoryMB}
	s.bundle = filepath.Join(e.cfg.StateDir, "bundles", s.id)
	s.cmd = e.runscFor(background)(append(args, "--bundle", s.bundle, s.id)...)
	e.mu.Lock()
	if e.closed.Load() {
		e.mu.Unlock()
		return nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	e.live[s] = struct{}{}
	e.mu.Unlock()
	var cu cleanup
	defer cu.run()
	cu.add(func() { e.destroy(s) }) // not started: unregisters and removes the bundle
	if err := os.MkdirAll(s.bundle, 0o700); err != nil {
		return nil, err
	}
	if err := e.makeNamespace(ctx, s); err != nil {
		return nil, err
	}
	e.networkSpec(spec, s)
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(s.bundle, "config.json"), b, 0o600); err != nil {
		return nil, err
	}
	cu.release()
	return s, nil
}

// readyLine bounds the agent's first line.
const readyLine = 4 << 10

// attach starts s.cmd (runsc run or restore) with pipes to the agent and, when waitReady, waits for
// the agent's first line. The pipes are our own (not StdoutPipe): Wait closes StdoutPipe's end when
// runsc exits, which could lose the last replies still being read.
func (e *Engine) attach(ctx context.Context, s *sandbox, waitReady bool) (*sandbox, error) {
	var cu cleanup
	defer cu.run()
	cu.add(func() { e.destroy(s) })
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s.stderr = &limitedBuffer{max: 64 << 10}
	s.cmd.Stderr = s.stderr
	// runsc's children may keep its stderr open after it exits; Wait must not wait for them.
	s.cmd.WaitDelay = time.Second
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	s.cmd.Stdin, s.cmd.Stdout = inR, outW
	// Started under mu, so that Close, which kills what is registered, either sees the process or
	// has taken the sandbox out (then it must not start).
	e.mu.Lock()
	if s.removed {
		err = errdefs.With(errdefs.Unavailable, ErrClosed)
	} else if err = startPinned(s.cmd); err == nil { // Pdeathsig: see startPinned
		s.in, s.out = inW, outR
		// A few lines of read-ahead: what the host holds for a sandbox stays a small multiple of the cap.
		s.lines, s.quit = make(chan agentLine, 4), make(chan struct{})
	}
	e.mu.Unlock()
	inR.Close() // the child holds its own copies
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("starting runsc: %w", err)
	}
	s.maxLine.Store(readyLine)
	e.Stats.Started.Add(1)
	go s.readLoop()
	go func() {
		err := s.cmd.Wait()
		s.exitErr = err
		close(s.done)
	}()
	if !waitReady {
		cu.release()
		return s, nil
	}
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case l, ok := <-s.lines:
		switch {
		case !ok:
			select {
			case <-s.done:
				err = fmt.Errorf("sandbox exited before its agent started: %v: %s", s.exitErr, s.stderr.String())
			case <-time.After(killGrace):
				err = fmt.Errorf("the agent closed its output before it started: %s", s.stderr.String())
			}
		case l.err != nil:
			err = l.err
		default:
			var msg struct{ Event string }
			if json.Unmarshal(l.b, &msg) != nil || msg.Event != "ready" {
				err = fmt.Errorf("unexpected first line from the agent: %s", quote(l.b))
			}
		}
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = fmt.Errorf("sandbox did not start within %v", startTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("starting heavy sandbox: %w", err)
	}
	cu.release()
	return s, nil
}

// exited reports whether the sandbox's runsc has exited: done is closed, or runsc is dead but its
// Wait has not closed done yet (waitid with WNOWAIT leaves the status for Wait; ECHILD means Wait
// reaped it already).
func (s *sandbox) exited() bool {
	select {
	case <-s.done:
		return true
	default:
	}
	if s.cmd == nil || s.cmd.Process == nil {
		return false
	}
	var info unix.Siginfo // WNOHANG with nothing to report leaves it zero
	err := unix.Waitid(unix.P_PID, s.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return errors.Is(err, unix.ECHILD) || err == nil && info.Signo == int32(unix.SIGCHLD)
}

// readLoop reads the agent's replies into s.lines until EOF, a line longer than s.maxLine (a protocol
// fault: reading stops, the caller kills the sandbox) or destroy.
func (s *sandbox) readLoop() {
	defer close(s.lines)
	r := bufio.NewReaderSize(s.out, 64<<10)
	for {
		b, err := readLine(r, &s.maxLine)
		if err != nil {
			if errors.Is(err, errProtocol) {
				select {
				case s.lines <- agentLine{err: err}:
				case <-s.quit:
				}
			}
			return
		}
		select {
		case s.lines <- agentLine{b: b}:
		case <-s.quit:
			return
		}
	}
}

// readLine reads one line of at most *max bytes, without its newline. A longer line is a protocol
// fault, found before more than *max bytes are held; a partial last line before EOF is dropped. max
// is read as the line arrives: a call sets it after readLoop began waiting.
func readLine(r *bufio.Reader, max *atomic.Int64) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if n := max.Load(); int64(len(line)+len(frag)) > n+1 {
			return nil, protocolErr("a reply line longer than %d bytes", n)
		}
		switch err {
		case nil:
			return append(line, frag[:len(frag)-1]...), nil
		case bufio.ErrBufferFull:
			line = append(line, frag...)
		default:
			return nil, err
		}
	}
}

// errProtocol marks replies that broke the agent protocol (too long, unreadable, for another request):
// the sandbox is killed and the fault is reported as the guest's.
var errProtocol = errors.New("the sandbox broke the agent protocol")

func protocolErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errProtocol}, args...)...)
}

// quote is b for an error message: at most 200 bytes of it, so that a guest's garbage cannot bloat
// logs and answers.
func quote(b []byte) string {
	const max = 200
	if len(b) > max {
		return fmt.Sprintf("%q... (%d bytes)", b[:max], len(b))
	}
	return strconv.Quote(string(b))
}

// spec is the OCI runtime spec of a sandbox.
func (e *Engine) spec(memoryMB int, preload, background bool) map[string]any {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/user", "LANG=C.UTF-8", "MPLBACKEND=Agg",
		"PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "OPENBLAS_NUM_THREADS=1"}
	if preload {
		env = append(env, "AGENTBOX_PRELOAD=1")
	}
	cpu := map[string]any{"quota": 100000, "period": 100000, "shares": foregroundShares}
	if background {
		cpu["shares"] = backgroundShares
	}
	tmpfs := func(dst string) map[string]any {
		return map[string]any{"destination": dst, "type": "tmpfs", "source": "tmpfs",
			"options": []string{"nosuid", "mode=1777", "size=" + strconv.Itoa(e.cfg.DiskMB) + "m"}}
	}
	return map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"user":            map[string]any{"uid": 1000, "gid": 1000},
			"args":            []string{"/usr/bin/python3", "-X", "utf8", "/opt/agentbox/agent.py"},
			"env":             env,
			"cwd":             "/home/user",
			"noNewPrivileges": true,
			"capabilities":    map[string]any{"bounding": []string{}, "effective": []string{}, "permitted": []string{}},
			// gVisor enforces NPROC itself: fork fails with EAGAIN in the guest. The pids cgroup below is only
			// a host-side backstop, kept well above it, because the systrap platform needs host threads of
			// its own and panics when the host refuses one.
			"rlimits": []map[string]any{{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
				{"type": "RLIMIT_NPROC", "hard": e.cfg.Pids, "soft": e.cfg.Pids}},
		},
		"root":     map[string]any{"path": e.cfg.Rootfs, "readonly": true},
		"hostname": "sandbox",
		"mounts": []map[string]any{
			{"destination": "/proc", "type": "proc", "source": "proc"},
			{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid"}},
			tmpfs("/tmp"), tmpfs("/home/user"), tmpfs("/data"), tmpfs("/output"),
			{"destination": "/opt/agentbox", "type": "bind", "source": e.agentDir, "options": []string{"rbind", "ro"}},
			{"destination": "/etc/hostname", "type": "bind", "source": filepath.Join(e.etcDir, "hostname"), "options": []string{"bind", "ro"}},
			{"destination": "/etc/resolv.conf", "type": "bind", "source": filepath.Join(e.etcDir, "resolv.conf"), "options": []string{"bind", "ro"}},
		},
		"linux": map[string]any{
			"namespaces": []map[string]any{{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}},
			"resources": map[string]any{
				"memory": map[string]any{"limit": int64(memoryMB) << 20},
				"pids":   map[string]any{"limit": 4*e.cfg.Pids + 256},
				"cpu":    cpu,
			},
		},
	}
}

// CPU shares (cgroup v1 units; 1024 is the default) of sandboxes being made for the pool and of
// sandboxes serving requests. Refills restore a checkpoint and import pandas, a second or so of CPU;
// at full share they take cores from the requests in flight (measured: API pool hits went from ~7 ms
// to ~25 ms back to back on 2 cores). At 1/16 the share they only use what requests leave idle.
const (
	backgroundShares = 64
	foregroundShares = 1024
)

// foreground gives a pooled sandbox the full CPU share now that a request has it.
func (e *Engine) foreground(s *sandbox) { e.setShares(s, foregroundShares) }

// setShares sets a sandbox's CPU share. runsc names the sandbox's cgroup after its id; cgroup v2
// takes a weight (default 100) instead of shares (default 1024).
func (e *Engine) setShares(s *sandbox, shares int) {
	v1 := filepath.Join("/sys/fs/cgroup/cpu", s.id, "cpu.shares")
	err := os.WriteFile(v1, []byte(strconv.Itoa(shares)), 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		err = os.WriteFile(filepath.Join("/sys/fs/cgroup", s.id, "cpu.weight"), []byte(strconv.Itoa(max(1, shares*100/1024))), 0o644)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.log.Warn("setting a heavy sandbox's CPU share", "id", s.id, "shares", shares, "err", err)
	}
}

// kill stops a sandbox's container: runsc kill within runscTimeout, then SIGKILL of runsc itself if
// the sandbox has not exited within killGrace. background kills run at low CPU priority.
func (e *Engine) kill(s *sandbox, background bool) {
	s.killed.Store(true)
	if s.cmd == nil || s.cmd.Process == nil || s.exited() {
		return
	}
	if err := runBounded("kill", e.runscFor(background)("kill", s.id, "KILL"), runscTimeout); err != nil {
		e.log.Debug("runsc kill", "id", s.id, "err", err)
	}
	select {
	case <-s.done:
	case <-time.After(killGrace):
		e.log.Warn("a heavy sandbox outlived runsc kill; killing runsc", "id", s.id)
		s.cmd.Process.Kill()
	}
}

// destroy stops a sandbox and removes its traces, once: a second call (a session closed after Close
// destroyed its sandbox) waits for the first. Every wait in it is bounded.
func (e *Engine) destroy(s *sandbox) {
	s.torn.Do(func() { e.teardown(s) })
}

func (e *Engine) teardown(s *sandbox) {
	e.mu.Lock()
	delete(e.live, s)
	s.removed = true
	started := s.cmd != nil && s.cmd.Process != nil
	e.mu.Unlock()
	e.unbindNetwork(s) // its new connections are reset from now on
	defer e.removeNamespace(s)
	if !started {
		os.RemoveAll(s.bundle) // never started: no container to delete
		return
	}
	e.kill(s, true)
	select {
	case <-s.done:
	case <-time.After(killGrace):
		e.log.Warn("a heavy sandbox's runsc did not exit after SIGKILL", "id", s.id)
	}
	if err := runBounded("delete", e.runscLow("delete", "--force", s.id), runscTimeout); err != nil {
		e.log.Debug("runsc delete", "id", s.id, "err", err)
	}
	s.quitted.Do(func() {
		if s.quit != nil {
			close(s.quit)
		}
		if s.in != nil {
			s.in.Close()
			s.out.Close() // ends readLoop even if something in the sandbox still holds the pipe
		}
	})
	os.RemoveAll(s.bundle)
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
