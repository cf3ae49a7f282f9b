// Package netpolicy decides what a sandbox's network traffic may do. A Policy is a run's or session's
// api.NetworkPolicy, plus the grants derived from its trusted task and intent, compiled inside the
// server's ceiling; a Guard is one sandbox's live view of it: the decisions it makes, the events they
// produce, the state that flow rules keep (a DLP hit denies later writes) and the policy swaps of
// PATCH /v1/sessions/{id}/network. The egress proxy (internal/egress) asks a Guard about every DNS
// question, connection and request, and reports what happened back to it. See docs/egress.md.
package netpolicy

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// Request is what the data plane knows of one DNS question, connection or HTTP request when it asks.
type Request struct {
	// Host is the name as the sandbox gave it (TLS SNI, HTTP Host or :authority, the DNS question),
	// not yet canonical; empty when the sandbox sent none (raw TCP to an address).
	Host string
	Port int
	// Addr is the destination the sandbox dialled (SO_ORIGINAL_DST); zero when there is none (the
	// nano bridge, DNS).
	Addr netip.AddrPort
	// Method and Path are set when the request is visible (plain HTTP, or TLS inspected); empty for
	// a connection-level decision.
	Method, Path string
	// DNS marks a DNS question for Host.
	DNS bool
}

// Decision is a Guard's answer to a Request.
type Decision struct {
	Allow bool
	// Host is the canonical name to resolve and dial (lower case, no trailing dot, IDNA A-labels).
	Host string
	// Verdict is one of api.Verdict*; Rule, Source and Reason explain it as api.NetworkEvent does.
	Verdict, Rule, Source, Reason string
	// Inspect says to terminate TLS for this host (the policy's inspect_tls, unless the rule that
	// allowed it is NoInspect).
	Inspect bool
	// Budget is how many more bytes the rule or grant that allowed this may carry (both directions);
	// zero means no budget.
	Budget int64
}

// Guard is one sandbox's policy in force. It is safe for concurrent use: the data plane calls it from
// a goroutine per connection.
type Guard struct {
	sink func(api.NetworkEvent) // called for every event, outside mu; nil discards

	mu      sync.Mutex
	policy  *Policy            // guarded by mu
	tainted bool               // guarded by mu: a DLP finding was made in this sandbox's traffic
	events  []api.NetworkEvent // guarded by mu: recorded since the last Drain
	// used is the bytes each rule or grant has carried (by Decision.Rule, from Record), against its
	// budget; it outlives Swap, so a grant kept by a new policy keeps what it spent. guarded by mu
	used map[string]int64
}

// NewGuard returns a Guard enforcing p; sink, if not nil, receives every event as it is recorded (the
// audit log).
func NewGuard(p *Policy, sink func(api.NetworkEvent)) *Guard {
	return &Guard{policy: p, sink: sink}
}

// Decide answers r with the policy in force.
func (g *Guard) Decide(r Request) Decision {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.policy.decide(r, g.tainted, g.used)
}

// Record keeps e for the result of the run or cell in progress and passes it to the sink. An event
// with detectors taints the sandbox (flow rule: see Policy). Its BytesOut and BytesIn count against
// the budget of e.Rule (the Decision.Rule that allowed it): report bytes as they flow (several events
// for one long connection) for the budget to bite mid-transfer.
func (g *Guard) Record(e api.NetworkEvent) {
	if e.Time == "" {
		e.Time = time.Now().UTC().Format(time.RFC3339Nano)
	}
	g.mu.Lock()
	if len(e.Detectors) > 0 {
		g.tainted = true
	}
	if n := max(e.BytesOut, 0) + max(e.BytesIn, 0); n > 0 && e.Rule != "" {
		if g.used == nil {
			g.used = map[string]int64{}
		}
		g.used[e.Rule] += n
	}
	g.events = append(g.events, e)
	g.mu.Unlock()
	if g.sink != nil {
		g.sink(e)
	}
}

// Drain returns the events recorded since the last Drain.
func (g *Guard) Drain() []api.NetworkEvent {
	g.mu.Lock()
	defer g.mu.Unlock()
	ev := g.events
	g.events = nil
	return ev
}

// Tainted reports whether a DLP finding was made in this sandbox's traffic (the flow rule is on).
func (g *Guard) Tainted() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tainted
}

// Swap puts p in force for new connections and requests.
func (g *Guard) Swap(p *Policy) {
	g.mu.Lock()
	g.policy = p
	g.mu.Unlock()
}

// Policy returns the policy in force.
func (g *Guard) Policy() *Policy {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.policy
}

type guardKey struct{}

// WithGuard returns ctx carrying g, the network a run or session started under ctx gets.
func WithGuard(ctx context.Context, g *Guard) context.Context {
	return context.WithValue(ctx, guardKey{}, g)
}

// GuardOf returns the Guard ctx carries; nil means offline.
func GuardOf(ctx context.Context) *Guard {
	g, _ := ctx.Value(guardKey{}).(*Guard)
	return g
}
