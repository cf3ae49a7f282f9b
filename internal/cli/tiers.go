package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/nano"
)

// tierFlags pick and tune the tiers behind `serve` and `mcp`.
type tierFlags struct {
	heavyMode    *string
	heavyPool    *int
	packageIndex *string
	rules        *string
	maxHeavy     *int
}

func addTierFlags(fset *flag.FlagSet) *tierFlags {
	return &tierFlags{
		heavyMode:    fset.String("heavy", "auto", "heavy tier: auto (on when installed), on, off"),
		heavyPool:    fset.Int("heavy-pool", 0, "started heavy sandboxes kept ready (default 2; negative disables)"),
		packageIndex: fset.String("package-index", "", "PEP 503 index URL that heavy-tier `packages` are fetched from (on the host)"),
		rules:        fset.String("rules", "", "routing rules (TOML) for tier auto, over the shipped ones"),
		maxHeavy:     fset.Int("max-heavy-sessions", 0, "sessions open on the heavy tier at once (default 16)"),
	}
}

// tiers are the running engines and the dispatcher over them.
type tiers struct {
	*dispatch.Dispatcher
	nano  *nano.Engine
	heavy *heavy.Engine
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
	t := &tiers{}
	if t.nano, err = nano.New(ctx, nanoCfg); err != nil {
		return nil, err
	}
	if *tf.heavyMode != "off" {
		t.heavy, err = heavy.New(ctx, heavy.Config{PoolSize: *tf.heavyPool, PackageIndex: *tf.packageIndex, Logger: log})
		switch {
		case err == nil:
		case *tf.heavyMode == "auto" && errors.Is(err, heavy.ErrNotInstalled):
			log.Info("heavy tier off", "reason", err)
		default:
			t.nano.Close(context.Background())
			return nil, err
		}
	}
	// A nil t.heavy is no heavy tier: dispatch treats a nil engine in the interface as none.
	cfg.Rules, cfg.Logger, cfg.MaxHeavySessions, cfg.Heavy = rules, log, *tf.maxHeavy, t.heavy
	t.Dispatcher = dispatch.New(t.nano, cfg)
	return t, nil
}

// close ends the sessions, then the engines, which cancels runs still going.
func (t *tiers) close(ctx context.Context) error {
	t.Dispatcher.Close()
	var err error
	if cerr := t.nano.Close(ctx); cerr != nil {
		err = fmt.Errorf("closing nano engine: %w", cerr)
	}
	if t.heavy != nil {
		if cerr := t.heavy.Close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing heavy engine: %w", cerr))
		}
	}
	return err
}
