package dispatch

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/tier"
)

// fakeHeavy is a heavy tier whose sessions take startDelay to start and count themselves.
type fakeHeavy struct {
	startDelay time.Duration
	failStarts atomic.Int32 // this many starts fail (after the delay)
	started    atomic.Int32 // sandboxes started in all
	live       atomic.Int32 // sandboxes started and not closed
	peak       atomic.Int32 // most live at once
}

func (f *fakeHeavy) RunCollect(ctx context.Context, req api.RunRequest, _ tier.Stream, _, _ int64) (*api.Result, *tier.Collected, error) {
	return &api.Result{Tier: api.TierHeavy}, nil, nil
}

func (f *fakeHeavy) Close(context.Context) error { return nil }

func (f *fakeHeavy) Limits(req api.Limits) (api.Limits, error) {
	return limits.Resolve(req, api.Limits{TimeoutMS: 60_000, MemoryLimitMB: 1024, MaxOutputBytes: 1 << 20},
		api.Limits{TimeoutMS: 1_800_000, MemoryLimitMB: 8192, MaxOutputBytes: 64 << 20}, 128, api.TierHeavy)
}

func (f *fakeHeavy) PoolReady() int { return 0 }

func (f *fakeHeavy) NewSession(ctx context.Context, _ api.Limits, _ []string) (tier.Session, error) {
	select {
	case <-time.After(f.startDelay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.failStarts.Add(-1) >= 0 {
		return nil, errors.New("the fake sandbox did not start")
	}
	f.started.Add(1)
	n := f.live.Add(1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return &fakeHeavySession{f: f}, nil
}

type fakeHeavySession struct {
	f      *fakeHeavy
	mu     sync.Mutex
	closed bool
}

func (s *fakeHeavySession) Run(context.Context, string, tier.Stream) (*api.Result, error) {
	return &api.Result{Tier: api.TierHeavy}, nil
}
func (s *fakeHeavySession) WriteFile(context.Context, string, []byte) error { return nil }
func (s *fakeHeavySession) ReadFile(context.Context, string, int64) ([]byte, error) {
	return nil, nil
}
func (s *fakeHeavySession) ListFiles(context.Context, string) ([]api.FileInfo, error) {
	return nil, nil
}
func (s *fakeHeavySession) Alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed
}
func (s *fakeHeavySession) Close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.f.live.Add(-1)
	}
	return nil
}

func newFakeHeavyDispatcher(t *testing.T, f *fakeHeavy, cfg Config) *Dispatcher {
	cfg.Heavy = f
	return newDispatcher(t, cfg)
}

// startParallel asks for n sessions at once and returns those started and how many were refused as
// overloaded; any other error fails the test.
func startParallel(t *testing.T, d *Dispatcher, ctx context.Context, n int, req api.SessionRequest) (started []*Session, overloaded int) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			s, err := d.NewSession(ctx, req)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				started = append(started, s)
			case errors.Is(err, errdefs.Overloaded):
				overloaded++
			default:
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
	wg.Wait()
	return started, overloaded
}

// TestHeavySessionCapIsReserved: N parallel session requests start at most the cap of sandboxes,
// because a place is reserved before a sandbox starts (not counted once it is registered, seconds
// later); the rest are refused as overloaded at once, and a start that fails gives its place back.
func TestHeavySessionCapIsReserved(t *testing.T) {
	ctx := context.Background()
	t.Run("heavy", func(t *testing.T) {
		f := &fakeHeavy{startDelay: 300 * time.Millisecond}
		d := newFakeHeavyDispatcher(t, f, Config{MaxHeavySessions: 4})
		started, overloaded := startParallel(t, d, ctx, 30, api.SessionRequest{Tier: api.TierHeavy})
		t.Logf("30 parallel heavy session requests, cap 4: %d sandboxes started, %d sessions, %d overloaded", f.started.Load(), len(started), overloaded)
		if f.started.Load() != 4 || f.peak.Load() != 4 || len(started) != 4 || overloaded != 26 {
			t.Fatalf("started %d (peak %d), sessions %d, overloaded %d; want 4, 4, 4, 26", f.started.Load(), f.peak.Load(), len(started), overloaded)
		}
		if _, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy}); !errors.Is(err, errdefs.Overloaded) || !strings.Contains(err.Error(), "4 heavy sessions are open or starting") {
			t.Fatalf("a fifth session: %v", err)
		}
		started[0].Close()
		s, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy})
		if err != nil {
			t.Fatalf("a session after one closed: %v", err)
		}
		s.Close()
		// A start that fails gives its place back: four failures in a row leave all four places.
		for _, s := range started[1:] {
			s.Close()
		}
		f.failStarts.Store(4)
		for range 4 {
			if _, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy}); err == nil || errors.Is(err, errdefs.Overloaded) {
				t.Fatalf("a failing start: %v", err)
			}
		}
		again, overloaded := startParallel(t, d, ctx, 6, api.SessionRequest{Tier: api.TierHeavy})
		if len(again) != 4 || overloaded != 2 {
			t.Fatalf("after failed starts: %d started, %d overloaded; want 4 and 2", len(again), overloaded)
		}
	})
	t.Run("nano", func(t *testing.T) {
		d := newDispatcher(t, Config{MaxNanoSessions: 4})
		started, overloaded := startParallel(t, d, ctx, 30, api.SessionRequest{Tier: api.TierNano})
		if len(started) != 4 || overloaded != 26 {
			t.Fatalf("sessions %d, overloaded %d; want 4 and 26", len(started), overloaded)
		}
		if n, _ := d.sessionCounts(); n != 4 {
			t.Fatalf("%d nano sessions registered", n)
		}
	})
	t.Run("a move needs a heavy place", func(t *testing.T) {
		f := &fakeHeavy{}
		d := newFakeHeavyDispatcher(t, f, Config{MaxHeavySessions: 1})
		auto, err := d.NewSession(ctx, api.SessionRequest{})
		if err != nil {
			t.Fatal(err)
		}
		full, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy})
		if err != nil {
			t.Fatal(err)
		}
		res, err := auto.Run(ctx, "import numpy", Output{})
		if err != nil || res.Tier != api.TierNano || !strings.Contains(res.RouteReason, "1 heavy sessions are open or starting") {
			t.Fatalf("%v %+v", err, res)
		}
		full.Close()
		if res, err = auto.Run(ctx, "import numpy", Output{}); err != nil || res.Tier != api.TierHeavy || auto.Info().Tier != api.TierHeavy {
			t.Fatalf("%v %+v", err, res)
		}
		if _, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy}); !errors.Is(err, errdefs.Overloaded) {
			t.Fatalf("the moved session does not hold its heavy place: %v", err)
		}
		if _, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano}); err != nil {
			t.Fatalf("the moved session still holds a nano place: %v", err)
		}
	})
}

// TestMemoryBudget: sessions and runs hold their memory limit from the budget until they end; what
// does not fit is refused as overloaded with a message that says so.
func TestMemoryBudget(t *testing.T) {
	ctx := context.Background()
	f := &fakeHeavy{}
	d := newFakeHeavyDispatcher(t, f, Config{MemoryBudgetMB: 1100})
	spent := func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, errdefs.Overloaded) || !strings.Contains(err.Error(), "memory budget is spent") {
			t.Fatalf("want the memory budget refusal, got %v", err)
		}
	}
	a, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano, Limits: api.Limits{MemoryLimitMB: 512}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano, Limits: api.Limits{MemoryLimitMB: 512}})
	if err != nil {
		t.Fatal(err)
	}
	if st := d.Stats(); st.MemoryUsedMB != 1024 || st.MemoryBudgetMB != 1100 {
		t.Fatalf("%+v", st)
	}
	_, err = d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano, Limits: api.Limits{MemoryLimitMB: 128}})
	spent(t, err)
	_, err = d.Run(ctx, api.RunRequest{Code: "print(1)", Tier: api.TierNano}, Output{}) // 256 MiB by default
	spent(t, err)
	if res, err := d.Run(ctx, api.RunRequest{Code: "print(1)", Limits: api.Limits{MemoryLimitMB: 64}}, Output{}); err != nil || res.Stdout != "1\n" {
		t.Fatalf("a run that fits: %v %+v", err, res)
	}
	// A session's cells run on its own memory.
	if res, err := a.Run(ctx, "print(2)", Output{}); err != nil || res.Stdout != "2\n" {
		t.Fatalf("a cell: %v %+v", err, res)
	}
	a.Close()
	if st := d.Stats(); st.MemoryUsedMB != 512 {
		t.Fatalf("after a run and a close: %+v", st)
	}
	_, err = d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy}) // 1024 MiB by default
	spent(t, err)
	if f.started.Load() != 0 {
		t.Fatal("a heavy sandbox started beyond the budget")
	}
	b.Close()
	h, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy})
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if st := d.Stats(); st.MemoryUsedMB != 0 {
		t.Fatalf("everything ended: %+v", st)
	}
	if DefaultMemoryBudgetMB() <= 0 {
		t.Fatal("no default budget from /proc/meminfo")
	}
}

// TestFairAdmission: one tenant's burst gets its share of a tier's slots and a bounded queue, and
// is refused past them, while another tenant is still admitted at once; a waiter whose client went
// away leaves the queue.
func TestFairAdmission(t *testing.T) {
	a := Tenant{ID: "key_a"}
	b := Tenant{ID: "key_b"}
	lim := TenantLimits{Queue: 2}
	bg := context.Background()
	t.Run("shares and queues", func(t *testing.T) {
		g := newRunGate(api.TierNano, 2)
		relA1, err1 := g.acquire(bg, a, lim)
		relA2, err2 := g.acquire(bg, a, lim)
		if err1 != nil || err2 != nil {
			t.Fatal("a tenant alone may use every slot", err1, err2)
		}
		admitted := make(chan func(), 2)
		for range 2 {
			go func() {
				rel, err := g.acquire(bg, a, lim)
				if err != nil {
					t.Error(err)
					return
				}
				admitted <- rel
			}()
		}
		waitFor(t, func() bool { return g.waiting() == 2 })
		_, err := g.acquire(bg, a, lim)
		if !errors.Is(err, errdefs.Overloaded) || !strings.Contains(err.Error(), "key_a") {
			t.Fatalf("past its share and queue: %v", err)
		}
		relB, err := g.acquire(bg, b, lim)
		if err != nil {
			t.Fatalf("another tenant was not admitted: %v", err)
		}
		// Two tenants share two slots: a's freed slot goes to nobody of a's while a holds its one.
		relA1()
		select {
		case <-admitted:
			t.Fatal("a tenant above its share was admitted")
		case <-time.After(100 * time.Millisecond):
		}
		relA2()
		relA3 := <-admitted
		relB() // b is gone: a's share is both slots again
		relA4 := <-admitted
		relA3()
		relA4()
		relA1() // releasing twice does nothing
		if g.waiting() != 0 || len(g.tenants) != 0 {
			t.Fatalf("state left: %d waiting, %d tenants", g.waiting(), len(g.tenants))
		}
	})
	t.Run("a disconnected waiter leaves", func(t *testing.T) {
		g := newRunGate(api.TierNano, 1)
		rel, err := g.acquire(bg, a, lim)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(bg)
		done := make(chan error)
		go func() {
			_, err := g.acquire(ctx, a, lim)
			done <- err
		}()
		waitFor(t, func() bool { return g.waiting() == 1 })
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("%v", err)
		}
		if g.waiting() != 0 {
			t.Fatal("the cancelled waiter still holds its queue place")
		}
		rel()
	})
	t.Run("per-key runs cap", func(t *testing.T) {
		g := newRunGate(api.TierNano, 4)
		one := TenantLimits{Runs: 1, Queue: -1}
		rel, err := g.acquire(bg, a, one)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.acquire(bg, a, one); !errors.Is(err, errdefs.Overloaded) {
			t.Fatalf("a second run past runs=1: %v", err)
		}
		rel()
	})
	t.Run("through the dispatcher", func(t *testing.T) {
		d := newDispatcher(t, Config{NanoSlots: 1, TenantLimits: TenantLimits{Queue: -1}})
		ctxA := WithTenant(bg, a)
		started := make(chan struct{})
		var once sync.Once
		go d.Run(ctxA, api.RunRequest{Code: "import time\nprint('go', flush=True)\ntime.sleep(1)"},
			Output{Stdout: func(string) { once.Do(func() { close(started) }) }})
		<-started
		if _, err := d.Run(ctxA, api.RunRequest{Code: "1"}, Output{}); !errors.Is(err, errdefs.Overloaded) {
			t.Fatalf("tenant a's second run: %v", err)
		}
		if res, err := d.Run(WithTenant(bg, b), api.RunRequest{Code: "print(3)"}, Output{}); err != nil || res.Stdout != "3\n" {
			t.Fatalf("tenant b's run: %v %+v", err, res)
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTenantsCannotSeeEachOther: a session is found, listed and used only by the tenant that
// started it, or an admin; for anyone else it does not exist.
func TestTenantsCannotSeeEachOther(t *testing.T) {
	d := newDispatcher(t, Config{})
	ctxA := WithTenant(context.Background(), Tenant{ID: "key_a"})
	ctxB := WithTenant(context.Background(), Tenant{ID: "key_b"})
	ctxAdmin := WithTenant(context.Background(), Tenant{ID: "key_admin", Admin: true})
	s, err := d.NewSession(ctxA, api.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Info().Owner != "key_a" {
		t.Fatalf("owner %q", s.Info().Owner)
	}
	_, errB := d.Session(ctxB, s.ID())
	_, errNone := d.Session(ctxB, "ses_nope")
	if !errors.Is(errB, errdefs.NotFound) || strings.ReplaceAll(errB.Error(), s.ID(), "ID") != strings.ReplaceAll(errNone.Error(), "ses_nope", "ID") {
		t.Fatalf("another tenant's session: %v (an unknown one: %v)", errB, errNone)
	}
	if _, err := d.Session(context.Background(), s.ID()); !errors.Is(err, errdefs.NotFound) {
		t.Fatalf("the local tenant found key_a's session: %v", err)
	}
	if got, err := d.Session(ctxA, s.ID()); err != nil || got != s {
		t.Fatalf("the owner: %v", err)
	}
	if got, err := d.Session(ctxAdmin, s.ID()); err != nil || got != s {
		t.Fatalf("an admin: %v", err)
	}
	if n := len(d.Sessions(ctxB)); n != 0 {
		t.Fatalf("tenant b lists %d sessions", n)
	}
	if l := d.Sessions(ctxA); len(l) != 1 || l[0].ID != s.ID() {
		t.Fatalf("tenant a lists %+v", l)
	}
	if l := d.Sessions(ctxAdmin); len(l) != 1 {
		t.Fatalf("the admin lists %+v", l)
	}
	t.Run("per-key session cap", func(t *testing.T) {
		ctx := WithTenant(context.Background(), Tenant{ID: "key_c", Limits: TenantLimits{Sessions: 1}})
		one, err := d.NewSession(ctx, api.SessionRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.NewSession(ctx, api.SessionRequest{}); !errors.Is(err, errdefs.Overloaded) || !strings.Contains(err.Error(), "key_c has 1 sessions") {
			t.Fatalf("a second session past sessions=1: %v", err)
		}
		if _, err := d.NewSession(ctxB, api.SessionRequest{}); err != nil {
			t.Fatalf("another key is not capped by key_c's limit: %v", err)
		}
		one.Close()
		if _, err := d.NewSession(ctx, api.SessionRequest{}); err != nil {
			t.Fatalf("after closing: %v", err)
		}
	})
}
