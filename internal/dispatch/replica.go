package dispatch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/snapstore"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Session replicas (docs/cluster.md): a fleet host copies each committed step's snapshot to a shared
// store (a Replicator, internal/cluster), and another host brings the session back from it, under
// the same id, when the first one dies (Import). The dispatcher only reports commits and ends; what
// is sent, where, and when is the Replicator's.

// Replicator is told of every session step whose snapshot was committed to the store and of every
// session that ended. Both are called holding the session (between its requests), so they must only
// queue work: the step's answer has been sent, but the session's next call waits for them.
type Replicator interface {
	// Committed receives a committed step; it must call c.Release when done with its blocks.
	Committed(c *Committed)
	// Ended says that the session was closed (by its client, its TTL or its sandbox dying).
	Ended(session string)
}

// SetReplicator makes r receive the commits and ends of every session from now on; nil stops it.
// Set it before sessions start: one that ran steps before has only its later ones replicated.
func (d *Dispatcher) SetReplicator(r Replicator) {
	if r == nil {
		d.replicator.Store(nil)
		return
	}
	d.replicator.Store(&r)
}

// HasSnapshots reports whether the dispatcher keeps snapshots (a store is configured), which
// replication needs.
func (d *Dispatcher) HasSnapshots() bool { return d.store != nil }

// SessionMeta is what bringing a session back on another host needs besides its snapshot: who owns
// it and the terms it was started with (its network policy as asked for, recompiled there against
// that host's ceiling, which a fleet shares; secrets are resolved there, never copied).
type SessionMeta struct {
	Owner      string             `json:"owner"`
	Auto       bool               `json:"auto,omitempty"`
	TTLSeconds int                `json:"ttl_s"`
	Limits     api.Limits         `json:"limits"` // as requested
	Packages   []string           `json:"packages,omitempty"`
	Network    *api.NetworkPolicy `json:"network,omitempty"`
	Task       string             `json:"task,omitempty"`
	Intent     *api.Intent        `json:"intent,omitempty"`
	CreatedAt  string             `json:"created_at"`
	Reason     string             `json:"reason,omitempty"`
	Replayable bool               `json:"replayable,omitempty"`
	Stay       string             `json:"stay,omitempty"`
}

// Committed is one committed step as a Replicator gets it: the snapshot, the session's terms and its
// step list, with the snapshot's blocks held in the store until Release.
type Committed struct {
	Session string
	Step    int
	Snap    *tier.Snapshot
	Meta    SessionMeta
	// Steps is the session's step log as listed at the commit; Current the step its state is at.
	Steps   []api.Step
	Current int

	hold *snapstore.Tx
	get  func(dst []byte, id tier.BlockID) ([]byte, error)
}

// Block appends the bytes of one of Snap's blocks to dst.
func (c *Committed) Block(dst []byte, id tier.BlockID) ([]byte, error) { return c.get(dst, id) }

// Release lets the store free the snapshot's blocks once nothing else holds them. Releasing twice
// is harmless.
func (c *Committed) Release() {
	if c.hold != nil {
		c.hold.Abort()
	}
}

// replicate tells the replicator, if any, that step n's snapshot snap was committed. Holds mu.
func (s *Session) replicate(n int, snap *tier.Snapshot) {
	r := s.d.replicator.Load()
	if r == nil || snap == nil || s.d.store == nil {
		return
	}
	hold := s.d.store.Begin()
	if !hold.Hold(snap.Blocks) {
		hold.Abort() // retention freed some already: a later step is replicated instead
		return
	}
	list := s.Steps()
	s.meta.Lock()
	meta := SessionMeta{Owner: s.owner, Auto: s.auto, TTLSeconds: int(s.ttl / time.Second), Limits: s.requested,
		Packages: s.packages, Network: s.netSpec.network, Task: s.netSpec.task, Intent: s.netSpec.intent,
		CreatedAt: s.created.UTC().Format(time.RFC3339Nano), Reason: s.reason, Replayable: s.replayable, Stay: s.stay}
	s.meta.Unlock()
	(*r).Committed(&Committed{Session: s.id, Step: n, Snap: snap, Meta: meta, Steps: list.Steps, Current: list.Current,
		hold: hold, get: s.d.store.Get})
}

// replicateCopy reports step n, whose manifest Copy made from another step's, to the replicator.
func (s *Session) replicateCopy(n int) {
	if s.d.replicator.Load() == nil {
		return
	}
	if snap, _, err := s.d.store.Load(s.id, n); err == nil {
		s.replicate(n, snap)
	}
}

// replicateEnd tells the replicator that the session ended.
func (s *Session) replicateEnd() {
	if r := s.d.replicator.Load(); r != nil {
		(*r).Ended(s.id)
	}
}

// netSource is what a session's network policy was compiled from, kept for its replica.
type netSource struct {
	network *api.NetworkPolicy
	task    string
	intent  *api.Intent
}

// Import is a session to bring back from a replica of its snapshot (another host's).
type Import struct {
	// Session is its id, kept.
	Session string
	Meta    SessionMeta
	// Snap is the snapshot of step Step; Blocks reads the block ids it names.
	Snap   *tier.Snapshot
	Blocks tier.Blocks
	Step   int
	// Steps and Current are the step log of the replica; the restore is appended to it.
	Steps   []api.Step
	Current int
	// From is the host the session was on; Lost is how many steps ran there after Step (their
	// state is gone).
	From string
	Lost int
	// Claim is called once the sandbox is restored, before the session is served: an error (another
	// host restored it first) discards the sandbox and is returned.
	Claim func() error
}

// Import brings a session back under its own id in the state of im.Snap: a new sandbox on the
// snapshot's tier with the session's limits and network policy, the replica's step log, and a
// restore step appended, whose snapshot is taken in this host's store. The steps before it are
// listed but cannot be restored here (their snapshots stayed on the other host).
func (d *Dispatcher) Import(ctx context.Context, im Import) (*Session, error) {
	if im.Snap == nil || im.Blocks == nil {
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("import: no snapshot"))
	}
	d.mu.Lock()
	_, open := d.sessions[im.Session]
	d.mu.Unlock()
	if open {
		return nil, errdefs.With(errdefs.Conflict, fmt.Errorf("import: session %s is open on this host already", im.Session))
	}
	onHeavy := im.Snap.Tier == api.TierHeavy
	if onHeavy && d.heavy == nil {
		return nil, errdefs.With(errdefs.Unavailable, fmt.Errorf("import: session %s is on heavy, which this host does not have", im.Session))
	}
	rs, ok := d.engine(onHeavy).(tier.Restorer)
	if !ok {
		return nil, errdefs.With(errdefs.Unavailable, fmt.Errorf("import: the %s tier here cannot restore snapshots", im.Snap.Tier))
	}
	m := im.Meta
	ttl := time.Duration(m.TTLSeconds) * time.Second
	if ttl <= 0 || ttl > maxSessionTTL {
		ttl = d.cfg.SessionTTL
	}
	lim, err := d.engine(onHeavy).Limits(m.Limits)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	pol, err := d.compileNetwork(m.Network, m.Task, m.Intent)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	start := time.Now()
	created, err := time.Parse(time.RFC3339Nano, m.CreatedAt)
	if err != nil {
		created = start
	}
	s := &Session{id: im.Session, d: d, owner: m.Owner, auto: m.Auto, ttl: ttl, requested: m.Limits, packages: m.Packages,
		created: created, lastUsed: start, replayable: m.Replayable, stay: m.Stay, limits: lim,
		netSpec: netSource{network: m.Network, task: m.Task, intent: m.Intent},
		reason:  fmt.Sprintf("restored from step %d of its replica after its host %s died", im.Step, im.From)}
	if m.Reason != "" {
		s.reason = m.Reason + "; " + s.reason
	}
	s.guard = d.newGuard(pol, m.Owner, s.id)
	if s.place, err = d.reserve(Tenant{ID: m.Owner}, onHeavy, lim.MemoryLimitMB); err != nil {
		return nil, err
	}
	sb, err := rs.Restore(s.withGuard(ctx), im.Snap, im.Blocks, m.Limits)
	if err != nil {
		s.place.release()
		return nil, fmt.Errorf("import: restoring step %d: %w", im.Step, err)
	}
	if im.Claim != nil {
		if err := im.Claim(); err != nil {
			sb.Close(context.Background())
			s.place.release()
			return nil, err
		}
	}
	s.sb = sb
	if onHeavy {
		s.tier.Store(tierHeavy)
	}
	lost := fmt.Sprintf("its snapshot stayed on host %s, which died; the session was restored from step %d there", im.From, im.Step)
	for _, st := range im.Steps {
		st.Snapshot, st.Abandoned, st.Pinned = api.StepSnapshot{}, false, false
		s.steps.steps = append(s.steps.steps, &stepRec{step: st, state: api.SnapshotMissing, reason: lost, foreign: lost})
	}
	// The log's numbers index it: a replica whose list does not match is not used.
	for i, r := range s.steps.steps {
		if r.step.N != i {
			s.steps.steps = nil
			break
		}
	}
	s.steps.current = -1
	if im.Current >= 0 && im.Current < len(s.steps.steps) {
		s.steps.current = im.Current
	}
	s.mu.Lock() // held until the restore step's snapshot is taken
	s.steps.mu.Lock()
	s.rebuildHistoryLocked(s.steps.current)
	s.steps.mu.Unlock()
	rec := newStep(api.StepRestore, im.Snap.Tier, start, nil)
	rec.step.Target, rec.step.RestoredFrom, rec.step.Lost = im.Step, im.From, im.Lost
	n := s.steps.appendStep(rec) // its parent is the replica's current step
	d.mu.Lock()
	d.sessions[s.id] = s
	d.mu.Unlock()
	d.log.Info("session restored from a replica", "id", s.id, "from", im.From, "step", im.Step, "lost", im.Lost,
		"tier", im.Snap.Tier, "ms", time.Since(start).Milliseconds())
	s.stepDone(n)
	return s, nil
}
