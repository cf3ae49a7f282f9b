package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/entersandbox/agentbox/internal/dlp"
	"github.com/entersandbox/agentbox/internal/egress"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// egressFlags configure the governed network's data plane (docs/egress-proxy.md).
type egressFlags struct {
	resolve, allowCIDR, upstreamCA multiFlag
	caDir                          *string
}

func addEgressFlags(fset *flag.FlagSet) *egressFlags {
	f := &egressFlags{}
	fset.Var(&f.resolve, "egress-resolve", "pin a name for the egress proxy, as /etc/hosts would: NAME=IP[:PORT] (repeatable)")
	fset.Var(&f.allowCIDR, "egress-allow-cidr", "let the ceiling allow this private range, e.g. an internal API (repeatable)")
	fset.Var(&f.upstreamCA, "egress-upstream-ca", "PEM file of a CA the egress proxy trusts for upstream servers, besides the system's (repeatable)")
	f.caDir = fset.String("egress-ca-dir", "", "the installation's TLS inspection CA (created on first start, key 0600; default beside the heavy state root)")
	return f
}

// caDirFor is where the installation's inspection CA lives by default: beside the heavy state root
// (which the heavy engine empties), never inside the sandboxes' root filesystem.
func caDirFor(stateDir string) string {
	if stateDir == "" {
		stateDir = defaultStateDir()
	}
	return filepath.Clean(stateDir) + "-ca"
}

// network is a running governed network: the egress proxy and its DLP engine.
type network struct {
	proxy *egress.Proxy
	stop  context.CancelFunc
}

// startNetwork starts the egress data plane, engine its DLP. listenAll binds
// the proxy and DNS stub on every address (0.0.0.0, a free port): heavy sandboxes' redirects land on
// their veth gateways; nftables keeps everything but the veths away from them.
func startNetwork(ctx context.Context, engine *dlp.Engine, f *egressFlags, stateDir string, listenAll bool, log *slog.Logger) (*network, error) {
	cidrs, err := egress.ParseCIDRs(f.allowCIDR)
	if err != nil {
		return nil, usagef("--egress-allow-cidr: %w", err)
	}
	cfg := egress.Config{CADir: *f.caDir, Resolve: f.resolve, AllowCIDRs: cidrs, UpstreamCAs: f.upstreamCA,
		Inspector: dlpInspector{engine}, Logger: log}
	if cfg.CADir == "" {
		cfg.CADir = caDirFor(stateDir)
	}
	if err := os.MkdirAll(cfg.CADir, 0o700); err != nil {
		return nil, fmt.Errorf("egress CA directory: %w", err)
	}
	if listenAll {
		cfg.ListenTCP, cfg.ListenDNS = "0.0.0.0:0", "0.0.0.0:0"
	}
	p, err := egress.New(cfg)
	if err != nil {
		return nil, usageError{err}
	}
	nctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	if err := p.Start(nctx); err != nil {
		stop()
		p.Close()
		return nil, err
	}
	log.Info("egress proxy serving", "tcp", p.Addr(), "dns", p.DNSAddr(), "ca", filepath.Join(cfg.CADir, egress.CACertFile))
	return &network{proxy: p, stop: stop}, nil
}

// runNetworkRange is the sandboxes' range of `agentbox run`, apart from a server's default one.
var runNetworkRange = netip.MustParsePrefix("10.201.0.0/16")

// startRunNetwork starts the data plane of one `agentbox run` bounded by ceiling.
func startRunNetwork(ctx context.Context, ceiling *netpolicy.Ceiling, f *egressFlags, log *slog.Logger) (*network, error) {
	engine, err := dlp.New(dlp.Config{Packs: ceiling.Packs()})
	if err != nil {
		return nil, usagef("dlp: %w", err)
	}
	return startNetwork(ctx, engine, f, "", heavyInstalled() == nil, log)
}

// close stops the proxy; nil-safe.
func (n *network) close() {
	if n == nil {
		return
	}
	n.stop()
	n.proxy.Close()
}

// nanoHTTP is the nano tier's bridge to the proxy; nil (offline) without a network.
func (n *network) nanoHTTP() nano.HTTP {
	if n == nil {
		return nil
	}
	return nano.HTTPFunc(func(ctx context.Context, g *netpolicy.Guard, r *http.Request) (*http.Response, error) {
		return n.proxy.RoundTrip(ctx, g, r)
	})
}

// dlpInspector adapts the DLP engine to the proxy's Inspector.
type dlpInspector struct{ e *dlp.Engine }

func (d dlpInspector) ScanRequest(r *http.Request, mode string) (egress.DLPReport, error) {
	rep, err := d.e.ScanRequest(r, dlp.Mode(mode))
	return egressReport(rep), err
}

func (d dlpInspector) ScanResponse(r *http.Response, mode string) (egress.DLPReport, error) {
	rep, err := d.e.ScanResponse(r, dlp.Mode(mode))
	return egressReport(rep), err
}

func egressReport(r dlp.Report) egress.DLPReport {
	out := egress.DLPReport{Blocked: r.Blocked, Redacted: r.Redacted, Reason: r.Reason}
	for _, f := range r.Findings {
		out.Findings = append(out.Findings, egress.DLPFinding{Type: f.Type, Rule: f.Rule, Start: f.Start, End: f.End})
	}
	return out
}

// mcpScanner adapts the DLP engine, compiled when first needed, to the MCP relay's Scanner.
type mcpScanner struct {
	engine func() (*dlp.Engine, error)
}

// Scan fails closed: an engine that cannot be compiled finds the whole text (type
// dlp_unavailable), so block refuses and redact removes it.
func (s mcpScanner) Scan(text []byte) []mcphost.Finding {
	e, err := s.engine()
	if err != nil {
		return []mcphost.Finding{{Type: "dlp_unavailable", Rule: "dlp:unavailable", Start: 0, End: len(text)}}
	}
	var out []mcphost.Finding
	for _, f := range e.Scan(text) {
		out = append(out, mcphost.Finding{Type: f.Type, Rule: f.Rule, Start: f.Start, End: f.End})
	}
	return out
}

func (s mcpScanner) Redact(text []byte, fs []mcphost.Finding) []byte {
	in := make([]dlp.Finding, len(fs))
	for i, f := range fs {
		in[i] = dlp.Finding{Type: f.Type, Rule: f.Rule, Start: f.Start, End: f.End}
	}
	return dlp.Redact(text, in)
}
