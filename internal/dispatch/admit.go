package dispatch

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// Tenant is who a request acts for: the owner recorded on the sessions it starts (only its owner, or
// an admin, finds a session again) and the bucket its runs are admitted from. The server derives it
// from the API key and puts it in the request's context with WithTenant.
type Tenant struct {
	// ID names the tenant; the server uses a hash of the API key, never the key. Empty is the local
	// tenant: a server without keys, the CLI, MCP on stdio.
	ID string
	// Admin sees every tenant's sessions and may act on them.
	Admin bool
	// Limits override the dispatcher's Config.TenantLimits where they are non-zero.
	Limits TenantLimits
}

// TenantLimits cap what one tenant holds at once, on top of the server-wide caps.
type TenantLimits struct {
	// Sessions caps the tenant's open sessions on both tiers; zero means no cap of its own (the
	// server-wide MaxNanoSessions, MaxHeavySessions and MemoryBudgetMB still apply).
	Sessions int
	// Runs caps the tenant's runs on one tier at once (executing or waiting for a slot there); zero
	// means its fair share only: the tier's slots divided by the tenants with runs in flight, so a
	// tenant alone may use them all and two share them half and half.
	Runs int
	// Queue caps the tenant's runs waiting for one of its places on a tier before more are refused
	// as overloaded; zero means 32 per slot of the tier, at most 64 (a tenant alone then meets the
	// back-pressure of the nano engine's default queue), negative means none wait.
	Queue int
}

func (l TenantLimits) over(def TenantLimits) TenantLimits {
	if l.Sessions == 0 {
		l.Sessions = def.Sessions
	}
	if l.Runs == 0 {
		l.Runs = def.Runs
	}
	if l.Queue == 0 {
		l.Queue = def.Queue
	}
	return l
}

type tenantKey struct{}

// WithTenant returns ctx acting for t.
func WithTenant(ctx context.Context, t Tenant) context.Context {
	return context.WithValue(ctx, tenantKey{}, t)
}

// TenantOf returns the tenant ctx acts for; the local tenant when none was set.
func TenantOf(ctx context.Context) Tenant {
	t, _ := ctx.Value(tenantKey{}).(Tenant)
	return t
}

// sees reports whether t may find a session owned by owner.
func (t Tenant) sees(owner string) bool { return t.Admin || t.ID == owner }

// label names the tenant in messages and logs.
func (t Tenant) label() string {
	if t.ID == "" {
		return "this client"
	}
	return "API key " + t.ID
}

// runGate admits the runs on one tier fairly across tenants: each tenant has at most its share of the
// tier's slots in flight, and its further runs wait in its own bounded queue, so one tenant's burst
// can neither take every slot nor every place in the tier's queue. It does not hold the tier's CPU
// slots itself (the engine does), so a guest that sleeps costs its tenant a share, not the server.
type runGate struct {
	tier     api.Tier
	slots    int
	defQueue int // a tenant's queue when its limits give none

	mu      sync.Mutex
	tenants map[string]*tenantRuns // guarded by mu; tenants with runs in flight or waiting
}

// tenantRuns is guarded by its runGate's mu.
type tenantRuns struct {
	limits  TenantLimits
	running int
	waiting []*runWaiter // FIFO
}

type runWaiter struct {
	ready    chan struct{} // closed when admitted
	admitted bool          // guarded by runGate.mu
}

func newRunGate(tier api.Tier, slots int) *runGate {
	slots = max(slots, 1)
	return &runGate{tier: tier, slots: slots, defQueue: min(32*slots, 64), tenants: map[string]*tenantRuns{}}
}

// shareLocked is how many runs tenant tr may have in flight now.
func (g *runGate) shareLocked(tr *tenantRuns) int {
	active := 0
	for _, o := range g.tenants {
		if o.running > 0 || len(o.waiting) > 0 || o == tr {
			active++
		}
	}
	share := max(1, (g.slots+active-1)/active)
	if tr.limits.Runs > 0 {
		share = min(share, tr.limits.Runs)
	}
	return share
}

// acquire waits for one of t's places on the tier, or refuses at once when t's queue is full. The
// returned release must be called when the run ends.
func (g *runGate) acquire(ctx context.Context, t Tenant, lim TenantLimits) (release func(), err error) {
	g.mu.Lock()
	tr := g.tenants[t.ID]
	if tr == nil {
		tr = &tenantRuns{}
		g.tenants[t.ID] = tr
	}
	tr.limits = lim
	release = g.releaser(t.ID, tr)
	if len(tr.waiting) == 0 && tr.running < g.shareLocked(tr) {
		tr.running++
		g.mu.Unlock()
		return release, nil
	}
	queue := lim.Queue
	if queue == 0 {
		queue = g.defQueue
	}
	queue = max(queue, 0)
	if len(tr.waiting) >= queue {
		running, share := tr.running, g.shareLocked(tr)
		g.forgetIdleLocked(t.ID, tr)
		g.mu.Unlock()
		return nil, errdefs.With(errdefs.Overloaded, fmt.Errorf("%s has %d runs on the %s tier (its share of this server is %d) and %d waiting, the most it may queue; retry later",
			t.label(), running, g.tier, share, queue))
	}
	w := &runWaiter{ready: make(chan struct{})}
	tr.waiting = append(tr.waiting, w)
	g.mu.Unlock()

	select {
	case <-w.ready:
		return release, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.admitted {
		g.mu.Unlock()
		release()
	} else {
		tr.waiting = slices.DeleteFunc(tr.waiting, func(o *runWaiter) bool { return o == w })
		g.forgetIdleLocked(t.ID, tr)
		g.wakeLocked() // a tenant that left makes the others' shares larger
		g.mu.Unlock()
	}
	return nil, fmt.Errorf("waiting for a run place on the %s tier: %w", g.tier, context.Cause(ctx))
}

func (g *runGate) releaser(id string, tr *tenantRuns) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			tr.running--
			g.forgetIdleLocked(id, tr)
			g.wakeLocked()
			g.mu.Unlock()
		})
	}
}

func (g *runGate) forgetIdleLocked(id string, tr *tenantRuns) {
	if tr.running == 0 && len(tr.waiting) == 0 && g.tenants[id] == tr {
		delete(g.tenants, id)
	}
}

// wakeLocked admits the first waiters of every tenant below its share.
func (g *runGate) wakeLocked() {
	for _, tr := range g.tenants {
		for len(tr.waiting) > 0 && tr.running < g.shareLocked(tr) {
			w := tr.waiting[0]
			tr.waiting = tr.waiting[1:]
			w.admitted = true
			tr.running++
			close(w.ready)
		}
	}
}

// waiting counts the runs waiting for a place, for the stats.
func (g *runGate) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, tr := range g.tenants {
		n += len(tr.waiting)
	}
	return n
}

// memoryBudget is the server-wide memory that sessions and runs are admitted against: each holds its
// memory limit from admission until it ends.
type memoryBudget struct {
	totalMB int64 // <= 0: no budget

	mu     sync.Mutex
	usedMB int64 // guarded by mu
}

// take charges mb to the budget for what ("a session", "a run"); release gives it back.
func (b *memoryBudget) take(mb int, what string) (release func(), err error) {
	if b.totalMB <= 0 {
		return func() {}, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.usedMB+int64(mb) > b.totalMB {
		return nil, errdefs.With(errdefs.Overloaded, fmt.Errorf("the server's memory budget is spent: open sessions and running programs hold %d MiB of its %d MiB, and %s with a %d MiB memory limit does not fit; retry later, ask for a smaller memory_limit_mb, or close sessions",
			b.usedMB, b.totalMB, what, mb))
	}
	b.usedMB += int64(mb)
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.usedMB -= int64(mb)
			b.mu.Unlock()
		})
	}, nil
}

func (b *memoryBudget) used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.usedMB
}

// DefaultMemoryBudgetMB is three quarters of the host's memory (MemTotal in /proc/meminfo), leaving
// the rest to the server itself, the warm pools and the host; 0 when it cannot be read.
func DefaultMemoryBudgetMB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return int(kb / 1024 * 3 / 4)
		}
	}
	return 0
}
