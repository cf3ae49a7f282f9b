package heavy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/netns"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// Network is what the engine needs of the egress data plane (internal/egress's proxy) to give its
// sandboxes a governed network. It is defined here, by its consumer; the server adapts the proxy to it.
type Network interface {
	// Attach puts g in force for the connections and DNS questions whose source is guest, until
	// detach is called.
	Attach(guest netip.Addr, g *netpolicy.Guard) (detach func())
	// Addr and DNSAddr are the proxy's TCP listener and its DNS stub. Both must listen on the
	// unspecified address (0.0.0.0, or [::] dual-stack): the redirect of each sandbox's veth lands
	// on its own gateway; the netns rules keep other interfaces away from both ports.
	Addr() netip.AddrPort
	DNSAddr() netip.AddrPort
	// CACertPEM is the installation's CA, which sandboxes trust besides Debian's bundle (for TLS
	// inspection); nil adds nothing.
	CACertPEM() []byte
}

// caBundle is where Debian (and so Python's ssl, pip, requests' fallbacks, curl, git) looks for
// trusted CAs; a networked sandbox gets Debian's bundle plus the installation CA bound over it.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

// caEnv points every client that keeps its own trust store at the bundle.
var caEnv = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS"}

// NetworkPrefix is the prefix of the names a state root's sandbox networks carry: host veths and
// namespace files are NetworkPrefix+index, the nftables table is "agentbox_"+NetworkPrefix (for
// operators looking at `ip link` or `nft list tables`, and for the tests).
func NetworkPrefix(stateDir string) string { return netPrefix(stateDir) }

// netPrefix is the name prefix of a state root's namespaces, veths and nftables table: stable for
// the root (the sweep after a crash finds them) and different between roots on one host.
func netPrefix(stateDir string) string {
	h := sha256.Sum256([]byte(stateDir))
	return "ab" + hex.EncodeToString(h[:3])
}

// netDir holds the namespaces' files under the state root.
func (e *Engine) netDir() string { return filepath.Join(e.cfg.StateDir, "netns") }

// setupNetwork makes the namespace manager and the files networked sandboxes see: resolv.conf naming
// the DNS stub, and the CA bundle. A host that cannot is refused: sandboxes are never given an
// ungoverned network instead.
func (e *Engine) setupNetwork() error {
	n := e.cfg.Network
	for what, ap := range map[string]netip.AddrPort{"proxy": n.Addr(), "DNS stub": n.DNSAddr()} {
		if !ap.IsValid() || ap.Port() == 0 || !ap.Addr().IsUnspecified() {
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("heavy network: the egress %s listens on %v; it must listen on 0.0.0.0:PORT (all addresses), where every sandbox's redirect lands", what, ap))
		}
	}
	m, err := netns.New(netns.Config{Range: e.cfg.NetworkRange, Prefix: netPrefix(e.cfg.StateDir), Dir: e.netDir(),
		ProxyPort: n.Addr().Port(), DNSPort: n.DNSAddr().Port(), Logger: e.log})
	if err != nil {
		return fmt.Errorf("heavy network: %w", err)
	}
	debian, err := os.ReadFile(filepath.Join(e.cfg.Rootfs, caBundle))
	if err != nil {
		m.Close()
		return fmt.Errorf("heavy network: Debian's CA bundle in the root filesystem: %w", err)
	}
	bundle := append(bytes.TrimRight(debian, "\n"), '\n')
	bundle = append(bundle, n.CACertPEM()...)
	if err := os.WriteFile(filepath.Join(e.etcDir, "ca-certificates.crt"), bundle, 0o644); err != nil {
		m.Close()
		return fmt.Errorf("heavy network: %w", err)
	}
	resolv := "# agentbox sandbox: every DNS question goes to the egress DNS stub\nnameserver " + netns.Nameserver.String() + "\n"
	if err := os.WriteFile(filepath.Join(e.etcDir, "resolv.conf"), []byte(resolv), 0o644); err != nil {
		m.Close()
		return fmt.Errorf("heavy network: %w", err)
	}
	e.net = m
	return nil
}

// Networked reports whether the engine's sandboxes have a governed network (Config.Network); without
// one they are offline whatever Guard a request carries.
func (e *Engine) Networked() bool { return e.net != nil }

// makeNamespace gives a sandbox about to be started or restored its own namespace; runsc reads the
// addresses and routes from it and then takes them off the link, so every run and restore needs a
// fresh one.
func (e *Engine) makeNamespace(ctx context.Context, s *sandbox) error {
	if e.net == nil {
		return nil
	}
	ns, err := e.net.Create(ctx)
	if err != nil {
		return err
	}
	s.ns = ns
	return nil
}

// bind attaches the Guard ctx carries (the request's policy) to the sandbox being handed out: the
// proxy answers its guest address under that policy and its traffic is let through. Without a
// Guard nothing is attached and every connection is reset at once. Policies are bound at hand-out,
// never at refill: a pooled sandbox has no network until a request takes it.
func (e *Engine) bind(ctx context.Context, s *sandbox) error {
	if err := e.refuseUngoverned(ctx, s); err != nil {
		return err
	}
	g := netpolicy.GuardOf(ctx)
	if g == nil || s.ns == nil {
		return nil
	}
	detach := e.cfg.Network.Attach(s.ns.Guest(), g)
	if err := s.ns.Attach(); err != nil {
		detach()
		return fmt.Errorf("heavy network: %w", err)
	}
	e.mu.Lock()
	if s.removed { // Close took it meanwhile
		e.mu.Unlock()
		s.ns.Detach()
		detach()
		return errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	s.unbind = func() {
		if err := s.ns.Detach(); err != nil {
			e.log.Warn("heavy network: detaching a sandbox", "id", s.id, "err", err)
		}
		detach()
	}
	e.mu.Unlock()
	return nil
}

// unbindNetwork detaches the sandbox's policy (new connections are reset) and hands back what its
// namespace needs removed after runsc is gone.
func (e *Engine) unbindNetwork(s *sandbox) {
	e.mu.Lock()
	f := s.unbind
	s.unbind = nil
	e.mu.Unlock()
	if f != nil {
		f()
	}
}

// removeNamespace removes the sandbox's namespace once runsc no longer uses it.
func (e *Engine) removeNamespace(s *sandbox) {
	if s.ns == nil {
		return
	}
	if err := s.ns.Close(); err != nil && !errors.Is(err, os.ErrNotExist) {
		e.log.Warn("heavy network: removing a sandbox namespace", "id", s.id, "err", err)
	}
}

// networkSpec adds a networked sandbox's part of the OCI spec: its namespace, IPv6 off, the CA
// bundle over Debian's and the variables that point other trust stores at it.
func (e *Engine) networkSpec(spec map[string]any, s *sandbox) {
	if s.ns == nil {
		return
	}
	linux := spec["linux"].(map[string]any)
	linux["namespaces"] = []map[string]any{{"type": "pid"}, {"type": "network", "path": s.ns.Path()}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}}
	linux["sysctl"] = map[string]string{"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
	spec["mounts"] = append(spec["mounts"].([]map[string]any),
		map[string]any{"destination": caBundle, "type": "bind", "source": filepath.Join(e.etcDir, "ca-certificates.crt"), "options": []string{"bind", "ro"}})
	proc := spec["process"].(map[string]any)
	env := proc["env"].([]string)
	for _, k := range caEnv {
		env = append(env, k+"="+caBundle)
	}
	proc["env"] = env
}

// refuseUngoverned fails closed when ctx's Guard allows traffic but the sandbox has no governed
// network to carry it (the engine has no Config.Network): running it offline would silently ignore
// the policy the caller asked for.
func (e *Engine) refuseUngoverned(ctx context.Context, s *sandbox) error {
	g := netpolicy.GuardOf(ctx)
	if s.ns != nil || g == nil || g.Policy().Offline() {
		return nil
	}
	why := e.cfg.OfflineReason
	if why == "" {
		why = "this engine was started without one"
	}
	return errdefs.With(errdefs.Unavailable, fmt.Errorf("heavy tier: no governed network for this sandbox's network policy: %s", why))
}
