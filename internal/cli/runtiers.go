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
)

// runTiers are the engines and the dispatcher behind one `agentbox run`: the same placement as the
// server's (dispatch.Run), with a nano engine tuned for a single run and a heavy engine that starts
// only if the run goes there.
type runTiers struct {
	*dispatch.Dispatcher
	nano  *nano.Engine
	heavy *lazyHeavy // nil when the heavy tier is not installed
	// noHeavy says why there is no heavy tier (heavy.ErrNotInstalled, wrapped); nil when there is one.
	noHeavy error
}

// openRun opens the tiers for one run. collectMax caps each /output file the run hands back and
// their total; zero means the dispatcher's defaults.
func (e *env) openRun(ctx context.Context, rules *router.Rules, collectMax int64) (*runTiers, error) {
	// One run, nothing to keep warm: no pool and no rotation, and the restored memory snapshot is kept
	// on disk for an hour so that the next run starts from it.
	n, err := nano.New(ctx, nano.Config{PoolSize: -1, RotateAfter: -1, RotateRuns: -1, MaxConcurrent: 1,
		SnapshotMaxAge: time.Hour, Logger: e.log})
	if err != nil {
		return nil, err
	}
	t := &runTiers{nano: n}
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
		t.heavy = &lazyHeavy{ctx: ctx, open: open}
		cfg.Heavy = t.heavy // only when set: a nil *lazyHeavy in the interface would not be nil
	}
	t.Dispatcher = dispatch.New(n, cfg)
	return t, nil
}

// close ends the dispatcher, then the engines (heavy only if it started).
func (t *runTiers) close(ctx context.Context) error {
	t.Dispatcher.Close()
	var err error
	if cerr := t.nano.Close(ctx); cerr != nil {
		err = fmt.Errorf("closing nano engine: %w", cerr)
	}
	if t.heavy != nil {
		if cerr := t.heavy.close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing heavy engine: %w", cerr))
		}
	}
	return err
}

// lazyHeavy is a dispatch.HeavyEngine whose *heavy.Engine is opened by the first call that needs it,
// so that a run which stays on nano never starts the heavy tier.
type lazyHeavy struct {
	// ctx is the run's: Limits, which has no ctx of its own, opens the engine under it.
	ctx  context.Context
	open func(ctx context.Context) (*heavy.Engine, error)

	mu  sync.Mutex
	eng *heavy.Engine // guarded by mu; set once open succeeded
	err error         // guarded by mu; open's failure, which every later call returns too
}

var _ dispatch.HeavyEngine = (*lazyHeavy)(nil)

func (l *lazyHeavy) engine(ctx context.Context) (*heavy.Engine, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.eng == nil && l.err == nil {
		if l.eng, l.err = l.open(ctx); l.err != nil {
			l.eng, l.err = nil, fmt.Errorf("starting the heavy tier: %w", l.err)
		}
	}
	return l.eng, l.err
}

// started is the engine if it was opened, else nil.
func (l *lazyHeavy) started() *heavy.Engine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.eng
}

func (l *lazyHeavy) RunCollect(ctx context.Context, req api.RunRequest, stream heavy.Stream, maxFile, maxTotal int64) (*api.Result, *heavy.Output, error) {
	eng, err := l.engine(ctx)
	if err != nil {
		return nil, nil, err
	}
	return eng.RunCollect(ctx, req, stream, maxFile, maxTotal)
}

func (l *lazyHeavy) NewSession(ctx context.Context, limits api.Limits, packages []string) (*heavy.Session, error) {
	eng, err := l.engine(ctx)
	if err != nil {
		return nil, err
	}
	return eng.NewSession(ctx, limits, packages)
}

// Limits opens the engine: the dispatcher asks for a heavy run's limits only when admitting it.
func (l *lazyHeavy) Limits(req api.Limits) (api.Limits, error) {
	eng, err := l.engine(l.ctx)
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

func (l *lazyHeavy) close(ctx context.Context) error {
	if eng := l.started(); eng != nil {
		return eng.Close(ctx)
	}
	return nil
}
