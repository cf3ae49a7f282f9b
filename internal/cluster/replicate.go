package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Session replication (docs/cluster.md, "Restoring a dead host's sessions"): after each committed
// step, this host copies the step's snapshot into JetStream, asynchronously and never holding the
// step up:
//
//   - blocks go to the stream BlocksStream, one message per block on
//     agentbox.blocks.<session>.<sha256 of the block>, zstd-compressed, at most one per subject. A
//     block already sent for the session is not sent again (dedup across steps); blocks are scoped
//     by session so that closing one deletes its blocks with a single purge, with no reference
//     counting between hosts (the cost: the pages two sessions share are stored once each).
//   - the head, written last, is the object <session> in the object store HeadsBucket: the step,
//     the tier's opaque state, its block ids paired with their SHA-256, what the session was
//     started with (dispatch.SessionMeta) and its step list. A reader never sees a head whose
//     blocks are missing, since they were acknowledged before it was put.
//   - a marker in the key-value bucket MarksBucket (<session> → the last committed step), published
//     without waiting at each commit, so that a restore knows how many steps were lost.
//
// The snapshot store's block ids and HMACs are this host's own (its key never leaves it): a block is
// named in the fleet by its plain SHA-256, which the restoring host checks again on every block it
// reads (re-hash on import), and the restored sandbox's first snapshot puts the blocks in that host's
// store under its own key.
const (
	BlocksStream  = "agentbox_blocks"
	HeadsBucket   = "agentbox_snapshots"
	MarksBucket   = "agentbox_replicas"
	blocksSubject = "agentbox.blocks"
)

// headVersion is the head format; a restore refuses another.
const headVersion = 1

// head is a session's latest replicated step.
type head struct {
	Version int      `json:"v"`
	Session string   `json:"session"`
	Host    string   `json:"host"`
	Step    int      `json:"step"`
	At      string   `json:"at"`
	Tier    api.Tier `json:"tier"`
	State   []byte   `json:"state"`
	// IDs are the snapshot's distinct block ids (the writing host's), Sums their SHA-256 (32 bytes
	// each, in order): block IDs[i] is the message agentbox.blocks.<session>.<hex(Sums[i])>.
	IDs       []tier.BlockID       `json:"ids"`
	Sums      []byte               `json:"sums"`
	Variables []api.Variable       `json:"variables,omitempty"`
	Files     []api.FileInfo       `json:"files,omitempty"`
	OpenFiles []string             `json:"open_files,omitempty"`
	Meta      dispatch.SessionMeta `json:"meta"`
	Steps     []api.Step           `json:"steps"`
	Current   int                  `json:"current"`
}

// mark is a session's entry in MarksBucket.
type mark struct {
	Step int    `json:"step"`
	Host string `json:"host"`
}

// ReplicationStats counts what this host's replication did since it started.
type ReplicationStats struct {
	// Steps were replicated (their head written); Coalesced were replaced in the queue by a later
	// step of the same session before they were sent; Dropped found the queue full; Failed could
	// not be written (NATS unavailable, a block too large); Skipped were of a tier not replicated
	// (heavy). In all four the head stays at the session's last replicated step.
	Steps, Coalesced, Dropped, Failed, Skipped int64
	// Blocks and Bytes are the blocks sent and their compressed bytes (heads not included);
	// HeadBytes the heads' compressed bytes.
	Blocks, Bytes, HeadBytes int64
	// Pending is how many sessions have a step waiting to be sent now (the lag).
	Pending int
	// Ends are the ended sessions whose replica deletion was handled (deleted, or left to the host
	// that restored the session).
	Ends int64
}

// replicator sends committed steps to JetStream from one goroutine, so that a session's steps and
// its deletion reach NATS in order.
type replicator struct {
	n       *Node
	log     *slog.Logger
	js      jetstream.JetStream
	blocks  jetstream.Stream
	heads   jetstream.ObjectStore
	marks   jetstream.KeyValue
	maxWait int // queue size, in sessions
	enc     *zstd.Encoder
	dec     *zstd.Decoder

	mu      sync.Mutex
	pending map[string]*dispatch.Committed // the newest unsent step per session; guarded by mu
	ended   map[string]bool                // sessions whose replica is to be deleted; guarded by mu
	order   []string                       // sessions in pending or ended, oldest first; guarded by mu
	stopped bool                           // guarded by mu
	// sent are, per session, the blocks this host has in the stream: local id → SHA-256. Only the
	// worker goroutine touches it.
	sent map[string]map[tier.BlockID][32]byte

	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	steps, coalesced, dropped, failed, skipped, nblocks, nbytes, headBytes, ends atomic.Int64
}

// startReplication creates the stream and buckets and starts the sending goroutine.
func (n *Node) startReplication(ctx context.Context) error {
	js, err := jetstream.New(n.nc, jetstream.WithPublishAsyncMaxPending(256))
	if err != nil {
		return fmt.Errorf("cluster: jetstream: %w", err)
	}
	r := &replicator{n: n, log: n.log, js: js, maxWait: n.cfg.ReplicationQueue, pending: map[string]*dispatch.Committed{},
		ended: map[string]bool{}, sent: map[string]map[tier.BlockID][32]byte{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if r.blocks, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: BlocksStream, Subjects: []string{blocksSubject + ".>"},
		MaxMsgsPerSubject: 1, Storage: jetstream.FileStorage, Replicas: n.cfg.Replicas, AllowDirect: true, Discard: jetstream.DiscardOld,
		Description: "agentbox session snapshot blocks (agentbox.blocks.<session>.<sha256>), zstd"}); err != nil {
		return fmt.Errorf("cluster: snapshot blocks stream: %w", err)
	}
	if r.heads, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: HeadsBucket, Replicas: n.cfg.Replicas,
		Storage: jetstream.FileStorage, Description: "agentbox session heads (session → its last replicated step)"}); err != nil {
		return fmt.Errorf("cluster: snapshot heads bucket: %w", err)
	}
	if r.marks, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: MarksBucket, Replicas: n.cfg.Replicas,
		Storage: jetstream.FileStorage, Description: "agentbox sessions' last committed step (session → step)"}); err != nil {
		return fmt.Errorf("cluster: replication marks bucket: %w", err)
	}
	if r.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1)); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if r.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(64<<20)); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if _, err := n.nc.Subscribe(controlSubject+"."+n.cfg.HostID+".restore", n.onRestore); err != nil {
		return fmt.Errorf("cluster: restore subject: %w", err)
	}
	n.repl = r
	go r.run()
	n.cfg.Replicate.SetReplicator(r)
	return nil
}

// Committed queues c (dispatch.Replicator). A session's older queued step is replaced by c; a full
// queue refuses c, leaving the session's head where it is.
func (r *replicator) Committed(c *dispatch.Committed) {
	// The marker goes out at once, without waiting for an answer: should this host die before the
	// step is sent, the restore knows it is lost.
	b, _ := json.Marshal(mark{Step: c.Step, Host: r.n.cfg.HostID})
	if err := r.n.nc.Publish("$KV."+MarksBucket+"."+c.Session, b); err != nil {
		r.log.Debug("cluster: replication marker", "session", c.Session, "err", err)
	}
	if c.Snap == nil || c.Snap.Tier != api.TierNano {
		// Heavy snapshots (a gVisor checkpoint: tens of MiB and ~20,000 blocks a step) are not
		// replicated yet: a session that moved to heavy keeps its replica at its last nano step,
		// and the restore reports the heavy steps lost.
		c.Release()
		r.skipped.Add(1)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped || r.ended[c.Session] {
		c.Release()
		return
	}
	if old := r.pending[c.Session]; old != nil {
		old.Release()
		r.pending[c.Session] = c
		r.coalesced.Add(1)
		return
	}
	if len(r.pending) >= r.maxWait {
		c.Release()
		r.dropped.Add(1)
		r.log.Warn("cluster: replication queue full; the session's replica stays at its last sent step", "session", c.Session, "step", c.Step, "queue", r.maxWait)
		return
	}
	r.pending[c.Session] = c
	r.order = append(r.order, c.Session)
	r.poke()
}

// Ended queues the deletion of the session's replica (dispatch.Replicator).
func (r *replicator) Ended(session string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	if c := r.pending[session]; c != nil {
		c.Release()
		delete(r.pending, session)
	} else {
		r.order = append(r.order, session)
	}
	r.ended[session] = true
	r.poke()
}

func (r *replicator) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// halt stops the goroutine, dropping what is queued (the host is leaving or dead).
func (r *replicator) halt() {
	r.n.cfg.Replicate.SetReplicator(nil)
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.stopped = true
	for _, c := range r.pending {
		c.Release()
	}
	clear(r.pending)
	r.mu.Unlock()
	close(r.stop)
	<-r.done
}

func (r *replicator) stats() ReplicationStats {
	r.mu.Lock()
	pending := len(r.pending)
	r.mu.Unlock()
	return ReplicationStats{Steps: r.steps.Load(), Coalesced: r.coalesced.Load(), Dropped: r.dropped.Load(), Failed: r.failed.Load(), Skipped: r.skipped.Load(),
		Blocks: r.nblocks.Load(), Bytes: r.nbytes.Load(), HeadBytes: r.headBytes.Load(), Pending: pending, Ends: r.ends.Load()}
}

// next takes the oldest queued work: a step to send or a session to delete.
func (r *replicator) next() (c *dispatch.Committed, deleted string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.order) > 0 {
		id := r.order[0]
		r.order = r.order[1:]
		if c := r.pending[id]; c != nil {
			delete(r.pending, id)
			return c, "", true
		}
		if r.ended[id] {
			delete(r.ended, id)
			return nil, id, true
		}
	}
	return nil, "", false
}

func (r *replicator) run() {
	defer close(r.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		c, deleted, ok := r.next()
		switch {
		case c != nil:
			start := time.Now()
			err := r.send(ctx, c)
			c.Release()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				r.failed.Add(1)
				r.log.Warn("cluster: replicating a session step; its replica stays at its last sent step", "session", c.Session, "step", c.Step, "err", err)
				continue
			}
			r.steps.Add(1)
			r.log.Debug("cluster: step replicated", "session", c.Session, "step", c.Step, "ms", time.Since(start).Milliseconds())
		case deleted != "":
			if err := r.remove(ctx, deleted); err != nil && ctx.Err() == nil {
				r.log.Warn("cluster: deleting a closed session's replica", "session", deleted, "err", err)
			}
			r.ends.Add(1)
		}
		if ok {
			continue
		}
		select {
		case <-r.stop:
			return
		case <-r.wake:
		}
	}
}

func blockSubject(session string, sum [32]byte) string {
	return blocksSubject + "." + session + "." + hex.EncodeToString(sum[:])
}

// send writes c's new blocks, then its head, then purges the blocks of the session that its head no
// longer names.
func (r *replicator) send(ctx context.Context, c *dispatch.Committed) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if !keyRE.MatchString(c.Session) {
		return fmt.Errorf("session id %q cannot name a subject", c.Session)
	}
	sent := r.sent[c.Session]
	if sent == nil {
		sent = map[tier.BlockID][32]byte{}
	}
	h := head{Version: headVersion, Session: c.Session, Host: r.n.cfg.HostID, Step: c.Step, At: time.Now().UTC().Format(time.RFC3339Nano),
		Tier: c.Snap.Tier, State: c.Snap.State, Variables: c.Snap.Variables, Files: c.Snap.Files, OpenFiles: c.Snap.OpenFiles,
		Meta: c.Meta, Steps: c.Steps, Current: c.Current}
	uses := map[tier.BlockID]bool{}
	var futures []jetstream.PubAckFuture
	acked := 0 // futures[:acked] are acknowledged
	limit := r.n.nc.MaxPayload() - 1024
	var buf []byte
	var err error
	for _, id := range c.Snap.Blocks {
		if id == 0 || uses[id] {
			continue
		}
		uses[id] = true
		sum, ok := sent[id]
		if !ok {
			if buf, err = c.Block(buf[:0], id); err != nil {
				return fmt.Errorf("reading block %d: %w", id, err)
			}
			sum = sha256.Sum256(buf)
			data := r.enc.EncodeAll(buf, nil)
			if int64(len(data)) > limit {
				return fmt.Errorf("block %d is %d bytes compressed, more than NATS's max_payload allows", id, len(data))
			}
			// At most inFlight blocks unacknowledged: past its own limit the client refuses to
			// publish rather than wait, which a slow NATS would turn into failed steps.
			for ; len(futures)-acked >= inFlight; acked++ {
				if err := awaitAck(ctx, futures[acked]); err != nil {
					return err
				}
			}
			f, err := r.js.PublishAsync(blockSubject(c.Session, sum), data)
			if err != nil {
				return fmt.Errorf("sending block %d: %w", id, err)
			}
			futures = append(futures, f)
			r.nblocks.Add(1)
			r.nbytes.Add(int64(len(data)))
		}
		h.IDs = append(h.IDs, id)
		h.Sums = append(h.Sums, sum[:]...)
	}
	for _, f := range futures[acked:] {
		if err := awaitAck(ctx, f); err != nil {
			return err
		}
	}
	for i, id := range h.IDs {
		sent[id] = [32]byte(h.Sums[i*32 : i*32+32])
	}
	r.sent[c.Session] = sent
	if other := r.movedTo(ctx, c.Session); other != "" {
		return fmt.Errorf("the session's record names host %s, which restored it (this host was taken for dead): its replica is that host's now", other)
	}
	plain, err := json.Marshal(h)
	if err != nil {
		return err
	}
	data := r.enc.EncodeAll(plain, nil)
	if _, err := r.heads.Put(ctx, jetstream.ObjectMeta{Name: c.Session, Metadata: map[string]string{
		"tier": string(h.Tier), "step": strconv.Itoa(h.Step), "host": h.Host}}, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("writing the head: %w", err)
	}
	r.headBytes.Add(int64(len(data)))
	// The blocks no step of the session needs any longer (pages overwritten since) go, a purge
	// each, fetchers at a time: one after the other they would hold the next step up.
	var stale []string
	for id, sum := range sent {
		if !uses[id] {
			delete(sent, id)
			stale = append(stale, blockSubject(c.Session, sum))
		}
	}
	var wg sync.WaitGroup
	work := make(chan string)
	for range min(fetchers, len(stale)) {
		wg.Go(func() {
			for subj := range work {
				if err := r.blocks.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
					r.log.Debug("cluster: purging a block no head names", "session", c.Session, "err", err)
				}
			}
		})
	}
	for _, subj := range stale {
		work <- subj
	}
	close(work)
	wg.Wait()
	return nil
}

// movedTo is the host session's record names when that is not this one: a host taken for dead
// (its heartbeats late) whose session another host restored must neither overwrite nor delete the
// replica, which is the other host's now. No record (not yet written, or deleted) is not a move.
func (r *replicator) movedTo(ctx context.Context, session string) string {
	e, err := r.n.getLeader(ctx, SessionsBucket, session) // a replica behind would miss a move
	if err != nil {
		return ""
	}
	var rec sessionRecord
	if json.Unmarshal(e.Value(), &rec) != nil || rec.Host == r.n.cfg.HostID {
		return ""
	}
	return rec.Host
}

// inFlight is how many blocks are sent before the first of them must be acknowledged; below the
// client's own limit (WithPublishAsyncMaxPending).
const inFlight = 128

// awaitAck waits for f's acknowledgement (once: its channels deliver it once).
func awaitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return fmt.Errorf("sending a block: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("sending blocks: %w", ctx.Err())
	}
}

// remove deletes a closed session's replica: its blocks (one purge of its subjects), head and marker.
func (r *replicator) remove(ctx context.Context, session string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	delete(r.sent, session)
	if !keyRE.MatchString(session) {
		return nil
	}
	if other := r.movedTo(ctx, session); other != "" {
		return nil // restored by another host, whose replica it is now
	}
	var errs []error
	if err := r.heads.Delete(ctx, session); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		errs = append(errs, fmt.Errorf("head: %w", err))
	}
	if err := r.blocks.Purge(ctx, jetstream.WithPurgeSubject(blocksSubject+"."+session+".>")); err != nil {
		errs = append(errs, fmt.Errorf("blocks: %w", err))
	}
	if err := r.marks.Purge(ctx, session); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		errs = append(errs, fmt.Errorf("marker: %w", err))
	}
	return errors.Join(errs...)
}

// ReplicationStats reports this host's replication counters; the zero value without replication.
func (n *Node) ReplicationStats() ReplicationStats {
	if n.repl == nil {
		return ReplicationStats{}
	}
	return n.repl.stats()
}

var _ dispatch.Replicator = (*replicator)(nil)

// ReplicationCollector exports ReplicationStats as Prometheus metrics (agentbox_replication_*).
func (n *Node) ReplicationCollector() prometheus.Collector { return replicationCollector{n} }

type replicationCollector struct{ n *Node }

var (
	replStepsDesc   = prometheus.NewDesc("agentbox_replication_steps_total", "Session steps replicated to the fleet's store, by outcome (sent, coalesced, dropped, failed, skipped).", []string{"outcome"}, nil)
	replBytesDesc   = prometheus.NewDesc("agentbox_replication_bytes_total", "Compressed bytes sent to the fleet's store, by kind (block, head).", []string{"kind"}, nil)
	replBlocksDesc  = prometheus.NewDesc("agentbox_replication_blocks_total", "Snapshot blocks sent to the fleet's store.", nil, nil)
	replPendingDesc = prometheus.NewDesc("agentbox_replication_pending", "Sessions with a committed step not yet sent (the replication lag).", nil, nil)
)

func (c replicationCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- replStepsDesc
	ch <- replBytesDesc
	ch <- replBlocksDesc
	ch <- replPendingDesc
}

func (c replicationCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.n.ReplicationStats()
	for outcome, v := range map[string]int64{"sent": st.Steps, "coalesced": st.Coalesced, "dropped": st.Dropped, "failed": st.Failed, "skipped": st.Skipped} {
		ch <- prometheus.MustNewConstMetric(replStepsDesc, prometheus.CounterValue, float64(v), outcome)
	}
	ch <- prometheus.MustNewConstMetric(replBytesDesc, prometheus.CounterValue, float64(st.Bytes), "block")
	ch <- prometheus.MustNewConstMetric(replBytesDesc, prometheus.CounterValue, float64(st.HeadBytes), "head")
	ch <- prometheus.MustNewConstMetric(replBlocksDesc, prometheus.CounterValue, float64(st.Blocks))
	ch <- prometheus.MustNewConstMetric(replPendingDesc, prometheus.GaugeValue, float64(st.Pending))
}
