package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// HeaderRestoredFrom is on the answer to a request whose session was restored from its replica
// because its host had died: "<dead host>; step=<n>; lost=<steps>" (docs/cluster.md).
const HeaderRestoredFrom = "X-Agentbox-Restored-From"

// restoreTimeout bounds one restore: placing it, reading the head and blocks, restoring the sandbox.
const restoreTimeout = time.Minute

// fetchers is how many blocks a restore reads from JetStream at once.
const fetchers = 16

type restoreRequest struct {
	Session string `json:"session"`
	From    string `json:"from"`  // the dead host the record names
	Token   string `json:"token"` // the placement's reservation
}

type restoreReply struct {
	Host string `json:"host"` // the host serving the session now
	URL  string `json:"url"`
	Step int    `json:"step"`
	Lost int    `json:"lost"`
	// Restored is false when another host had restored it first.
	Restored bool   `json:"restored"`
	Error    string `json:"error,omitempty"`
	Class    string `json:"class,omitempty"` // the error's errdefs class
}

// restoreFlight is one restore of a session this host is placing; requests for the session that
// come meanwhile wait for it.
type restoreFlight struct {
	done chan struct{}
	rep  restoreReply
	err  error
}

// restoreAndServe brings session id, whose host dead has left the fleet, back on a live host from
// its replica and serves r there, saying so in HeaderRestoredFrom. Without a replica the answer is
// the 404 with the reason.
func (n *Node) restoreAndServe(next http.Handler, w http.ResponseWriter, r *http.Request, fail FailFunc, id, dead string) {
	rep, err := n.restoreOnce(r.Context(), id, dead)
	if err != nil {
		fail(w, r, err)
		return
	}
	if rep.Restored {
		w.Header().Set(HeaderRestoredFrom, fmt.Sprintf("%s; step=%d; lost=%d", dead, rep.Step, rep.Lost))
	}
	if rep.Host == n.cfg.HostID {
		n.serveLocal(next, w, r, "")
		return
	}
	n.forward(w, r, rep.Host, rep.URL, "", fail)
}

// restoreOnce restores session id once however many requests ask for it here at the same time.
// Between hosts, the compare-and-set on the session's record picks one winner.
func (n *Node) restoreOnce(ctx context.Context, id, dead string) (restoreReply, error) {
	n.mu.Lock()
	f := n.flights[id]
	leader := f == nil
	if leader {
		f = &restoreFlight{done: make(chan struct{})}
		n.flights[id] = f
	}
	n.mu.Unlock()
	if leader {
		// Not cut short by this client leaving: the others may be waiting for it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), restoreTimeout)
		f.rep, f.err = n.restore(rctx, id, dead)
		cancel()
		n.mu.Lock()
		delete(n.flights, id)
		n.mu.Unlock()
		close(f.done)
	}
	select {
	case <-f.done:
		return f.rep, f.err
	case <-ctx.Done():
		return restoreReply{}, ctx.Err()
	}
}

// restore places the restore of session id on a host with room and asks it to restore.
func (n *Node) restore(ctx context.Context, id, dead string) (restoreReply, error) {
	gone := func(why string) error {
		return errdefs.With(errdefs.NotFound, fmt.Errorf("session %s is gone: %s; %s", id, n.goneReason(dead), why))
	}
	// Another host may have restored it already: the record says where.
	if rec, _, err := n.sessionEntry(ctx, id); err != nil {
		return restoreReply{}, err
	} else if rec.Host != dead {
		if h, ok := n.liveHost(ctx, rec.Host); ok || rec.Host == n.cfg.HostID {
			n.cacheOwner(id, rec.Host)
			return restoreReply{Host: rec.Host, URL: h.URL}, nil
		}
		dead = rec.Host
	}
	info, err := n.repl.heads.GetInfo(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return restoreReply{}, gone("the fleet's store has no replica of its snapshots (its host did not replicate sessions, or had not sent its first step)")
	}
	if err != nil {
		return restoreReply{}, errdefs.With(errdefs.Unavailable, fmt.Errorf("session %s: reading its replica: %w", id, err))
	}
	t, ok := placementTier(api.Tier(info.Metadata["tier"]), nil)
	if !ok {
		return restoreReply{}, gone(fmt.Sprintf("its replica is of tier %q", info.Metadata["tier"]))
	}
	p, err := n.place(ctx, kindSession, t, nil)
	if err != nil {
		return restoreReply{}, fmt.Errorf("restoring session %s: %w", id, err)
	}
	req := restoreRequest{Session: id, From: dead, Token: p.Token}
	var rep restoreReply
	if p.Host == n.cfg.HostID {
		rep = n.restoreHere(ctx, req)
	} else {
		b, _ := json.Marshal(req)
		msg, err := n.nc.RequestWithContext(ctx, controlSubject+"."+p.Host+".restore", b)
		if err != nil {
			return restoreReply{}, errdefs.With(errdefs.Unavailable, fmt.Errorf("restoring session %s on host %s: %w", id, p.Host, err))
		}
		if err := json.Unmarshal(msg.Data, &rep); err != nil {
			return restoreReply{}, fmt.Errorf("restoring session %s: host %s's answer: %w", id, p.Host, err)
		}
	}
	if rep.Error != "" {
		return restoreReply{}, errdefs.With(classNamed(rep.Class), fmt.Errorf("restoring session %s on host %s: %s", id, p.Host, rep.Error))
	}
	n.cacheOwner(id, rep.Host)
	return rep, nil
}

// onRestore serves a restore placed on this host (restoreRequest), in its own goroutine: a restore
// takes a while and others may come meanwhile.
func (n *Node) onRestore(m *nats.Msg) {
	var req restoreRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
		defer cancel()
		b, _ := json.Marshal(n.restoreHere(ctx, req))
		m.Respond(b)
	}()
}

// restoreHere restores req.Session on this host from its replica, unless another host did first;
// the reply names the host serving it.
func (n *Node) restoreHere(ctx context.Context, req restoreRequest) restoreReply {
	defer n.claim(req.Token)
	fail := func(err error) restoreReply {
		n.log.Warn("cluster: restoring a session", "session", req.Session, "from", req.From, "err", err)
		return restoreReply{Error: err.Error(), Class: errdefs.ClassOf(err).Name()}
	}
	if n.cfg.Replicate == nil || n.repl == nil {
		return fail(errdefs.With(errdefs.Unavailable, errors.New("this host does not restore sessions (serve without --replicate-sessions)")))
	}
	rec, rev, err := n.sessionEntry(ctx, req.Session)
	if err != nil {
		return fail(err)
	}
	if rec.Host != req.From || rec.Host == n.cfg.HostID {
		// Restored by another host first, or this host is the one taken for dead: it is alive and
		// serves the session it has (or answers 404 for one it no longer has) as it is.
		return n.winner(ctx, rec.Host)
	}
	h, err := n.readHead(ctx, req.Session)
	if err != nil {
		return fail(err)
	}
	lost := 0
	if e, err := n.repl.marks.Get(ctx, req.Session); err == nil {
		var mk mark
		if json.Unmarshal(e.Value(), &mk) == nil && mk.Step > h.Step {
			lost = mk.Step - h.Step
		}
	}
	start := time.Now()
	blocks, err := n.fetchBlocks(ctx, h)
	if err != nil {
		return fail(err)
	}
	fetched := time.Since(start)
	claimed := false
	_, err = n.cfg.Replicate.Import(ctx, dispatch.Import{Session: req.Session, Meta: h.Meta,
		Snap:   &tier.Snapshot{Tier: h.Tier, State: h.State, Blocks: h.IDs, Variables: h.Variables, Files: h.Files, OpenFiles: h.OpenFiles},
		Blocks: blocks, Step: h.Step, Steps: h.Steps, Current: h.Current, From: req.From, Lost: lost,
		Claim: func() error {
			rec.Host = n.cfg.HostID
			b, _ := json.Marshal(rec)
			if _, err := n.sess.Update(ctx, req.Session, b, rev); err != nil {
				return errdefs.With(errdefs.Conflict, fmt.Errorf("session %s was restored by another host meanwhile: %w", req.Session, err))
			}
			claimed = true
			return nil
		}})
	if err != nil {
		if !claimed {
			if now, _, rerr := n.sessionEntry(ctx, req.Session); rerr == nil && now.Host != req.From {
				return n.winner(ctx, now.Host)
			}
		}
		return fail(err)
	}
	n.cacheOwner(req.Session, n.cfg.HostID)
	n.log.Info("cluster: session restored from its replica", "session", req.Session, "from", req.From, "step", h.Step, "lost", lost,
		"blocks", len(h.IDs), "fetch_ms", fetched.Milliseconds(), "ms", time.Since(start).Milliseconds())
	return restoreReply{Host: n.cfg.HostID, URL: n.cfg.URL, Step: h.Step, Lost: lost, Restored: true}
}

// winner is the reply naming host, which restored the session first.
func (n *Node) winner(ctx context.Context, host string) restoreReply {
	if host == n.cfg.HostID {
		return restoreReply{Host: host, URL: n.cfg.URL}
	}
	h, ok := n.liveHost(ctx, host)
	if !ok {
		return restoreReply{Error: fmt.Sprintf("the session's record names host %s, which is not in the fleet", host), Class: errdefs.NotFound.Name()}
	}
	return restoreReply{Host: host, URL: h.URL}
}

// sessionEntry reads session id's record and its revision, for a compare-and-set.
func (n *Node) sessionEntry(ctx context.Context, id string) (sessionRecord, uint64, error) {
	e, err := n.getLeader(ctx, SessionsBucket, id) // its revision is compared and set: the latest
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return sessionRecord{}, 0, errdefs.With(errdefs.NotFound, fmt.Errorf("session %s: the fleet has no record of it", id))
	}
	if err != nil {
		return sessionRecord{}, 0, errdefs.With(errdefs.Unavailable, fmt.Errorf("looking up session %s's host: %w", id, err))
	}
	var rec sessionRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return sessionRecord{}, 0, fmt.Errorf("session %s's record: %w", id, err)
	}
	return rec, e.Revision(), nil
}

// readHead reads and decodes session id's head.
func (n *Node) readHead(ctx context.Context, id string) (*head, error) {
	data, err := n.repl.heads.GetBytes(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("session %s: the fleet's store has no replica of it", id))
	}
	if err != nil {
		return nil, errdefs.With(errdefs.Unavailable, fmt.Errorf("session %s: reading its replica: %w", id, err))
	}
	plain, err := n.repl.dec.DecodeAll(data, nil)
	if err != nil {
		return nil, fmt.Errorf("session %s: its replica's head: %w", id, err)
	}
	var h head
	if err := json.Unmarshal(plain, &h); err != nil {
		return nil, fmt.Errorf("session %s: its replica's head: %w", id, err)
	}
	if h.Version != headVersion || h.Session != id || len(h.Sums) != 32*len(h.IDs) {
		return nil, fmt.Errorf("session %s: its replica's head is of version %d for %q with %d ids and %d bytes of sums: unreadable here", id, h.Version, h.Session, len(h.IDs), len(h.Sums))
	}
	return &h, nil
}

// importedBlocks are a replica's blocks, by the id the writing host gave them, and found by their
// SHA-256 when put: the nano tier puts its start-up image to learn which ids it has in a store, and
// the replica's ids of those pages must come back. Not comparable (it holds maps), so that the nano
// tier's page cache, keyed by comparable stores, does not keep it after the restore.
type importedBlocks struct {
	mu    *sync.Mutex
	data  map[tier.BlockID][]byte   // guarded by mu
	bySum map[[32]byte]tier.BlockID // guarded by mu
	next  *tier.BlockID             // the next id for a block the replica does not have; guarded by mu
}

func newImportedBlocks(n int) importedBlocks {
	var next tier.BlockID
	return importedBlocks{mu: &sync.Mutex{}, data: make(map[tier.BlockID][]byte, n), bySum: make(map[[32]byte]tier.BlockID, n), next: &next}
}

func (b importedBlocks) add(id tier.BlockID, sum [32]byte, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.data[id], b.bySum[sum] = data, id
	*b.next = max(*b.next, id+1)
}

// Put returns the replica's id of data, or a new one.
func (b importedBlocks) Put(data []byte) (tier.BlockID, error) {
	sum := sha256.Sum256(data)
	b.mu.Lock()
	defer b.mu.Unlock()
	if id, ok := b.bySum[sum]; ok {
		return id, nil
	}
	id := *b.next
	*b.next++
	b.data[id], b.bySum[sum] = append([]byte(nil), data...), id
	return id, nil
}

func (b importedBlocks) Get(dst []byte, id tier.BlockID) ([]byte, error) {
	b.mu.Lock()
	data, ok := b.data[id]
	b.mu.Unlock()
	if !ok {
		return dst, fmt.Errorf("block %d is not in the replica: %w", id, tier.ErrCorrupt)
	}
	return append(dst, data...), nil
}

// fetchBlocks reads h's blocks: the session's subjects in one pass of an ordered consumer (a
// request per block would make a restore of 2,000 pages take seconds), then any it did not deliver
// one by one. Each block is checked against its SHA-256: a missing or altered one fails the restore.
func (n *Node) fetchBlocks(ctx context.Context, h *head) (importedBlocks, error) {
	out := newImportedBlocks(len(h.IDs))
	want := make(map[[32]byte][]int, len(h.IDs)) // sum → indices into h.IDs
	for i := range h.IDs {
		sum := [32]byte(h.Sums[i*32 : i*32+32])
		want[sum] = append(want[sum], i)
	}
	if err := n.streamBlocks(ctx, h, want, out); err != nil {
		n.log.Debug("cluster: reading a replica's blocks in one pass; reading them one by one", "session", h.Session, "err", err)
	}
	var rest []int
	for _, idx := range want {
		rest = append(rest, idx[0])
	}
	if err := n.getBlocks(ctx, h, rest, out); err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, tier.ErrCorrupt) {
			return importedBlocks{}, errdefs.With(errdefs.NotFound, fmt.Errorf("session %s's replica is incomplete: %w", h.Session, err))
		}
		return importedBlocks{}, errdefs.With(errdefs.Unavailable, fmt.Errorf("reading session %s's replica: %w", h.Session, err))
	}
	return out, nil
}

// checkBlock decodes a block's message and checks it is the block sum names.
func (n *Node) checkBlock(data []byte, sum [32]byte) ([]byte, error) {
	plain, err := n.repl.dec.DecodeAll(data, nil)
	if err != nil || sha256.Sum256(plain) != sum {
		return nil, fmt.Errorf("block %s fails its check (%v): %w", hex.EncodeToString(sum[:8]), err, tier.ErrCorrupt)
	}
	return plain, nil
}

// streamBlocks reads the session's block subjects once, keeping the blocks want names (and taking
// them out of want).
func (n *Node) streamBlocks(ctx context.Context, h *head, want map[[32]byte][]int, out importedBlocks) error {
	prefix := blocksSubject + "." + h.Session + "."
	cons, err := n.repl.js.OrderedConsumer(ctx, BlocksStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{prefix + ">"},
		DeliverPolicy: jetstream.DeliverAllPolicy}) // one message per subject (MaxMsgsPerSubject)
	if err != nil {
		return err
	}
	fetch := func(batch int) (jetstream.MessageBatch, error) {
		return cons.Fetch(batch, jetstream.FetchMaxWait(2*time.Second))
	}
	return n.readBlocks(ctx, fetch, prefix, h, want, out)
}

// readBlocks is streamBlocks' loop; fetch asks for at most batch messages.
func (n *Node) readBlocks(ctx context.Context, fetch func(batch int) (jetstream.MessageBatch, error), prefix string, h *head, want map[[32]byte][]int, out importedBlocks) error {
	size := min(len(want), 512)
	unanswered := 0
	for len(want) > 0 {
		// A batch asks for no more than remain: a fetch of more waits its whole MaxWait.
		batch, err := fetch(size)
		if err != nil {
			return err
		}
		got, pending := 0, uint64(1)
		for m := range batch.Messages() {
			got++
			if md, err := m.Metadata(); err == nil {
				pending = md.NumPending
			}
			raw, err := hex.DecodeString(strings.TrimPrefix(m.Subject(), prefix))
			if err != nil || len(raw) != 32 {
				continue
			}
			sum := [32]byte(raw)
			idx, ok := want[sum]
			if !ok {
				continue // a block of an older head not purged yet
			}
			plain, err := n.checkBlock(m.Data(), sum)
			if err != nil {
				return err
			}
			for _, i := range idx {
				out.add(h.IDs[i], sum, plain)
			}
			delete(want, sum)
		}
		if err := batch.Error(); err != nil {
			if got > 0 || !errors.Is(err, nats.ErrNoResponders) || unanswered == fetchUnansweredTries {
				return err
			}
			// An ordered consumer makes a new server-side consumer for every fetch; in a cluster
			// the pull can reach a server before that consumer's interest does. Nothing was
			// delivered, so the cursor has not moved and the same fetch is asked again.
			unanswered++
			if err := sleepCtx(ctx, time.Duration(unanswered)*50*time.Millisecond); err != nil {
				return err
			}
			continue
		}
		unanswered = 0
		if got == 0 || pending == 0 {
			return nil
		}
		size = int(min(pending, 512))
	}
	return nil
}

// getBlocks reads the blocks h.IDs[i] for i in idx one request each, fetchers at a time.
func (n *Node) getBlocks(ctx context.Context, h *head, idx []int, out importedBlocks) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(fetchers, len(idx)) {
		wg.Go(func() {
			for i := range work {
				sum := [32]byte(h.Sums[i*32 : i*32+32])
				msg, err := n.repl.blocks.GetLastMsgForSubject(ctx, blockSubject(h.Session, sum))
				if err != nil {
					cancel(fmt.Errorf("block %s: %w", hex.EncodeToString(sum[:8]), err))
					return
				}
				plain, err := n.checkBlock(msg.Data, sum)
				if err != nil {
					cancel(err)
					return
				}
				out.add(h.IDs[i], sum, plain)
			}
		})
	}
feed:
	for _, i := range idx {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}

// classNamed is the errdefs class called name; Internal for another.
func classNamed(name string) *errdefs.Class {
	for _, c := range []*errdefs.Class{errdefs.InvalidArgument, errdefs.NotFound, errdefs.Conflict, errdefs.TooLarge, errdefs.Overloaded, errdefs.Unavailable, errdefs.Forbidden, errdefs.Unauthenticated} {
		if c.Name() == name {
			return c
		}
	}
	return errdefs.Internal
}

// fetchUnansweredTries bounds how often a fetch that reached no consumer is asked again (about
// 0.5 s of waiting in all); route interest in a healthy cluster settles well within that.
const fetchUnansweredTries = 4

// sleepCtx waits d, or less if ctx ends first (then it returns ctx's error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d): // collected once it fires or is unreachable (Go 1.23 timers)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
