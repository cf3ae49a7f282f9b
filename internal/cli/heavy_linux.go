package cli

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"

	"github.com/entersandbox/agentbox/internal/egress"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/netns"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// The heavy tier's wiring on Linux, the one OS it runs on (gVisor). heavy_other.go is its
// counterpart elsewhere: there internal/heavy, internal/netns and nftables are not imported at all,
// which is what lets the binary cross-build with CGO off (docs/platforms.md).

// heavyEngine is the heavy tier's engine.
type heavyEngine = heavy.Engine

// errHeavyMissing is what Installed and New fail with when the heavy tier is not installed.
var errHeavyMissing = heavy.ErrNotInstalled

// heavyAbsent says why there is no heavy tier when err (from Installed or New) means there is none
// here rather than a fault: not installed, or this agentbox runs inside gVisor where runsc cannot
// start. The reason is the sentinel alone, without the paths the wrapped error names, since clients
// that ask for heavy are told it. Nil when err is something else.
func heavyAbsent(err error) error {
	switch {
	case errors.Is(err, heavy.ErrNested):
		return heavy.ErrNested
	case errors.Is(err, heavy.ErrNotInstalled):
		return heavy.ErrNotInstalled
	}
	return nil
}

// heavyHint ends a note that a run would have needed the heavy tier.
const heavyHint = "the heavy tier is not installed (build/heavy/build.sh)"

// defaultStateDir is the heavy tier's state root, beside which the CA, the audit log and the hosted
// MCP servers' registrations live.
func defaultStateDir() string { return heavy.DefaultStateDir() }

// keepDir is the state root's subdirectory that a crashed server's sweep keeps.
const keepDir = heavy.KeepDir

// heavyInstalled says whether runsc and the root filesystem are there (only a stat).
func heavyInstalled() error { return heavy.Installed(heavy.Config{}) }

// heavyOptions are the heavy engine's settings that the CLI chooses; zero values are heavy.Config's
// defaults (a nil net: sandboxes offline; a zero range: the server's default range).
type heavyOptions struct {
	PoolSize     int
	PackageIndex string
	StateDir     string
	Net          *network
	NetworkRange netip.Prefix
}

// openHeavy starts a heavy engine. When the host cannot give its sandboxes a governed network it
// fails closed: the sandboxes stay offline, and a request whose policy allows traffic is refused
// naming the missing piece instead of running without the network it asked for.
func openHeavy(ctx context.Context, o heavyOptions, log *slog.Logger) (*heavy.Engine, error) {
	cfg := heavy.Config{PoolSize: o.PoolSize, PackageIndex: o.PackageIndex, StateDir: o.StateDir,
		Network: o.Net.heavyNetwork(), NetworkRange: o.NetworkRange, Logger: log}
	eng, err := heavy.New(ctx, cfg)
	if cfg.Network == nil || !errors.Is(err, netns.ErrUnsupported) {
		return eng, err
	}
	log.Error("heavy tier offline: no governed network on this host", "reason", err)
	cfg.Network, cfg.OfflineReason = nil, err.Error()
	return heavy.New(ctx, cfg)
}

// heavyLauncher runs hosted MCP servers on the heavy tier.
func heavyLauncher(eng *heavy.Engine, log *slog.Logger) mcphost.Launcher {
	return &mcphost.HeavyLauncher{Engine: eng, Logger: log}
}

// heavyNetwork is what the heavy engine needs of the proxy; nil without a network.
func (n *network) heavyNetwork() heavy.Network {
	if n == nil {
		return nil
	}
	return heavyPlane{n.proxy}
}

// heavyPlane adapts the proxy to heavy.Network, whose Attach takes the concrete Guard (a nil one
// attaches nothing: the proxy tells a typed nil apart).
type heavyPlane struct{ *egress.Proxy }

func (h heavyPlane) Attach(guest netip.Addr, g *netpolicy.Guard) func() {
	return h.Proxy.Attach(guest, g)
}
