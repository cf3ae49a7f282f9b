// Package cluster joins agentbox hosts into a fleet over NATS JetStream (docs/cluster.md): each host
// advertises itself in the "hosts" key-value bucket under a TTL refreshed by heartbeats, takes
// placements of runs and sessions on queue-group subjects while it has room, records the host of
// each session it starts in the "sessions" bucket, and forwards every request for a sandbox on
// another host to that host's HTTP API (Wrap).
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// Buckets and subjects.
const (
	HostsBucket    = "agentbox_hosts"
	SessionsBucket = "agentbox_sessions"
	placeSubject   = "agentbox.place"   // .<tier>[.<k>=<v>...]: one-shot runs
	sessionSubject = "agentbox.session" // .<tier>[.<k>=<v>...]: new sessions
	controlSubject = "agentbox.host"    // .<id>.drain
	queueGroup     = "agentbox"
)

// Headers between hosts and from clients.
const (
	// HeaderForwarded marks a request forwarded by another host (its id): it is served here, not
	// placed again.
	HeaderForwarded = "X-Agentbox-Forwarded"
	// HeaderPlacement carries the reservation token the placed host answered with.
	HeaderPlacement = "X-Agentbox-Placement"
	// HeaderLabels is how a client asks for host labels on POST /v1/run and POST /v1/sessions:
	// "k=v,k2=v2"; only hosts with all of them are placed on.
	HeaderLabels = "X-Agentbox-Labels"
)

// Config configures a Node. Zero values are the defaults given per field.
type Config struct {
	// NATS are the NATS servers' URLs (nats://a:4222); required.
	NATS []string
	// HostID names this host in the fleet; empty means the machine's hostname and a random suffix.
	HostID string
	// URL is this host's HTTP base URL as the other hosts reach it (--advertise); required.
	URL string
	// Tiers this host takes placements for; empty means nano (and heavy when Stats says it is there).
	Tiers []api.Tier
	// Labels are matched against a request's X-Agentbox-Labels; at most 6, keys and values of
	// letters, digits, '-' and '_'.
	Labels map[string]string
	// RunSlots is how many one-shot runs this host takes at once through placement before it stops
	// answering placements; zero means 4 per CPU.
	RunSlots int
	// SessionSlots is how many open sessions this host takes; zero means 64.
	SessionSlots int
	// Stats reports the dispatcher's gauges for the host record; nil means zeros.
	Stats func() dispatch.Stats
	// ConfigDigest is a digest of the API keys and ceiling policy; a host whose digest differs from
	// a live host's is refused at Start. Empty is a digest like any other (no keys, no policy).
	ConfigDigest string
	// Replicas of the JetStream buckets; zero means 1 (use 3 on a 3- or 5-node NATS cluster).
	Replicas int
	// Heartbeat is how often the host record is refreshed; zero means 1 s. HostTTL is how long a
	// record outlives its last heartbeat (a host killed without leaving disappears after it); zero
	// means 5 heartbeats. A host whose record expired is pinged before its sessions are taken for
	// gone (liveHost), so late heartbeats cost placements on it, not its sessions.
	Heartbeat time.Duration
	HostTTL   time.Duration
	// PlaceTimeout bounds the wait for a host to answer a placement before 429; zero means 1 s.
	PlaceTimeout time.Duration
	// Transport carries forwarded requests; nil means a clone of http.DefaultTransport.
	Transport http.RoundTripper
	// Logger; nil discards.
	Logger *slog.Logger
	// Replicate, when set (serve --replicate-sessions), is the dispatcher whose sessions' steps are
	// copied into the fleet's JetStream store as they are committed, and into which this host
	// restores the sessions of hosts that died (restore.go); it must keep snapshots. Nil means no
	// replication: a dead host's sessions answer 404 with the reason.
	Replicate *dispatch.Dispatcher
	// ReplicationQueue is how many sessions may have a step waiting to be sent; a step beyond it is
	// not replicated (the session's replica stays at its last sent step). Zero means 256.
	ReplicationQueue int
}

// Node is this host's membership of the fleet.
type Node struct {
	cfg   Config
	log   *slog.Logger
	nc    *nats.Conn
	hosts jetstream.KeyValue
	sess  jetstream.KeyValue
	start time.Time
	proxy *proxy

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	// acked is when (UnixNano) the last heartbeat put was acknowledged.
	acked atomic.Int64
	// beatsPaused holds the heartbeat puts back (tests: a host whose heartbeats are late).
	beatsPaused atomic.Bool

	mu sync.Mutex
	// seen are the hosts the watcher has seen, with when this node last heard of each; guarded by mu.
	seen map[string]seenHost
	// runs and starting are the runs and session creations this host is serving (placed here);
	// pending are placements answered and not yet arrived, by token; guarded by mu.
	runs, starting int
	pending        map[string]*reservation
	byRequest      map[string]string               // placement attempt id → its pending token; guarded by mu
	draining       bool                            // guarded by mu
	subs           map[string][]*nats.Subscription // by kind.tier, nil while full; guarded by mu
	// owners caches session id → host (a session moves only when restored elsewhere after its host
	// died, which looks the record up again); guarded by mu.
	owners map[string]string
	// repl sends this host's session steps to the fleet's store; nil without Config.Replicate.
	repl *replicator
	// flights are the restores this host is placing, by session id; guarded by mu.
	flights map[string]*restoreFlight
}

type seenHost struct {
	host api.Host
	at   time.Time // when this node received the record
	left time.Time // when it deregistered (a delete), zero while present
	// probed is when a ping found it gone after its record expired (liveHost); zero until then.
	probed time.Time
}

type reservation struct {
	kind    string
	request string // the placement attempt's id
	timer   *time.Timer
}

var labelRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)

// ParseLabels parses "k=v,k2=v2" (as --labels and X-Agentbox-Labels carry them).
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok || !labelRE.MatchString(k) || !labelRE.MatchString(v) {
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("label %q: want key=value, each of letters, digits, '-' and '_' (at most 63)", part))
		}
		out[k] = v
	}
	if len(out) > 6 {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%d labels: at most 6", len(out)))
	}
	return out, nil
}

// Start connects to NATS, checks that this host's configuration digest matches the fleet's, creates
// the buckets (if this is the first host), registers the host and starts its heartbeat and
// placement subscriptions.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if len(cfg.NATS) == 0 {
		return nil, errors.New("cluster: no NATS server URL")
	}
	if cfg.URL == "" {
		return nil, errors.New("cluster: no advertised URL: pass --advertise http://this-host:8080")
	}
	if u, err := url.Parse(cfg.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cluster: advertised URL %q: want http://host:port", cfg.URL)
	}
	if cfg.HostID == "" {
		h, _ := os.Hostname()
		var b [3]byte
		rand.Read(b[:])
		cfg.HostID = strings.Trim(labelSafe(h), "-") + "-" + hex.EncodeToString(b[:])
	}
	if !labelRE.MatchString(cfg.HostID) {
		return nil, fmt.Errorf("cluster: host id %q: letters, digits, '-' and '_' only", cfg.HostID)
	}
	if len(cfg.Labels) > 6 {
		return nil, fmt.Errorf("cluster: %d labels: at most 6", len(cfg.Labels))
	}
	for k, v := range cfg.Labels {
		if !labelRE.MatchString(k) || !labelRE.MatchString(v) {
			return nil, fmt.Errorf("cluster: label %s=%s: letters, digits, '-' and '_' only", k, v)
		}
	}
	if cfg.RunSlots <= 0 {
		cfg.RunSlots = 4 * runtime.GOMAXPROCS(0)
	}
	if cfg.SessionSlots <= 0 {
		cfg.SessionSlots = 64
	}
	if cfg.Stats == nil {
		cfg.Stats = func() dispatch.Stats { return dispatch.Stats{} }
	}
	if len(cfg.Tiers) == 0 {
		cfg.Tiers = []api.Tier{api.TierNano}
		if cfg.Stats().Heavy {
			cfg.Tiers = append(cfg.Tiers, api.TierHeavy)
		}
	}
	for _, t := range cfg.Tiers {
		if t != api.TierNano && t != api.TierHeavy {
			return nil, fmt.Errorf("cluster: tier %q: want nano or heavy", t)
		}
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.HostTTL <= 0 {
		cfg.HostTTL = 5 * cfg.Heartbeat
	}
	if cfg.PlaceTimeout <= 0 {
		cfg.PlaceTimeout = time.Second
	}
	if cfg.ReplicationQueue <= 0 {
		cfg.ReplicationQueue = 256
	}
	if cfg.Replicate != nil && !cfg.Replicate.HasSnapshots() {
		return nil, errors.New("cluster: replicating sessions needs time travel's snapshot store (serve without --snapshot-dir off)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nc, err := nats.Connect(strings.Join(cfg.NATS, ","), nats.Name("agentbox "+cfg.HostID), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("cluster: connecting to NATS %s: %w", strings.Join(cfg.NATS, ","), err)
	}
	n := &Node{cfg: cfg, log: log.With("host", cfg.HostID), nc: nc, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{}),
		seen: map[string]seenHost{}, pending: map[string]*reservation{}, byRequest: map[string]string{}, subs: map[string][]*nats.Subscription{}, owners: map[string]string{},
		flights: map[string]*restoreFlight{}}
	if err := n.join(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	if cfg.Replicate != nil {
		if err := n.startReplication(ctx); err != nil {
			n.Abandon()
			return nil, err
		}
	}
	n.proxy = newProxy(n, cfg.Transport)
	return n, nil
}

func labelSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '-'
	}, s)
}

func (n *Node) join(ctx context.Context) error {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return fmt.Errorf("cluster: jetstream: %w", err)
	}
	if n.hosts, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: HostsBucket, TTL: n.cfg.HostTTL,
		Replicas: n.cfg.Replicas, Storage: jetstream.MemoryStorage, Description: "agentbox hosts (id → record), kept alive by heartbeats"}); err != nil {
		return fmt.Errorf("cluster: hosts bucket: %w", err)
	}
	if n.sess, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: SessionsBucket,
		Replicas: n.cfg.Replicas, Storage: jetstream.FileStorage, Description: "agentbox sessions (id → host)"}); err != nil {
		return fmt.Errorf("cluster: sessions bucket: %w", err)
	}
	// The watcher delivers the current records first: the fleet as it is, to check against. It lives
	// until Close, not ctx.
	w, err := n.hosts.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("cluster: watching hosts: %w", err)
	}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		n.observe(e)
	}
	for id, h := range n.liveHosts() {
		if id == n.cfg.HostID {
			w.Stop()
			return fmt.Errorf("cluster: host id %s is already in the fleet (at %s): give each host its own --host-id", id, h.URL)
		}
		if h.ConfigSHA256 != n.cfg.ConfigDigest {
			w.Stop()
			return fmt.Errorf("cluster: refusing to join: host %s has API keys and ceiling policy with digest %.12s, this host %.12s; every host of a fleet must have the same --api-key-file, keys and --policy", id, h.ConfigSHA256, n.cfg.ConfigDigest)
		}
	}
	if _, err := n.nc.Subscribe(controlSubject+"."+n.cfg.HostID+".drain", n.onDrain); err != nil {
		w.Stop()
		return fmt.Errorf("cluster: control subject: %w", err)
	}
	if _, err := n.nc.Subscribe(controlSubject+"."+n.cfg.HostID+pingSuffix, n.onPing); err != nil {
		w.Stop()
		return fmt.Errorf("cluster: ping subject: %w", err)
	}
	if _, err := n.nc.Subscribe(cancelSubject, n.onCancel); err != nil {
		w.Stop()
		return fmt.Errorf("cluster: cancel subject: %w", err)
	}
	if err := n.heartbeat(ctx); err != nil {
		w.Stop()
		return err
	}
	n.sync()
	go n.loop(w)
	return nil
}

// loop heartbeats and applies the watcher's updates until Close, in two goroutines: remaking a
// watcher is a JetStream API call that a loaded NATS may take seconds to answer, and a heartbeat
// waiting behind it would let this host's record expire although nothing is wrong with it.
func (n *Node) loop(w jetstream.KeyWatcher) {
	defer close(n.done)
	beats := make(chan struct{})
	go func() {
		defer close(beats)
		n.beat()
	}()
	n.watch(w)
	<-beats
}

// beat refreshes this host's record every Heartbeat until Close. A put is given up to HostTTL: one
// that is only slow (a raft commit on a loaded box) still keeps the record alive, and giving up
// sooner would only send the next put into the same queue.
func (n *Node) beat() {
	t := time.NewTicker(n.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if n.beatsPaused.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.HostTTL)
		if err := n.heartbeat(ctx); err != nil {
			n.log.Warn("cluster: heartbeat", "err", err)
		} else {
			n.acked.Store(time.Now().UnixNano())
		}
		cancel()
		n.sync()
	}
}

// watch applies the watcher's updates until Close. This host's own heartbeats come back through
// the watcher, so a watcher that has not delivered one for three heartbeats although a put was
// acknowledged since has lost its consumer (a NATS node went down under it) and is made again; a
// watcher is silent also while the heartbeats themselves are slow, which is no reason to remake it.
func (n *Node) watch(w jetstream.KeyWatcher) {
	defer func() {
		if w != nil {
			w.Stop()
		}
	}()
	t := time.NewTicker(n.cfg.Heartbeat)
	defer t.Stop()
	heard := time.Now()
	var updates <-chan jetstream.KeyValueEntry
	if w != nil {
		updates = w.Updates()
	}
	for {
		select {
		case <-n.stop:
			return
		case e, ok := <-updates:
			if !ok {
				updates = nil // remade at the next tick
				continue
			}
			heard = time.Now()
			if e != nil {
				n.observe(e)
			}
		case <-t.C:
			acked := time.Unix(0, n.acked.Load())
			if updates != nil && (time.Since(heard) <= 3*n.cfg.Heartbeat || acked.Sub(heard) <= n.cfg.Heartbeat) {
				continue
			}
			if w != nil {
				w.Stop()
			}
			// The watcher lives as long as its context: Background, bounded by the client's API
			// timeout while it is made.
			nw, err := n.hosts.WatchAll(context.Background())
			if err != nil {
				n.log.Warn("cluster: watching hosts again", "err", err)
				w, updates = nil, nil
				continue
			}
			w, updates, heard = nw, nw.Updates(), time.Now()
		}
	}
}

func (n *Node) observe(e jetstream.KeyValueEntry) {
	n.mu.Lock()
	defer n.mu.Unlock()
	id := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		s := n.seen[id]
		s.left = time.Now()
		n.seen[id] = s
		return
	}
	var h api.Host
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		n.log.Warn("cluster: unreadable host record", "key", id, "err", err)
		return
	}
	n.seen[id] = seenHost{host: h, at: time.Now()}
}

// liveHosts are the hosts whose record is fresher than HostTTL (the bucket's own TTL removes the
// records; expiries are not announced, so the age is checked here).
func (n *Node) liveHosts() map[string]api.Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]api.Host{}
	for id, s := range n.seen {
		if s.left.IsZero() && time.Since(s.at) < n.cfg.HostTTL {
			out[id] = s.host
		}
	}
	return out
}

// goneReason says why host id is not in the fleet, for a session's 404.
func (n *Node) goneReason(id string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	s, ok := n.seen[id]
	switch {
	case !ok:
		return fmt.Sprintf("its host %s is not in the fleet", id)
	case !s.left.IsZero():
		return fmt.Sprintf("its host %s left the fleet at %s", id, s.left.UTC().Format(time.RFC3339))
	default:
		return fmt.Sprintf("its host %s left the fleet: no heartbeat since %s", id, s.at.UTC().Format(time.RFC3339))
	}
}

func (n *Node) record() api.Host {
	st := n.cfg.Stats()
	n.mu.Lock()
	runs, draining := n.runs+len(n.pending), n.draining
	n.mu.Unlock()
	sessions := st.Sessions + st.HeavySessions
	state := api.HostActive
	if draining {
		state = api.HostDraining
		if sessions == 0 {
			state = api.HostDrained
		}
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	return api.Host{ID: n.cfg.HostID, URL: n.cfg.URL, Tiers: n.cfg.Tiers, Labels: n.cfg.Labels, State: state,
		Capacity:     api.HostCapacity{Runs: n.cfg.RunSlots, Sessions: n.cfg.SessionSlots, MemoryMB: st.MemoryBudgetMB},
		Load:         api.HostLoad{Runs: runs, Sessions: sessions, MemoryUsedMB: st.MemoryUsedMB, RunsWaiting: st.RunsWaiting, PoolReady: st.PoolReady},
		ConfigSHA256: n.cfg.ConfigDigest, StartedAt: n.start.UTC().Format(time.RFC3339Nano), HeartbeatAt: now}
}

func (n *Node) heartbeat(ctx context.Context) error {
	b, _ := json.Marshal(n.record())
	if _, err := n.hosts.Put(ctx, n.cfg.HostID, b); err != nil {
		return fmt.Errorf("cluster: heartbeat: %w", err)
	}
	return nil
}

// ID is this host's id.
func (n *Node) ID() string { return n.cfg.HostID }

// Hosts lists the live hosts of the fleet, this one first, then by id.
func (n *Node) Hosts(ctx context.Context) api.HostList {
	live := n.liveHosts()
	live[n.cfg.HostID] = n.record() // this host's own record is always current
	out := api.HostList{Self: n.cfg.HostID, Hosts: make([]api.Host, 0, len(live))}
	for _, h := range live {
		out.Hosts = append(out.Hosts, h)
	}
	sort.Slice(out.Hosts, func(i, j int) bool {
		if (out.Hosts[i].ID == n.cfg.HostID) != (out.Hosts[j].ID == n.cfg.HostID) {
			return out.Hosts[i].ID == n.cfg.HostID
		}
		return out.Hosts[i].ID < out.Hosts[j].ID
	})
	return out
}

// Drain stops host id (or "self": this one) from taking placements; its sessions keep answering
// until they end. It returns the host's record.
func (n *Node) Drain(ctx context.Context, id string) (api.Host, error) {
	if id == "self" || id == n.cfg.HostID {
		n.drainSelf(ctx)
		return n.record(), nil
	}
	if _, ok := n.liveHosts()[id]; !ok {
		return api.Host{}, errdefs.With(errdefs.NotFound, fmt.Errorf("host %s is not in the fleet", id))
	}
	msg, err := n.nc.RequestWithContext(ctx, controlSubject+"."+id+".drain", nil)
	if err != nil {
		return api.Host{}, errdefs.With(errdefs.Unavailable, fmt.Errorf("draining host %s: %w", id, err))
	}
	var h api.Host
	if err := json.Unmarshal(msg.Data, &h); err != nil {
		return api.Host{}, fmt.Errorf("draining host %s: its answer: %w", id, err)
	}
	return h, nil
}

func (n *Node) drainSelf(ctx context.Context) {
	n.mu.Lock()
	n.draining = true
	n.mu.Unlock()
	n.sync()
	if err := n.heartbeat(ctx); err != nil {
		n.log.Warn("cluster: drain heartbeat", "err", err)
	}
	n.log.Info("cluster: draining: no more placements")
}

func (n *Node) onDrain(m *nats.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n.drainSelf(ctx)
	b, _ := json.Marshal(n.record())
	m.Respond(b)
}

// Leave leaves the fleet: it stops taking placements and deletes its host record, so the others see
// it leave at once (its sessions then answer 404 with the reason). The NATS connection stays for the
// audit stream until Close.
func (n *Node) Leave(ctx context.Context) error {
	n.stopLoop()
	n.mu.Lock()
	n.draining = true
	n.mu.Unlock()
	n.sync()
	if err := n.hosts.Delete(ctx, n.cfg.HostID); err != nil && !n.nc.IsClosed() {
		return fmt.Errorf("cluster: leaving: %w", err)
	}
	return nil
}

// Close leaves the fleet (if Leave was not called) and closes the NATS connection, flushing what
// was published.
func (n *Node) Close(ctx context.Context) error {
	var err error
	if !n.nc.IsClosed() {
		err = n.Leave(ctx)
		n.nc.Drain()
	}
	return err
}

// Abandon drops the NATS connection without leaving, as a host that dies does (tests).
func (n *Node) Abandon() {
	n.stopLoop()
	n.nc.Close()
}

func (n *Node) stopLoop() {
	n.stopOnce.Do(func() { close(n.stop) })
	<-n.done
	if n.repl != nil {
		n.repl.halt() // what is queued is not sent: the host is leaving
	}
}

// labelSubsets are the subject suffixes of every subset of this host's labels, so that a request asking
// for any of them reaches it on one exact subject.
func labelSubsets(labels map[string]string) []string {
	keys := slices.Sorted(maps.Keys(labels))
	out := []string{""}
	for mask := 1; mask < 1<<len(keys); mask++ {
		var parts []string
		for i, k := range keys {
			if mask&(1<<i) != 0 {
				parts = append(parts, k+"="+labels[k])
			}
		}
		out = append(out, "."+strings.Join(parts, "."))
	}
	return out
}

// labelSuffix is the subject suffix asking for labels.
func labelSuffix(labels map[string]string) string {
	if len(labels) == 0 {
		return ""
	}
	return "." + strings.ReplaceAll(formatLabels(labels), ",", ".")
}
