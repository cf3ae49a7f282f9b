package cli

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/router"
	"github.com/entersandbox/agentbox/internal/vfs"
)

// runTiers are the engines and the dispatcher behind one `agentbox run`: the same placement as the
// server's (dispatch.Run), with each engine started only when the dispatcher first uses it, so a run
// pays for the tier it runs on alone.
type runTiers struct {
	*dispatch.Dispatcher
	nano  *lazyNano
	heavy *lazyHeavy // nil when the heavy tier is not installed
	// noHeavy says why there is no heavy tier (heavy.ErrNotInstalled, wrapped); nil when there is one.
	noHeavy error
}

// openRun opens the tiers for one run. collectMax caps each /output file the run hands back and
// their total; zero means the dispatcher's defaults.
func (e *env) openRun(ctx context.Context, rules *router.Rules, collectMax int64) *runTiers {
	openNano := e.openNano
	if openNano == nil {
		openNano = func(ctx context.Context) (*nano.Engine, error) {
			// One run, nothing to keep warm: no pool and no rotation, and the restored memory
			// snapshot is kept on disk for an hour so that the next run starts from it.
			return nano.New(ctx, nano.Config{PoolSize: -1, RotateAfter: -1, RotateRuns: -1, MaxConcurrent: 1,
				SnapshotMaxAge: time.Hour, Logger: e.log})
		}
	}
	t := &runTiers{nano: &lazyNano{lazy[*nano.Engine]{ctx: ctx, open: openNano}}}
	cfg := dispatch.Config{Rules: rules, Logger: e.log, NanoSlots: 1, HeavySlots: 1,
		MaxFileBytes: collectMax, MaxFilesBytes: collectMax,
		MemoryBudgetMB: -1} // one run: its limits are checked by the engine, there is nothing to share
	// Only a stat here: whether the run needs heavy is the dispatcher's to decide.
	if t.noHeavy = heavy.Installed(heavy.Config{}); t.noHeavy == nil {
		open := e.openHeavy
		if open == nil {
			open = func(ctx context.Context) (*heavy.Engine, error) {
				return heavy.New(ctx, heavy.Config{PoolSize: -1, Logger: e.log})
			}
		}
		t.heavy = &lazyHeavy{lazy[*heavy.Engine]{ctx: ctx, open: open}}
		cfg.Heavy = t.heavy // only when set: a nil *lazyHeavy in the interface would not be nil
	}
	t.Dispatcher = dispatch.New(t.nano, cfg)
	return t
}

// close ends the dispatcher, then the engines that started.
func (t *runTiers) close(ctx context.Context) error {
	t.Dispatcher.Close()
	var err error
	if n := t.nano.started(); n != nil {
		if cerr := n.Close(ctx); cerr != nil {
			err = fmt.Errorf("closing nano engine: %w", cerr)
		}
	}
	if t.heavy == nil {
		return err
	}
	if h := t.heavy.started(); h != nil {
		if cerr := h.Close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing heavy engine: %w", cerr))
		}
	}
	return err
}

// lazy is an engine opened by the first call that needs it.
type lazy[E comparable] struct {
	// ctx is the run's: Limits, which has no ctx of its own, opens the engine under it.
	ctx  context.Context
	open func(ctx context.Context) (E, error)

	mu  sync.Mutex
	eng E     // guarded by mu; set once open succeeded
	err error // guarded by mu; open's failure, which every later call returns too
}

func (l *lazy[E]) engine(ctx context.Context) (E, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var none E
	if l.eng == none && l.err == nil {
		if l.eng, l.err = l.open(ctx); l.err != nil {
			l.eng = none
		}
	}
	return l.eng, l.err
}

// started is the engine if it was opened, else the zero E (nil).
func (l *lazy[E]) started() E {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.eng
}

// lazyNano is a dispatch.NanoEngine over a lazily opened *nano.Engine.
type lazyNano struct{ lazy[*nano.Engine] }

var _ dispatch.NanoEngine = (*lazyNano)(nil)

func (l *lazyNano) RunInstance(ctx context.Context, req api.RunRequest, fn func(*api.Result, *vfs.FS) error, opts ...nano.ExecOption) error {
	eng, err := l.engine(ctx)
	if err != nil {
		return err
	}
	return eng.RunInstance(ctx, req, fn, opts...)
}

func (l *lazyNano) NewSession(ctx context.Context, limits api.Limits, ttl time.Duration) (*nano.Session, error) {
	eng, err := l.engine(ctx)
	if err != nil {
		return nil, err
	}
	return eng.NewSession(ctx, limits, ttl)
}

// Limits opens the engine: the dispatcher resolves a run's limits when admitting it.
func (l *lazyNano) Limits(req api.Limits) (api.Limits, error) {
	eng, err := l.engine(l.ctx)
	if err != nil {
		return req, err
	}
	return eng.Limits(req)
}

func (l *lazyNano) QueueDepth() int {
	if eng := l.started(); eng != nil {
		return eng.QueueDepth()
	}
	return 0
}

func (l *lazyNano) PoolReady() int {
	if eng := l.started(); eng != nil {
		return eng.PoolReady()
	}
	return 0
}

// lazyHeavy is a dispatch.HeavyEngine over a lazily opened *heavy.Engine.
type lazyHeavy struct{ lazy[*heavy.Engine] }

var _ dispatch.HeavyEngine = (*lazyHeavy)(nil)

// heavyEngine is engine with the failure to start said as such.
func (l *lazyHeavy) heavyEngine(ctx context.Context) (*heavy.Engine, error) {
	eng, err := l.engine(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting the heavy tier: %w", err)
	}
	return eng, nil
}

func (l *lazyHeavy) RunCollect(ctx context.Context, req api.RunRequest, stream heavy.Stream, maxFile, maxTotal int64) (*api.Result, *heavy.Output, error) {
	eng, err := l.heavyEngine(ctx)
	if err != nil {
		return nil, nil, err
	}
	return eng.RunCollect(ctx, req, stream, maxFile, maxTotal)
}

func (l *lazyHeavy) NewSession(ctx context.Context, limits api.Limits, packages []string) (*heavy.Session, error) {
	eng, err := l.heavyEngine(ctx)
	if err != nil {
		return nil, err
	}
	return eng.NewSession(ctx, limits, packages)
}

// Limits opens the engine: the dispatcher resolves a heavy run's limits when admitting it.
func (l *lazyHeavy) Limits(req api.Limits) (api.Limits, error) {
	eng, err := l.heavyEngine(l.ctx)
	if err != nil {
		return req, err
	}
	return eng.Limits(req)
}

func (l *lazyHeavy) PoolReady() int {
	if eng := l.started(); eng != nil {
		return eng.PoolReady()
	}
	return 0
}
