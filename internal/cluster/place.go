package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// Placement kinds.
const (
	kindRun     = "run"
	kindSession = "session"
)

// reservationTTL is how long a placement answered here holds its place for the request to arrive.
const reservationTTL = 10 * time.Second

// cancelSubject carries the id of a placement request whose answer never came: a host that
// reserved a place for it gives the place back (its answer was lost or late).
const cancelSubject = "agentbox.placecancel"

type placeRequest struct {
	// ID names this one attempt, so that a cancel gives back only its reservation.
	ID     string            `json:"id"`
	Kind   string            `json:"kind"`
	Tier   api.Tier          `json:"tier"`
	Labels map[string]string `json:"labels,omitempty"`
}

type placeReply struct {
	Host  string `json:"host"`
	URL   string `json:"url"`
	Token string `json:"token,omitempty"`
	Full  bool   `json:"full,omitempty"` // it was full by the time the request came
}

func subjectFor(kind string, t api.Tier) string {
	if kind == kindSession {
		return sessionSubject + "." + string(t)
	}
	return placeSubject + "." + string(t)
}

// roomLocked reports whether this host takes one more placement of kind; n.mu held.
func (n *Node) roomLocked(kind string, sessions int, memFull bool) bool {
	if n.draining || memFull {
		return false
	}
	pendingRuns, pendingSessions := 0, 0
	for _, r := range n.pending {
		if r.kind == kindRun {
			pendingRuns++
		} else {
			pendingSessions++
		}
	}
	if kind == kindRun {
		return n.runs+pendingRuns < n.cfg.RunSlots
	}
	return sessions+n.starting+pendingSessions < n.cfg.SessionSlots
}

func (n *Node) load() (sessions int, memFull bool) {
	st := n.cfg.Stats()
	return st.Sessions + st.HeavySessions, st.MemoryBudgetMB > 0 && st.MemoryUsedMB >= st.MemoryBudgetMB
}

// sync subscribes to the placement subjects of each kind and tier this host has room for and
// unsubscribes from those it has none for, so that a full host is not offered work.
func (n *Node) sync() {
	sessions, memFull := n.load()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nc.IsClosed() {
		return
	}
	for _, kind := range []string{kindRun, kindSession} {
		room := n.roomLocked(kind, sessions, memFull)
		for _, t := range n.cfg.Tiers {
			key := kind + "." + string(t)
			subs := n.subs[key]
			switch {
			case room && subs == nil:
				for _, suffix := range labelSubsets(n.cfg.Labels) {
					s, err := n.nc.QueueSubscribe(subjectFor(kind, t)+suffix, queueGroup, n.onPlace)
					if err != nil {
						n.log.Warn("cluster: subscribing to placements", "err", err)
						continue
					}
					subs = append(subs, s)
				}
				n.subs[key] = subs
			case !room && subs != nil:
				for _, s := range subs {
					s.Unsubscribe()
				}
				delete(n.subs, key)
			}
		}
	}
}

// onPlace answers a placement: a reservation while there is room (the subscription may lag behind
// a host filling up), "full" otherwise.
func (n *Node) onPlace(m *nats.Msg) {
	var req placeRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		return
	}
	sessions, memFull := n.load()
	n.mu.Lock()
	if !n.roomLocked(req.Kind, sessions, memFull) {
		n.mu.Unlock()
		b, _ := json.Marshal(placeReply{Host: n.cfg.HostID, Full: true})
		m.Respond(b)
		go n.sync()
		return
	}
	token := newToken()
	r := &reservation{kind: req.Kind, request: req.ID}
	r.timer = time.AfterFunc(reservationTTL, func() { n.claim(token) })
	n.pending[token] = r
	if req.ID != "" {
		n.byRequest[req.ID] = token
	}
	n.mu.Unlock()
	go n.sync()
	b, _ := json.Marshal(placeReply{Host: n.cfg.HostID, URL: n.cfg.URL, Token: token})
	m.Respond(b)
}

// claim ends the reservation token (the request arrived, or it expired).
func (n *Node) claim(token string) {
	if token == "" {
		return
	}
	n.mu.Lock()
	r, ok := n.pending[token]
	delete(n.pending, token)
	if ok {
		delete(n.byRequest, r.request)
	}
	n.mu.Unlock()
	if ok {
		r.timer.Stop()
		n.sync()
	}
}

// onCancel gives back the place reserved for a placement attempt whose asker stopped waiting.
func (n *Node) onCancel(m *nats.Msg) {
	n.mu.Lock()
	token := n.byRequest[string(m.Data)]
	n.mu.Unlock()
	n.claim(token)
}

func newToken() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// place asks the fleet for a host with room for kind on tier with labels. A host that was full
// when the request reached it is asked again while time remains.
//
// Each attempt waits at most a quarter of the placement timeout: a host that unsubscribes as it
// fills up drops the requests NATS had already routed to it, and waiting the whole timeout for
// that answer would turn one full host into a 429 for the fleet. An attempt given up on is
// cancelled, so a late answer's reservation does not hold a place for reservationTTL.
func (n *Node) place(ctx context.Context, kind string, t api.Tier, labels map[string]string) (placeReply, error) {
	subject := subjectFor(kind, t) + labelSuffix(labels)
	ctx, cancel := context.WithTimeout(ctx, n.cfg.PlaceTimeout)
	defer cancel()
	for {
		rep, err := n.askOnce(ctx, subject, placeRequest{ID: newToken(), Kind: kind, Tier: t, Labels: labels})
		if err == nil && !rep.Full {
			return rep, nil
		}
		if cerr := context.Cause(ctx); cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) {
			return placeReply{}, cerr
		}
		if err != nil && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			return placeReply{}, err
		}
		// Full, no responders (every host is full right now) or a lost answer: one may free a
		// place within the timeout.
		select {
		case <-ctx.Done():
			return placeReply{}, n.noRoom(kind, t, labels)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// askOnce makes one placement attempt, cancelling it when its answer does not come in time.
func (n *Node) askOnce(ctx context.Context, subject string, req placeRequest) (placeReply, error) {
	b, _ := json.Marshal(req)
	attempt, cancel := context.WithTimeout(ctx, n.cfg.PlaceTimeout/4)
	defer cancel()
	msg, err := n.nc.RequestWithContext(attempt, subject, b)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return placeReply{}, err
		}
		if attempt.Err() != nil || errors.Is(err, nats.ErrTimeout) {
			n.nc.Publish(cancelSubject, []byte(req.ID))
			if ctx.Err() != nil {
				return placeReply{}, ctx.Err()
			}
			return placeReply{}, context.DeadlineExceeded
		}
		return placeReply{}, errdefs.With(errdefs.Unavailable, fmt.Errorf("placing a %s: NATS: %w", req.Kind, err))
	}
	var rep placeReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return placeReply{}, fmt.Errorf("cluster: placement answer: %w", err)
	}
	return rep, nil
}

// noRoom is the answer when no host took a placement: 429 when some host serves the tier and
// labels (they are all full), 503 when none does.
func (n *Node) noRoom(kind string, t api.Tier, labels map[string]string) error {
	what := fmt.Sprintf("a %s %s", t, kind)
	if len(labels) > 0 {
		what += " with labels " + formatLabels(labels)
	}
	serving := 0
	for _, h := range n.liveHosts() {
		if h.State == api.HostActive && slices.Contains(h.Tiers, t) && hasLabels(h.Labels, labels) {
			serving++
		}
	}
	if serving == 0 {
		return errdefs.With(errdefs.Unavailable, fmt.Errorf("no host in the fleet serves %s", what))
	}
	return errdefs.With(errdefs.Overloaded, fmt.Errorf("the whole fleet is full: none of its %d hosts serving %s has room for one (waited %s); retry later", serving, what, n.cfg.PlaceTimeout))
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func formatLabels(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}
