package cli

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/router"
	"github.com/entersandbox/agentbox/internal/tier"
)

// runTiers are the engines and the dispatcher behind one `agentbox run`: the same placement as the
// server's (dispatch.Run), with each engine started only when the dispatcher first uses it, so a run
// pays for the tier it runs on alone.
type runTiers struct {
	*dispatch.Dispatcher
	nano  *lazy
	heavy *lazy // nil when the heavy tier is not installed
	// noHeavy says why there is no heavy tier (errHeavyMissing, wrapped); nil when there is one.
	noHeavy error
}

// openRun opens the tiers for one run. collectMax caps each /output file the run hands back and
// their total; zero means the dispatcher's defaults. ceiling bounds the run's network (nil: offline
// only) and net carries it (nil: offline).
func (e *env) openRun(ctx context.Context, rules *router.Rules, collectMax int64, ceiling *netpolicy.Ceiling, net *network) *runTiers {
	openNano := e.openNano
	if openNano == nil {
		openNano = func(ctx context.Context) (*nano.Engine, error) {
			// One run, nothing to keep warm: no pool and no rotation, and the restored memory
			// snapshot is kept on disk for an hour so that the next run starts from it.
			return nano.New(ctx, nano.Config{PoolSize: -1, RotateAfter: -1, RotateRuns: -1, MaxConcurrent: 1,
				SnapshotMaxAge: time.Hour, HTTP: net.nanoHTTP(), Logger: e.log})
		}
	}
	t := &runTiers{nano: &lazy{ctx: ctx, what: "nano", open: func(ctx context.Context) (tier.Engine, error) {
		eng, err := openNano(ctx)
		if err != nil {
			return nil, err // not eng: a nil *nano.Engine in the interface would not be nil
		}
		return eng, nil
	}}}
	cfg := dispatch.Config{Rules: rules, Logger: e.log, NanoSlots: 1, HeavySlots: 1, Ceiling: ceiling,
		MaxFileBytes: collectMax, MaxFilesBytes: collectMax,
		MemoryBudgetMB: -1} // one run: its limits are checked by the engine, there is nothing to share
	// Only a stat here: whether the run needs heavy is the dispatcher's to decide.
	if t.noHeavy = heavyInstalled(); t.noHeavy == nil {
		open := e.openHeavy
		if open == nil {
			open = func(ctx context.Context) (*heavyEngine, error) {
				// Its own range: a server on this host holds the default one.
				return openHeavy(ctx, heavyOptions{PoolSize: -1, Net: net, NetworkRange: runNetworkRange}, e.log)
			}
		}
		t.heavy = &lazy{ctx: ctx, what: "heavy", open: func(ctx context.Context) (tier.Engine, error) {
			eng, err := open(ctx)
			if err != nil {
				return nil, err
			}
			return eng, nil
		}}
		cfg.Heavy = t.heavy // only when set: a nil *lazy in the interface would not be nil
	}
	t.Dispatcher = dispatch.New(t.nano, cfg)
	return t
}

// close ends the dispatcher, then the engines that started.
func (t *runTiers) close(ctx context.Context) error {
	t.Dispatcher.Close()
	var err error
	if cerr := t.nano.Close(ctx); cerr != nil {
		err = fmt.Errorf("closing nano engine: %w", cerr)
	}
	if t.heavy == nil {
		return err
	}
	if cerr := t.heavy.Close(ctx); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing heavy engine: %w", cerr))
	}
	return err
}

// lazy is a tier.Engine opened by the first call that needs it.
type lazy struct {
	// ctx is the run's: Limits, which has no ctx of its own, opens the engine under it.
	ctx  context.Context
	open func(ctx context.Context) (tier.Engine, error)
	// what names the tier in the error of a failed start.
	what string

	mu  sync.Mutex
	eng tier.Engine // guarded by mu; set once open succeeded
	err error       // guarded by mu; open's failure, which every later call returns too
}

var _ tier.Engine = (*lazy)(nil)

func (l *lazy) engine(ctx context.Context) (tier.Engine, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.eng == nil && l.err == nil {
		eng, err := l.open(ctx)
		if err != nil {
			l.err = fmt.Errorf("starting the %s tier: %w", l.what, err)
		} else {
			l.eng = eng
		}
	}
	return l.eng, l.err
}

// started is the engine if it was opened, else nil.
func (l *lazy) started() tier.Engine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.eng
}

func (l *lazy) RunCollect(ctx context.Context, req api.RunRequest, stream tier.Stream, maxFile, maxTotal int64) (*api.Result, *tier.Collected, error) {
	eng, err := l.engine(ctx)
	if err != nil {
		return nil, nil, err
	}
	return eng.RunCollect(ctx, req, stream, maxFile, maxTotal)
}

func (l *lazy) NewSession(ctx context.Context, limits api.Limits, packages []string) (tier.Session, error) {
	eng, err := l.engine(ctx)
	if err != nil {
		return nil, err
	}
	return eng.NewSession(ctx, limits, packages)
}

// Limits opens the engine: the dispatcher resolves a run's limits when admitting it.
func (l *lazy) Limits(req api.Limits) (api.Limits, error) {
	eng, err := l.engine(l.ctx)
	if err != nil {
		return req, err
	}
	return eng.Limits(req)
}

func (l *lazy) PoolReady() int {
	if eng := l.started(); eng != nil {
		return eng.PoolReady()
	}
	return 0
}

// QueueDepth is the nano engine's, once it started (dispatch's stats look for it).
func (l *lazy) QueueDepth() int {
	if q, ok := l.started().(interface{ QueueDepth() int }); ok {
		return q.QueueDepth()
	}
	return 0
}

// Close closes the engine if it started; runTiers.close calls it after the dispatcher's.
func (l *lazy) Close(ctx context.Context) error {
	if eng := l.started(); eng != nil {
		return eng.Close(ctx)
	}
	return nil
}
