//go:build !linux

package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/tier"
)

// The heavy tier off Linux: gVisor runs on Linux only, so this build has no heavy engine and does
// not import internal/heavy, internal/netns or nftables (heavy_linux.go is the real wiring). The
// nano tier, the server, the MCP server and the governed network's proxy for nano work as on Linux.

// heavyEngine is never constructed here: openHeavy always fails, so a tiers' heavy stays nil.
type heavyEngine struct{ tier.Engine }

// errHeavyMissing says why, and where the heavy tier does run. --tier heavy, --heavy on and a
// session that needs heavy answer with it; --heavy auto logs it and serves nano alone.
var errHeavyMissing = errdefs.With(errdefs.Unavailable, fmt.Errorf(
	"the heavy tier runs on Linux only (gVisor), not on %s: run the linux agentbox in a Linux VM such as Lima or WSL2 for it (docs/platforms.md)", runtime.GOOS))

// heavyHint ends a note that a run would have needed the heavy tier.
const heavyHint = "the heavy tier runs on Linux only (docs/platforms.md)"

// defaultStateDir is where the CA, the audit log and the hosted MCP servers' registrations live: the
// user's cache directory, as the heavy tier's state root is for a user on Linux.
func defaultStateDir() string {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "agentbox", "state")
}

// keepDir is the state root's subdirectory the audit log lives in (heavy.KeepDir on Linux).
const keepDir = "audit"

func heavyInstalled() error { return errHeavyMissing }

// heavyAbsent says why there is no heavy tier when err means there is none (always, here), as in
// heavy_linux.go; nil for any other error.
func heavyAbsent(err error) error {
	if errors.Is(err, errHeavyMissing) {
		return errHeavyMissing
	}
	return nil
}

// heavyOptions mirror heavy_linux.go's; nothing reads them here.
type heavyOptions struct {
	PoolSize     int
	PackageIndex string
	StateDir     string
	Net          *network
	NetworkRange netip.Prefix
}

func openHeavy(context.Context, heavyOptions, *slog.Logger) (*heavyEngine, error) {
	return nil, errHeavyMissing
}

// heavyLauncher is never called: a nil heavy engine registers no heavy launcher.
func heavyLauncher(*heavyEngine, *slog.Logger) mcphost.Launcher {
	panic(errors.New("heavyLauncher: no heavy tier on " + runtime.GOOS))
}
