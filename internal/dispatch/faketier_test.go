package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// toyEngine is a small tier for testing dispatch's time travel without an interpreter: each session
// holds variables, files, a cwd and a random generator, driven by a line language (toySession.Run),
// and implements tier.Snapshotter and tier.Restorer over real Blocks.
type toyEngine struct {
	name api.Tier
	// noSnap makes its sessions plain tier.Sessions (no Snapshotter).
	noSnap bool
	// reuse makes snapshots name the blocks of unchanged files again without putting them, while
	// they are given the same Blocks (as nano's page table does).
	reuse bool
	// snapDelay is how long each Snapshot takes; snapped is told when one ends.
	snapDelay time.Duration
	snapped   chan int
	// failPut makes the Puts of a snapshot fail while it returns true.
	mu      sync.Mutex
	failPut func() error // guarded by mu
	live    int          // sessions open; guarded by mu
}

func (e *toyEngine) RunCollect(context.Context, api.RunRequest, tier.Stream, int64, int64) (*api.Result, *tier.Collected, error) {
	return nil, nil, errors.New("toy tier: no one-shot runs")
}

func (e *toyEngine) NewSession(ctx context.Context, lim api.Limits, pkgs []string) (tier.Session, error) {
	s := &toySession{e: e, vars: map[string]string{}, files: map[string][]byte{}, cwd: "/home/user", rng: newRNG(), alive: true}
	e.mu.Lock()
	e.live++
	e.mu.Unlock()
	if e.noSnap {
		return plainSession{s}, nil
	}
	return s, nil
}

// plainSession hides toySession's Snapshot method.
type plainSession struct{ tier.Session }

func (e *toyEngine) Limits(req api.Limits) (api.Limits, error) {
	if req.MemoryLimitMB == 0 {
		req.MemoryLimitMB = 16
	}
	return req, nil
}
func (e *toyEngine) PoolReady() int                  { return 1 }
func (e *toyEngine) Close(ctx context.Context) error { return nil }

func (e *toyEngine) open() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.live
}

func newRNG() *mrand.Rand {
	var seed [32]byte
	rand.Read(seed[:])
	return mrand.New(mrand.NewChaCha8(seed))
}

type toySession struct {
	e     *toyEngine
	mu    sync.Mutex
	vars  map[string]string
	files map[string][]byte
	cwd   string
	rng   *mrand.Rand
	alive bool
	// last are the blocks of each file's content at the last snapshot, through lastBlocks (reuse).
	last       map[string][]tier.BlockID
	lastData   map[string]string
	lastBlocks tier.Blocks
}

// Run runs one line per statement: "x = 1", "x += 2", "del x", "print x", "write P TEXT", "noise P N"
// (N random bytes), "rm P", "cd D", "rand", "fail", "probe" (prints the whole state), "import m".
func (s *toySession) Run(ctx context.Context, code string, st tier.Stream) (*api.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.alive {
		return nil, tier.ErrGone
	}
	res := &api.Result{Tier: s.e.name}
	var out strings.Builder
	for _, line := range strings.Split(code, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0, f[0] == "import":
		case len(f) == 3 && f[1] == "=":
			s.vars[f[0]] = f[2]
		case len(f) == 3 && f[1] == "+=":
			a, _ := strconv.Atoi(s.vars[f[0]])
			b, _ := strconv.Atoi(f[2])
			s.vars[f[0]] = strconv.Itoa(a + b)
		case f[0] == "del":
			delete(s.vars, f[1])
		case f[0] == "print":
			fmt.Fprintln(&out, s.vars[f[1]])
		case f[0] == "write":
			s.files[f[1]] = []byte(strings.Join(f[2:], " "))
		case f[0] == "noise":
			n, _ := strconv.Atoi(f[2])
			b := make([]byte, n)
			rand.Read(b)
			s.files[f[1]] = b
		case f[0] == "rm":
			delete(s.files, f[1])
		case f[0] == "cd":
			s.cwd = f[1]
		case f[0] == "rand":
			fmt.Fprintln(&out, s.rng.Uint64())
		case f[0] == "fail":
			res.ExitCode, res.Error = 1, &api.Error{Type: "ValueError", Message: "asked to fail"}
		case f[0] == "probe":
			out.WriteString(s.probeLocked())
		default:
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("toy: %q", line))
		}
	}
	res.Stdout = out.String()
	if st.Stdout != nil {
		st.Stdout(res.Stdout)
	}
	return res, nil
}

func (s *toySession) probeLocked() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.vars)) {
		fmt.Fprintf(&b, "%s=%s;", k, s.vars[k])
	}
	for _, p := range slices.Sorted(maps.Keys(s.files)) {
		fmt.Fprintf(&b, "%s:%d:%x;", p, len(s.files[p]), s.files[p][:min(8, len(s.files[p]))])
	}
	return b.String() + "cwd=" + s.cwd + "\n"
}

func (s *toySession) WriteFile(ctx context.Context, p string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[p] = slices.Clone(data)
	return nil
}

func (s *toySession) ReadFile(ctx context.Context, p string, max int64) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.files[p]
	if !ok {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("toy: no file %s", p))
	}
	return slices.Clone(d), nil
}

func (s *toySession) ListFiles(ctx context.Context, dir string) ([]api.FileInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []api.FileInfo
	for p, d := range s.files {
		if strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/") {
			out = append(out, api.FileInfo{Name: p[strings.LastIndex(p, "/")+1:], Path: p, Size: int64(len(d))})
		}
	}
	return out, nil
}

func (s *toySession) Alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.alive
}

func (s *toySession) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.alive {
		s.alive = false
		s.e.mu.Lock()
		s.e.live--
		s.e.mu.Unlock()
	}
	return nil
}

type toyState struct {
	Vars  map[string]string         `json:"vars"`
	Files map[string][]tier.BlockID `json:"files"`
	Cwd   string                    `json:"cwd"`
}

// Snapshot cuts each file into 4 KiB blocks.
func (s *toySession) Snapshot(ctx context.Context, blocks tier.Blocks) (*tier.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e.snapDelay > 0 {
		time.Sleep(s.e.snapDelay)
	}
	st := toyState{Vars: maps.Clone(s.vars), Files: map[string][]tier.BlockID{}, Cwd: s.cwd}
	snap := &tier.Snapshot{Tier: s.e.name}
	reuse := s.e.reuse && s.lastBlocks == blocks
	if !reuse {
		s.last, s.lastData = map[string][]tier.BlockID{}, map[string]string{}
	}
	for p, d := range s.files {
		if ids, ok := s.last[p]; reuse && ok && s.lastData[p] == string(d) {
			st.Files[p] = ids
			snap.Blocks = append(snap.Blocks, ids...)
			snap.Files = append(snap.Files, api.FileInfo{Name: p[strings.LastIndex(p, "/")+1:], Path: p, Size: int64(len(d))})
			continue
		}
		ids := []tier.BlockID{}
		for off := 0; off < len(d) || off == 0; off += 4096 {
			s.e.mu.Lock()
			fail := s.e.failPut
			s.e.mu.Unlock()
			if fail != nil {
				if err := fail(); err != nil {
					return nil, err
				}
			}
			id, err := blocks.Put(d[off:min(off+4096, len(d))])
			if err != nil {
				return nil, err
			}
			ids = append(ids, id)
			if len(d) == 0 {
				break
			}
		}
		st.Files[p] = ids
		s.last[p], s.lastData[p] = ids, string(d)
		snap.Blocks = append(snap.Blocks, ids...)
		snap.Files = append(snap.Files, api.FileInfo{Name: p[strings.LastIndex(p, "/")+1:], Path: p, Size: int64(len(d))})
	}
	for k, v := range s.vars {
		snap.Variables = append(snap.Variables, api.Variable{Name: k, Type: "str", Kind: "value", Repr: v})
	}
	s.lastBlocks = blocks
	snap.State, _ = json.Marshal(st)
	if s.e.snapped != nil {
		defer func() { s.e.snapped <- len(snap.Blocks) }()
	}
	return snap, nil
}

// Restore rebuilds a session from a snapshot, with a fresh random generator.
func (e *toyEngine) Restore(ctx context.Context, snap *tier.Snapshot, blocks tier.Blocks, lim api.Limits) (tier.Session, error) {
	if snap.Tier != e.name {
		return nil, fmt.Errorf("toy %s: a snapshot of %s", e.name, snap.Tier)
	}
	var st toyState
	if err := json.Unmarshal(snap.State, &st); err != nil {
		return nil, err
	}
	sb, _ := e.NewSession(ctx, lim, nil)
	s := sb.(*toySession)
	s.vars, s.cwd = st.Vars, st.Cwd
	for p, ids := range st.Files {
		var d []byte
		for _, id := range ids {
			var err error
			if d, err = blocks.Get(d, id); err != nil {
				s.Close(ctx)
				return nil, fmt.Errorf("toy: restoring %s: %w", p, err)
			}
		}
		s.files[p] = d
	}
	return s, nil
}
