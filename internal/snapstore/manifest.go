package snapstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// manifestFile is a manifest on disk: JSON, zstd-compressed.
type manifestFile struct {
	Record
	Pinned bool           `json:"pinned,omitempty"`
	Added  []tier.BlockID `json:"added,omitempty"`
	Snap   *tier.Snapshot `json:"snapshot"`
}

// validSession keeps session ids usable as directory names.
func validSession(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func (s *Store) manifestPath(session string, n int) string {
	return filepath.Join(s.dir, "manifests", session, strconv.Itoa(n)+".json")
}

// writeManifest writes m's file (atomically, by rename) and returns its size.
func (s *Store) writeManifest(m *manifest) (int64, error) {
	if !validSession(m.session) {
		return 0, fmt.Errorf("session id %q is not a valid name", m.session)
	}
	data, err := json.Marshal(manifestFile{Record: m.rec, Pinned: m.rec.Step.Pinned, Added: m.added, Snap: m.snap})
	if err != nil {
		return 0, err
	}
	// Compressed: a heavy step's block list is 20,000 ids, which zstd shrinks tenfold.
	data = s.enc.EncodeAll(data, nil)
	p := s.manifestPath(m.session, m.n)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return 0, err
	}
	tmp := p + ".tmp"
	if s.writeHook != nil {
		if err := s.writeHook(data); err != nil {
			return 0, err
		}
	}
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return int64(len(data)), nil
}

// errNoSnapshot is a step the store holds no snapshot of.
func errNoSnapshot(session string, n int, why string) error {
	return errdefs.With(errdefs.Conflict, fmt.Errorf("step %d of session %s cannot be restored: %s", n, session, why))
}

func (s *Store) manifestLocked(session string, n int) *manifest {
	if ss := s.sessions[session]; ss != nil {
		if m := ss.steps[n]; m != nil {
			return m
		}
	}
	return s.archived[session][n]
}

// Load returns the snapshot of (session, n) and its record, refusing a step without one (thinned,
// missing, corrupt) as a conflict that says why. A pending snapshot is served from memory.
func (s *Store) Load(session string, n int) (*tier.Snapshot, Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.manifestLocked(session, n)
	if m == nil {
		return nil, Record{}, errNoSnapshot(session, n, "the store has no snapshot of it")
	}
	switch m.state {
	case api.SnapshotStored, api.SnapshotPending:
		return m.snap, m.rec, nil
	}
	why := "its snapshot is " + m.state
	if m.reason != "" {
		why += " (" + m.reason + ")"
	}
	return nil, m.rec, errNoSnapshot(session, n, why)
}

// Copy saves the snapshot of (from, fromN) again as the manifest of (to, rec.Step.N), sharing its
// blocks: a rewind or a fork starts from a step's state without storing it twice.
func (s *Store) Copy(from string, fromN int, to string, rec Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	src := s.manifestLocked(from, fromN)
	if src == nil || (src.state != api.SnapshotStored && src.state != api.SnapshotPending) {
		return errNoSnapshot(from, fromN, "the store has no snapshot of it")
	}
	for _, id := range src.uniq {
		if s.blocks[id] == nil {
			return fmt.Errorf("snapstore: block %d of step %d is gone: %w", id, fromN, tier.ErrCorrupt)
		}
	}
	s.addLocked(&manifest{session: to, n: rec.Step.N, rec: rec, snap: src.snap})
	return nil
}

// MarkCorrupt records that restoring (session, n) met a corrupt block: the step is reported
// unrestorable and its manifest dropped; other steps are untouched.
func (s *Store) MarkCorrupt(session string, n int, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[session]; ss != nil {
		if m := ss.steps[n]; m != nil {
			s.dropLocked(ss, m, api.SnapshotCorrupt, reason)
		}
	}
	if m := s.archived[session][n]; m != nil {
		m.state, m.reason = api.SnapshotCorrupt, reason
	}
}

// State reports what the store knows of (session, n); ok is false when it never saw the step.
func (s *Store) State(session string, n int) (st State, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.manifestLocked(session, n)
	if m == nil {
		return State{}, false
	}
	st = State{State: m.state, Pinned: m.rec.Step.Pinned, Reason: m.reason}
	if m.state == api.SnapshotStored || m.state == api.SnapshotPending {
		st.Bytes = m.size
		for _, id := range m.added {
			if b := s.blocks[id]; b != nil {
				if b.written {
					st.Bytes += headerSize + int64(b.clen)
				} else {
					st.Bytes += int64(b.rlen)
				}
			}
		}
	}
	return st, true
}

// Pin keeps (session, n) whatever retention says (or, with pin false, no longer does). The step
// must still have its snapshot.
func (s *Store) Pin(session string, n int, pin bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.manifestLocked(session, n)
	if m == nil || (m.state != api.SnapshotStored && m.state != api.SnapshotPending) {
		if !pin {
			return nil
		}
		why := "the store has no snapshot of it"
		if m != nil {
			why = "its snapshot is " + m.state
		}
		return errNoSnapshot(session, n, why)
	}
	m.rec.Step.Pinned = pin
	if m.state == api.SnapshotStored {
		size, err := s.writeManifest(m)
		if err != nil {
			m.rec.Step.Pinned = !pin
			return fmt.Errorf("snapstore: pinning step %d: %w", n, err)
		}
		m.size = size
	}
	return nil
}

// Retain applies the retention policy to session, keeping protect (its current step) whatever it
// says, then the server-wide budget; it returns the steps of session it thinned.
func (s *Store) Retain(session string, protect ...int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[session]
	if ss == nil {
		return nil
	}
	ss.protect = protect
	var thinned []int
	live := s.liveStepsLocked(ss)
	keep := func(m *manifest) bool { return m.rec.Step.Pinned || slices.Contains(ss.protect, m.n) }
	for i, m := range live {
		dense := i >= len(live)-s.ret.Dense
		every := s.ret.Every > 0 && m.n%s.ret.Every == 0
		if !dense && !every && !keep(m) {
			s.dropLocked(ss, m, api.SnapshotThinned, "retention keeps the latest "+strconv.Itoa(s.ret.Dense)+" steps and every "+strconv.Itoa(s.ret.Every)+"th before them")
			thinned = append(thinned, m.n)
		}
	}
	if s.ret.SessionBytes > 0 {
		for _, m := range s.liveStepsLocked(ss) {
			if ss.bytes <= s.ret.SessionBytes {
				break
			}
			if !keep(m) {
				s.dropLocked(ss, m, api.SnapshotThinned, fmt.Sprintf("the session's snapshots passed their budget of %d bytes", s.ret.SessionBytes))
				thinned = append(thinned, m.n)
			}
		}
	}
	if s.ret.TotalBytes > 0 && s.total > s.ret.TotalBytes {
		for id, other := range s.sessions {
			for _, m := range s.liveStepsLocked(other) {
				if s.total <= s.ret.TotalBytes {
					break
				}
				if !m.rec.Step.Pinned && !slices.Contains(other.protect, m.n) {
					s.dropLocked(other, m, api.SnapshotThinned, fmt.Sprintf("the server's snapshots passed their budget of %d bytes", s.ret.TotalBytes))
					if id == session {
						thinned = append(thinned, m.n)
					}
				}
			}
		}
	}
	s.sweepSegmentsLocked()
	return thinned
}

// liveStepsLocked are the steps of ss with a snapshot, oldest first.
func (s *Store) liveStepsLocked(ss *sessionState) []*manifest {
	var out []*manifest
	for _, m := range ss.steps {
		if m.state == api.SnapshotStored || m.state == api.SnapshotPending {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b *manifest) int { return a.n - b.n })
	return out
}

// EndSession drops the session's snapshots, except its pinned ones when keepPinned; it reports
// whether any were kept.
func (s *Store) EndSession(session string, keepPinned bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[session]
	if ss == nil {
		return false
	}
	kept := false
	for _, m := range ss.steps {
		if keepPinned && m.rec.Step.Pinned && (m.state == api.SnapshotStored || m.state == api.SnapshotPending) {
			kept = true
			continue
		}
		s.dropLocked(ss, m, api.SnapshotThinned, "the session was closed")
	}
	if !kept {
		delete(s.sessions, session)
		delete(s.archived, session)
		os.RemoveAll(filepath.Join(s.dir, "manifests", session))
	}
	s.sweepSegmentsLocked()
	return kept
}

// Usage is what the store holds.
type Usage struct {
	Blocks   int
	RawBytes int64 // uncompressed bytes of the live blocks
	Segments int
	// DiskBytes is the size of the segment files (live and dead records).
	DiskBytes int64
}

// Usage reports what the store holds now.
func (s *Store) Usage() Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := Usage{Blocks: len(s.blocks), RawBytes: s.total, Segments: len(s.segs)}
	for _, sg := range s.segs {
		u.DiskBytes += sg.size
	}
	return u
}

// SessionBytes is the uncompressed size of the distinct blocks session's snapshots hold.
func (s *Store) SessionBytes(session string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[session]; ss != nil {
		return ss.bytes
	}
	return 0
}

// Flush waits until the writer has stored every block put so far (tests, benchmarks, Close).
func (s *Store) Flush() {
	for {
		s.mu.Lock()
		pending := len(s.queue) > 0
		for _, b := range s.blocks {
			if !b.written {
				pending = true
				break
			}
		}
		s.mu.Unlock()
		if !pending {
			return
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
		sleepBriefly()
	}
}

// Close stops the writer after it has written what is queued, and closes the segment files.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.wake)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, sg := range s.segs {
		errs = append(errs, sg.close())
	}
	errs = append(errs, s.lock.Close()) // releases the flock
	return errors.Join(errs...)
}

// Archived is a session from before a restart that had pinned steps: their records, oldest first.
type Archived struct {
	Session string
	Owner   string
	Steps   []Record
}

// Archived lists the sessions kept from before a restart.
func (s *Store) Archived() []Archived {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Archived
	for id, steps := range s.archived {
		a := Archived{Session: id}
		for _, m := range steps {
			a.Steps = append(a.Steps, m.rec)
			a.Owner = m.rec.Owner
		}
		slices.SortFunc(a.Steps, func(x, y Record) int { return x.Step.N - y.Step.N })
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y Archived) int { return strings.Compare(x.Session, y.Session) })
	return out
}

// recover rebuilds the store at Open: the blocks from the segments, the manifests of sessions with a
// pinned step (kept as archived), and sweeps everything else.
func (s *Store) recover() error {
	if err := s.scanSegments(); err != nil {
		return err
	}
	root := filepath.Join(s.dir, "manifests")
	dirs, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("snapstore: %w", err)
	}
	for _, d := range dirs {
		dir := filepath.Join(root, d.Name())
		files, _ := os.ReadDir(dir)
		var ms []*manifest
		pinned := false
		for _, f := range files {
			if !strings.HasSuffix(f.Name(), ".json") {
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, f.Name()))
			var mf manifestFile
			var plain []byte
			if err == nil {
				plain, err = s.dec.DecodeAll(data, nil)
			}
			if err == nil {
				err = json.Unmarshal(plain, &mf)
			}
			if err != nil || mf.Snap == nil {
				s.log.Warn("snapshot manifest unreadable, dropped", "path", filepath.Join(dir, f.Name()), "err", err)
				continue
			}
			mf.Step.Pinned = mf.Pinned
			m := &manifest{session: d.Name(), n: mf.Step.N, rec: mf.Record, snap: mf.Snap, added: mf.Added, state: api.SnapshotStored, size: int64(len(data))}
			m.uniq = slices.Compact(slices.Sorted(slices.Values(m.snap.Blocks)))
			pinned = pinned || mf.Pinned
			ms = append(ms, m)
		}
		if !pinned {
			os.RemoveAll(dir)
			continue
		}
		ss := &sessionState{steps: map[int]*manifest{}, refs: map[tier.BlockID]int32{}}
		s.archived[d.Name()] = map[int]*manifest{}
		for _, m := range ms {
			if !m.rec.Step.Pinned {
				os.Remove(s.manifestPath(m.session, m.n))
				continue
			}
			s.archived[d.Name()][m.n] = m
			for _, id := range m.uniq {
				b := s.blocks[id]
				if b == nil {
					m.state, m.reason = api.SnapshotCorrupt, fmt.Sprintf("block %d is missing from the store", id)
					continue
				}
				if ss.refs[id]++; ss.refs[id] == 1 {
					b.sessions++
					ss.bytes += int64(b.rlen)
				}
			}
		}
		// Archived sessions hold their blocks under the same id, so a fork's Copy shares them.
		ss.steps = s.archived[d.Name()]
		s.sessions[d.Name()] = ss
	}
	for id, b := range s.blocks {
		s.maybeFreeLocked(id, b)
	}
	s.sweepSegmentsLocked()
	return nil
}

func sleepBriefly() { time.Sleep(time.Millisecond) }
