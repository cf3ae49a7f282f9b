package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sync"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/dlp"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// tierFlags pick and tune the tiers behind `serve` and `mcp`.
type tierFlags struct {
	heavyMode    *string
	heavyPool    *int
	packageIndex *string
	rules        *string
	maxHeavy     *int
	stateDir     *string
	egress       *egressFlags
}

// addTierFlags adds the tier flags; defaultState is --state-dir's default (empty: a private
// directory removed on exit, not swept after a crash).
func addTierFlags(fset *flag.FlagSet, defaultState string) *tierFlags {
	return &tierFlags{
		stateDir:     fset.String("state-dir", defaultState, "heavy tier state root (runsc state, bundles, checkpoints), locked by one server and swept of a crashed one's leftovers at start (docs/lifecycle.md)"),
		heavyMode:    fset.String("heavy", "auto", "heavy tier: auto (on when installed), on, off"),
		heavyPool:    fset.Int("heavy-pool", 0, "started heavy sandboxes kept ready (default 2; negative disables)"),
		packageIndex: fset.String("package-index", "", "PEP 503 index URL that heavy-tier `packages` are fetched from (on the host)"),
		rules:        fset.String("rules", "", "routing rules (TOML) for tier auto, over the shipped ones"),
		maxHeavy:     fset.Int("max-heavy-sessions", 0, "sessions open on the heavy tier at once (default 16)"),
		egress:       addEgressFlags(fset),
	}
}

// tiers are the running engines and the dispatcher over them.
type tiers struct {
	*dispatch.Dispatcher
	nano  *nano.Engine
	heavy *heavyEngine
	net   *network                    // the governed network's data plane; nil without a ceiling
	scan  func() (*dlp.Engine, error) // the DLP engine, compiled once when first needed
	// ceiling bounds every network policy, hosted MCP servers' too; nil: everything offline.
	ceiling *netpolicy.Ceiling
}

// open starts the nano engine, the heavy engine as --heavy says, and a dispatcher over both.
func (tf *tierFlags) open(ctx context.Context, nanoCfg nano.Config, cfg dispatch.Config, log *slog.Logger) (*tiers, error) {
	switch *tf.heavyMode {
	case "auto", "on", "off":
	default:
		return nil, usagef("--heavy %q: want auto, on or off", *tf.heavyMode)
	}
	rules, err := loadRules(*tf.rules)
	if err != nil {
		return nil, usageError{err}
	}
	nanoCfg.Logger = log
	t := &tiers{ceiling: cfg.Ceiling}
	// The DLP engine serves the egress proxy and the hosted MCP servers' relay alike. Compiling its
	// rules takes ~80 ms, so a server without a ceiling does it on the first relayed call.
	packs := cfg.Ceiling.Packs()
	t.scan = sync.OnceValues(func() (*dlp.Engine, error) { return dlp.New(dlp.Config{Packs: packs}) })
	if cfg.Ceiling != nil {
		engine, err := t.scan()
		if err != nil {
			return nil, usagef("dlp: %w", err)
		}
		if t.net, err = startNetwork(ctx, engine, tf.egress, *tf.stateDir, *tf.heavyMode != "off", log); err != nil {
			return nil, err
		}
	}
	nanoCfg.HTTP = t.net.nanoHTTP()
	if t.nano, err = nano.New(ctx, nanoCfg); err != nil {
		t.net.close()
		return nil, err
	}
	if *tf.heavyMode != "off" {
		hopts := heavyOptions{PoolSize: *tf.heavyPool, PackageIndex: *tf.packageIndex, StateDir: *tf.stateDir, Net: t.net}
		t.heavy, err = openHeavy(ctx, hopts, log)
		switch {
		case err == nil:
		case *tf.heavyMode == "auto" && errors.Is(err, errHeavyMissing):
			log.Info("heavy tier off", "reason", err)
		default:
			t.nano.Close(context.Background())
			t.net.close()
			return nil, err
		}
	}
	// A nil t.heavy is no heavy tier: dispatch treats a nil engine in the interface as none.
	cfg.Rules, cfg.Logger, cfg.MaxHeavySessions, cfg.Heavy = rules, log, *tf.maxHeavy, t.heavy
	t.Dispatcher = dispatch.New(t.nano, cfg)
	return t, nil
}

// close ends the sessions and the engines. The engines let what is running finish until ctx is done
// and then stop it; the dispatcher, closed alongside, ends idle sessions at once and busy ones when
// their cell has been stopped (it waits for each under the session's lock).
func (t *tiers) close(ctx context.Context) error {
	dispatched := make(chan struct{})
	go func() {
		t.Dispatcher.Close()
		close(dispatched)
	}()
	var err error
	if cerr := t.nano.Close(ctx); cerr != nil {
		err = fmt.Errorf("closing nano engine: %w", cerr)
	}
	if t.heavy != nil {
		if cerr := t.heavy.Close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing heavy engine: %w", cerr))
		}
	}
	<-dispatched
	t.net.close()
	return err
}
