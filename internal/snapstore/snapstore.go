// Package snapstore is the snapshot store of time travel (docs/time-travel.md), one for both tiers:
// content-addressed blocks in packed segment files, deduplicated by an HMAC-SHA256 under a key of
// this installation (so a guest cannot craft a block that collides with another session's), zstd
// compressed by a background writer, verified by their hash on every read; and a manifest per
// (session, step) holding the tier's Snapshot. Blocks are reference counted by the manifests that
// hold them; a retention policy thins old steps and keeps pinned ones within byte budgets.
//
// On disk, under Config.Dir: key (0600), segments/seg-NNNNNN (records: a header with the block's
// id, hash and sizes, then its bytes) and manifests/<session>/<step>.json. At Open, the sessions that
// have a pinned step are kept (Archived lists them) and everything else is swept: sessions do not
// survive a restart, their pinned steps do.
package snapstore

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Config configures a Store. Zero values are the defaults given per field.
type Config struct {
	// Dir holds the store; it is created (0700). Required.
	Dir string
	// SegmentBytes is the size at which a segment file is closed and a new one started; zero means
	// 64 MiB.
	SegmentBytes int64
	// Retention is what the store keeps of each session's steps.
	Retention Retention
	// Logger receives write failures and sweeps; nil discards.
	Logger *slog.Logger
}

// Retention says which steps keep their snapshots. Pinned steps are always kept; the others are
// thinned (their manifest dropped, their blocks freed when nothing else holds them) oldest first.
type Retention struct {
	// Dense is how many of a session's latest steps are all kept; zero means 20.
	Dense int
	// Every keeps, of the older steps, those whose number is a multiple of it; zero means 10,
	// negative keeps none of them.
	Every int
	// SessionBytes caps the distinct blocks one session's snapshots hold (uncompressed bytes);
	// beyond it the oldest unpinned steps are thinned, dense ones included. Zero means 512 MiB,
	// negative no cap.
	SessionBytes int64
	// TotalBytes caps the same over all sessions; zero means 8 GiB, negative no cap.
	TotalBytes int64
}

func (r Retention) withDefaults() Retention {
	if r.Dense <= 0 {
		r.Dense = 20
	}
	if r.Every == 0 {
		r.Every = 10
	}
	if r.SessionBytes == 0 {
		r.SessionBytes = 512 << 20
	}
	if r.TotalBytes == 0 {
		r.TotalBytes = 8 << 30
	}
	return r
}

// Record is what a manifest keeps beside the snapshot: the step as listed, its result and owner, so
// that the pinned steps of a session are still listed after a restart.
type Record struct {
	Owner  string      `json:"owner"`
	Step   api.Step    `json:"step"`
	Result *api.Result `json:"result,omitempty"`
}

// State is what the store knows of one step's snapshot.
type State struct {
	State  string // api.SnapshotPending, Stored, Missing, Thinned or Corrupt
	Bytes  int64  // compressed bytes of the blocks the step added, plus its manifest
	Pinned bool
	Reason string
}

type block struct {
	sum  [32]byte
	raw  []byte // the data until the writer has stored it, then nil
	rlen uint32
	// Where the writer put it: segment, offset of the record, compressed length (0 until written).
	seg  uint32
	off  int64
	clen uint32
	flag byte
	// sessions is how many sessions' manifests hold it, held how many open transactions put it;
	// it is freed when both are zero.
	sessions int32
	held     int32
	written  bool
	waiters  []*manifest // pending manifests waiting for it to be written
}

type manifest struct {
	session string
	n       int
	rec     Record
	snap    *tier.Snapshot
	uniq    []tier.BlockID // distinct blocks of snap
	added   []tier.BlockID // blocks first put by this step's transaction
	state   string
	reason  string
	waiting int   // blocks not yet written
	size    int64 // bytes of its file
}

type sessionState struct {
	steps map[int]*manifest
	refs  map[tier.BlockID]int32 // how many of its manifests hold each block
	bytes int64                  // uncompressed bytes of the blocks in refs
	// protect are steps retention keeps whatever the policy says (the session's current step).
	protect []int
}

// Store is the snapshot store. It implements tier.Blocks and is safe for concurrent use.
type Store struct {
	dir string
	key []byte
	ret Retention
	log *slog.Logger
	seg int64

	hmacs sync.Pool
	enc   *zstd.Encoder
	dec   *zstd.Decoder

	mu       sync.Mutex
	next     tier.BlockID                 // guarded by mu
	index    map[[32]byte]tier.BlockID    // guarded by mu
	blocks   map[tier.BlockID]*block      // guarded by mu
	queue    []tier.BlockID               // blocks for the writer; guarded by mu
	sessions map[string]*sessionState     // guarded by mu
	segs     map[uint32]*segment          // guarded by mu
	total    int64                        // uncompressed bytes of all live blocks; guarded by mu
	archived map[string]map[int]*manifest // sessions kept from before a restart; guarded by mu
	closed   bool                         // guarded by mu

	wake chan struct{}
	done chan struct{}
	// lock is the directory's lock file, held (flock) while the store is open: one server per store.
	lock *os.File
	// writeHook, when set (tests), is called before each record is written and may fail it.
	writeHook func(rec []byte) error
}

var _ tier.Blocks = (*Store)(nil)

// Open opens (or creates) the store in cfg.Dir and starts its writer.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("snapstore: no directory")
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = 64 << 20
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{cfg.Dir, filepath.Join(cfg.Dir, "segments"), filepath.Join(cfg.Dir, "manifests")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("snapstore: %w", err)
		}
	}
	lock, err := lockDir(filepath.Join(cfg.Dir, "lock"))
	if err != nil {
		return nil, err
	}
	key, err := loadKey(filepath.Join(cfg.Dir, "key"))
	if err != nil {
		lock.Close()
		return nil, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("snapstore: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0))
	if err != nil {
		return nil, fmt.Errorf("snapstore: %w", err)
	}
	s := &Store{dir: cfg.Dir, key: key, lock: lock, ret: cfg.Retention.withDefaults(), log: log, seg: cfg.SegmentBytes, enc: enc, dec: dec,
		index: map[[32]byte]tier.BlockID{}, blocks: map[tier.BlockID]*block{}, sessions: map[string]*sessionState{},
		segs: map[uint32]*segment{}, archived: map[string]map[int]*manifest{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.hmacs.New = func() any { return hmac.New(sha256.New, s.key) }
	if err := s.recover(); err != nil {
		lock.Close()
		return nil, err
	}
	go s.writer()
	return s, nil
}

// lockDir takes the store's lock file, refusing a store another process has open.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapstore: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("snapstore: %s is in use by another agentbox (one server per snapshot store): %w", filepath.Dir(path), err)
	}
	return f, nil
}

// loadKey reads the installation's HMAC key, creating it (32 random bytes, 0600) on first use.
func loadKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err == nil {
		if len(key) < 32 {
			return nil, fmt.Errorf("snapstore: key %s is %d bytes, want 32", path, len(key))
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("snapstore: %w", err)
	}
	key = make([]byte, 32)
	rand.Read(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapstore: creating the key: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return nil, fmt.Errorf("snapstore: writing the key: %w", err)
	}
	return key, f.Close()
}

func (s *Store) sum(data []byte) [32]byte {
	h := s.hmacs.Get().(hash.Hash)
	h.Reset()
	h.Write(data)
	var out [32]byte
	h.Sum(out[:0])
	s.hmacs.Put(h)
	return out
}

// Put stores data outside any transaction: a block that no manifest takes up is freed by the next
// Sweep. Tiers snapshotting a session are given a Tx instead.
func (s *Store) Put(data []byte) (tier.BlockID, error) { return s.put(data, nil) }

func (s *Store) put(data []byte, tx *Tx) (tier.BlockID, error) {
	if len(data) > tier.MaxBlock {
		return 0, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("snapstore: a block of %d bytes is larger than %d", len(data), tier.MaxBlock))
	}
	sum := s.sum(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errdefs.With(errdefs.Unavailable, errors.New("snapstore: closed"))
	}
	id, ok := s.index[sum]
	if !ok {
		s.next++
		id = s.next
		s.index[sum] = id
		s.blocks[id] = &block{sum: sum, raw: slices.Clone(data), rlen: uint32(len(data))}
		s.total += int64(len(data))
		s.queue = append(s.queue, id)
		if tx != nil {
			tx.added = append(tx.added, id)
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	if tx != nil {
		if _, seen := tx.held[id]; !seen {
			tx.held[id] = struct{}{}
			s.blocks[id].held++
		}
	}
	return id, nil
}

// Get appends the block's bytes to dst, verified against its hash.
func (s *Store) Get(dst []byte, id tier.BlockID) ([]byte, error) {
	var data []byte
	var clen, rlen uint32
	var flag byte
	var sum [32]byte
	for try := 0; ; try++ {
		s.mu.Lock()
		b := s.blocks[id]
		if b == nil {
			s.mu.Unlock()
			return dst, fmt.Errorf("snapstore: block %d: %w", id, tier.ErrCorrupt)
		}
		if b.raw != nil {
			dst = append(dst, b.raw...)
			s.mu.Unlock()
			return dst, nil
		}
		var sg *segment
		var off int64
		sg, off, clen, rlen, flag, sum = s.segs[b.seg], b.off, b.clen, b.rlen, b.flag, b.sum
		s.mu.Unlock()
		if sg == nil {
			return dst, fmt.Errorf("snapstore: block %d: its segment is gone: %w", id, tier.ErrCorrupt)
		}
		var err error
		data, err = sg.read(off+headerSize, int(clen))
		if errors.Is(err, errSegmentGone) && try == 0 {
			continue // compacted meanwhile: the block is elsewhere now
		}
		if err != nil {
			return dst, fmt.Errorf("snapstore: block %d: %w: %w", id, err, tier.ErrCorrupt)
		}
		break
	}
	start := len(dst)
	var err error
	if flag&flagZstd != 0 {
		dst, err = s.dec.DecodeAll(data, dst)
		if err != nil {
			return dst[:start], fmt.Errorf("snapstore: block %d: %w: %w", id, err, tier.ErrCorrupt)
		}
	} else {
		dst = append(dst, data...)
	}
	if len(dst)-start != int(rlen) || s.sum(dst[start:]) != sum {
		return dst[:start], fmt.Errorf("snapstore: block %d fails its hash check: %w", id, tier.ErrCorrupt)
	}
	return dst, nil
}

// Tx is the Blocks a tier writes one snapshot through: the blocks it puts are held until Commit
// (which hands them to a manifest) or Abort.
type Tx struct {
	s     *Store
	held  map[tier.BlockID]struct{}
	added []tier.BlockID
	done  bool
}

var _ tier.Blocks = (*Tx)(nil)

// Begin starts a transaction.
func (s *Store) Begin() *Tx { return &Tx{s: s, held: map[tier.BlockID]struct{}{}} }

// Put stores data, held by the transaction.
func (t *Tx) Put(data []byte) (tier.BlockID, error) { return t.s.put(data, t) }

// Get reads a block.
func (t *Tx) Get(dst []byte, id tier.BlockID) ([]byte, error) { return t.s.Get(dst, id) }

// Store is the store the transaction's ids belong to (tier.View): a tier that remembers ids from
// one snapshot to the next keys them by it.
func (t *Tx) Store() tier.Blocks { return t.s }

// Hold keeps ids for the transaction's snapshot, as a Put of their data would (tier.View), and
// reports whether every one of them is still stored; those that are not must be put again.
func (t *Tx) Hold(ids []tier.BlockID) bool {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	all := true
	for _, id := range ids {
		if id == 0 {
			continue
		}
		b := t.s.blocks[id]
		if b == nil {
			all = false
			continue
		}
		if _, seen := t.held[id]; !seen {
			t.held[id] = struct{}{}
			b.held++
		}
	}
	return all
}

func (t *Tx) ended() bool {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	return t.done
}

// Abort lets go of the transaction's blocks; those nothing else holds are freed.
func (t *Tx) Abort() {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.releaseLocked()
}

func (t *Tx) releaseLocked() {
	if t.done {
		return
	}
	t.done = true
	for id := range t.held {
		if b := t.s.blocks[id]; b != nil {
			b.held--
			t.s.maybeFreeLocked(id, b)
		}
	}
}

// Commit saves snap as the manifest of (session, step rec.Step.N), owned by rec.Owner, and lets go
// of the transaction. The step is pending until the writer has stored its blocks, then stored; a
// write failure makes it missing.
func (t *Tx) Commit(session string, rec Record, snap *tier.Snapshot) error {
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	defer t.releaseLocked()
	if t.done {
		return errors.New("snapstore: transaction already ended")
	}
	for _, id := range snap.Blocks {
		if s.blocks[id] == nil {
			return fmt.Errorf("snapstore: the snapshot names block %d, which is not stored: %w", id, tier.ErrCorrupt)
		}
	}
	m := &manifest{session: session, n: rec.Step.N, rec: rec, snap: snap, added: t.added}
	s.addLocked(m)
	return nil
}

// addLocked registers m, taking references on its blocks, replacing a manifest of the same step.
func (s *Store) addLocked(m *manifest) {
	ss := s.sessions[m.session]
	if ss == nil {
		ss = &sessionState{steps: map[int]*manifest{}, refs: map[tier.BlockID]int32{}}
		s.sessions[m.session] = ss
	}
	if old := ss.steps[m.n]; old != nil {
		s.dropLocked(ss, old, api.SnapshotThinned, "")
	}
	m.uniq = slices.Compact(slices.Sorted(slices.Values(m.snap.Blocks)))
	m.state = api.SnapshotPending
	for _, id := range m.uniq {
		b := s.blocks[id]
		if ss.refs[id]++; ss.refs[id] == 1 {
			b.sessions++
			ss.bytes += int64(b.rlen)
		}
		if !b.written {
			b.waiters = append(b.waiters, m)
			m.waiting++
		}
	}
	ss.steps[m.n] = m
	if m.waiting == 0 {
		s.finishLocked(m)
	}
}

// finishLocked writes m's file, its blocks being stored.
func (s *Store) finishLocked(m *manifest) {
	if m.state != api.SnapshotPending {
		return
	}
	size, err := s.writeManifest(m)
	if err != nil {
		s.failLocked(m, fmt.Sprintf("writing its manifest failed: %v", err))
		return
	}
	m.state, m.size = api.SnapshotStored, size
}

// failLocked marks m missing and lets go of its blocks.
func (s *Store) failLocked(m *manifest, reason string) {
	if ss := s.sessions[m.session]; ss != nil && ss.steps[m.n] == m {
		s.dropLocked(ss, m, api.SnapshotMissing, reason)
	}
}

// dropLocked removes m's manifest (file and references), leaving it in state.
func (s *Store) dropLocked(ss *sessionState, m *manifest, state, reason string) {
	if m.state == api.SnapshotThinned || m.state == api.SnapshotMissing || m.state == api.SnapshotCorrupt {
		if state == api.SnapshotCorrupt { // known already unrestorable; say so
			m.state, m.reason = state, reason
		}
		return
	}
	for _, id := range m.uniq {
		b := s.blocks[id]
		if b == nil {
			continue
		}
		if ss.refs[id]--; ss.refs[id] == 0 {
			delete(ss.refs, id)
			ss.bytes -= int64(b.rlen)
			b.sessions--
			s.maybeFreeLocked(id, b)
		}
	}
	if m.size > 0 || m.state == api.SnapshotStored {
		os.Remove(s.manifestPath(m.session, m.n))
	}
	m.state, m.reason, m.snap, m.uniq, m.size = state, reason, nil, nil, 0
}

// maybeFreeLocked frees b when nothing holds it.
func (s *Store) maybeFreeLocked(id tier.BlockID, b *block) {
	if b.sessions > 0 || b.held > 0 {
		return
	}
	delete(s.blocks, id)
	if s.index[b.sum] == id {
		delete(s.index, b.sum)
	}
	s.total -= int64(b.rlen)
	b.raw = nil
	if b.written {
		if sg := s.segs[b.seg]; sg != nil {
			sg.live--
			sg.dead += headerSize + int64(b.clen)
		}
	}
}

// Sweep frees the blocks put outside a transaction that no manifest took up, and removes segment
// files whose blocks are all dead. It returns how many segment files it removed.
func (s *Store) Sweep() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, b := range s.blocks {
		s.maybeFreeLocked(id, b)
	}
	return s.sweepSegmentsLocked()
}

// SessionBlocks is the Blocks one session's snapshots and restores go through: the same value from
// one snapshot to the next, so that a tier that remembers block ids between snapshots (nano's page
// table) may name them again without putting their data, while each snapshot's puts still go to its
// own transaction (Begin). The ids a tier names again are held by the session's current step, which
// retention never thins; should one be gone all the same, that snapshot's Commit fails and the
// session starts a new SessionBlocks, which makes the tier put everything again.
type SessionBlocks struct {
	s  *Store
	mu sync.Mutex
	tx *Tx // the snapshot being taken; guarded by mu
}

var _ tier.Blocks = (*SessionBlocks)(nil)

// SessionBlocks returns a new SessionBlocks over the store.
func (s *Store) SessionBlocks() *SessionBlocks { return &SessionBlocks{s: s} }

// Begin starts the transaction the next Puts go to, until it is committed or aborted.
func (v *SessionBlocks) Begin() *Tx {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.tx = v.s.Begin()
	return v.tx
}

func (v *SessionBlocks) current() *Tx {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.tx != nil && v.tx.ended() {
		v.tx = nil
	}
	return v.tx
}

// Put stores data through the current transaction (outside one: as Store.Put).
func (v *SessionBlocks) Put(data []byte) (tier.BlockID, error) {
	if tx := v.current(); tx != nil {
		return tx.Put(data)
	}
	return v.s.Put(data)
}

// Get reads a block.
func (v *SessionBlocks) Get(dst []byte, id tier.BlockID) ([]byte, error) { return v.s.Get(dst, id) }

// Store is the store the ids belong to (tier.View).
func (v *SessionBlocks) Store() tier.Blocks { return v.s }

// Hold holds ids for the current transaction (tier.View); outside one it only reports whether they
// are all stored.
func (v *SessionBlocks) Hold(ids []tier.BlockID) bool {
	if tx := v.current(); tx != nil {
		return tx.Hold(ids)
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	for _, id := range ids {
		if id != 0 && v.s.blocks[id] == nil {
			return false
		}
	}
	return true
}
