package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/dlp"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/snapstore"
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
	snapshots    snapshotFlags
}

// snapshotFlags configure time travel's snapshot store (docs/time-travel.md).
type snapshotFlags struct {
	dir                *string
	dense, every       *int
	sessionMB, totalMB *int64
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
		snapshots: snapshotFlags{
			dir:       fset.String("snapshot-dir", "", "time travel's snapshot store (default: the state root's path with -snapshots appended, or a private temporary directory; \"off\": no snapshots); only sessions with pinned steps survive a restart"),
			dense:     fset.Int("snapshot-dense", 0, "latest steps of a session whose snapshots are all kept (default 20)"),
			every:     fset.Int("snapshot-every", 0, "of the older steps, keep those whose number is a multiple of this (default 10; negative: none)"),
			sessionMB: fset.Int64("snapshot-session-mb", 0, "MiB (uncompressed) of snapshots one session may hold before its oldest unpinned steps are thinned (default 512; negative: no cap)"),
			totalMB:   fset.Int64("snapshot-total-mb", 0, "MiB (uncompressed) of snapshots all sessions may hold (default 8192; negative: no cap)"),
		},
	}
}

// openSnapshots opens the snapshot store the flags name; nil when it is off. The returned func
// removes a private temporary store.
func (tf *tierFlags) openSnapshots(log *slog.Logger) (*snapstore.Store, func(), error) {
	dir := *tf.snapshots.dir
	cleanup := func() {}
	switch {
	case dir == "off":
		return nil, cleanup, nil
	case dir == "" && *tf.stateDir != "":
		dir = filepath.Clean(*tf.stateDir) + "-snapshots"
	case dir == "":
		tmp, err := os.MkdirTemp("", "agentbox-snapshots-")
		if err != nil {
			return nil, nil, fmt.Errorf("snapshot store: %w", err)
		}
		dir, cleanup = tmp, func() { os.RemoveAll(tmp) }
	}
	mb := func(v int64) int64 {
		if v > 0 {
			return v << 20
		}
		return v
	}
	st, err := snapstore.Open(snapstore.Config{Dir: dir, Logger: log, Retention: snapstore.Retention{Dense: *tf.snapshots.dense,
		Every: *tf.snapshots.every, SessionBytes: mb(*tf.snapshots.sessionMB), TotalBytes: mb(*tf.snapshots.totalMB)}})
	if err != nil {
		cleanup()
		return nil, nil, usageError{fmt.Errorf("--snapshot-dir: %w", err)}
	}
	return st, cleanup, nil
}

// tiers are the running engines and the dispatcher over them.
type tiers struct {
	*dispatch.Dispatcher
	nano  *nano.Engine
	heavy *heavyEngine
	net   *network                    // the governed network's data plane; nil without a ceiling
	scan  func() (*dlp.Engine, error) // the DLP engine, compiled once when first needed
	// snaps is the snapshot store (nil: time travel off), closed after the dispatcher.
	snaps      *snapstore.Store
	closeSnaps func()
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
	if *tf.heavyMode == "off" {
		cfg.NoHeavyReason = errors.New("the server was started with --heavy off")
	} else {
		hopts := heavyOptions{PoolSize: *tf.heavyPool, PackageIndex: *tf.packageIndex, StateDir: *tf.stateDir, Net: t.net}
		t.heavy, err = openHeavy(ctx, hopts, log)
		switch {
		case err == nil:
		case *tf.heavyMode == "auto" && heavyAbsent(err) != nil:
			// Requests for heavy are refused with this reason, not a generic one.
			log.Info("heavy tier off", "reason", err)
			cfg.NoHeavyReason = heavyAbsent(err)
		default:
			t.nano.Close(context.Background())
			t.net.close()
			return nil, err
		}
	}
	// A nil t.heavy is no heavy tier: dispatch treats a nil engine in the interface as none.
	cfg.Rules, cfg.Logger, cfg.MaxHeavySessions, cfg.Heavy = rules, log, *tf.maxHeavy, t.heavy
	if t.snaps, t.closeSnaps, err = tf.openSnapshots(log); err != nil {
		if t.heavy != nil {
			t.heavy.Close(context.Background())
		}
		t.nano.Close(context.Background())
		t.net.close()
		return nil, err
	}
	cfg.Snapshots = t.snaps
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
	if t.snaps != nil {
		if cerr := t.snaps.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing the snapshot store: %w", cerr))
		}
		t.closeSnaps()
	}
	t.net.close()
	return err
}
