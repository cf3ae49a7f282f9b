// Package egress is the sandboxes' egress data plane: one process-wide transparent TCP proxy and one
// DNS stub. The heavy tier's nftables rules send every TCP connection and UDP/53 datagram of a
// sandbox here; the connection's source address says which sandbox it is, and the Guard attached to
// that address decides. The proxy resolves the names it allows itself, classifies every address
// (SSRF), dials only what it checked, optionally terminates TLS with leaves from a per-installation
// CA to check methods, paths and bodies (DLP), injects brokered secrets, and records one
// api.NetworkEvent per connection or request. The nano tier sends its requests through RoundTrip,
// the same code path. See docs/egress-proxy.md.
package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// Guard is what the proxy needs of one sandbox's policy in force; *netpolicy.Guard is the real one.
type Guard interface {
	Decide(netpolicy.Request) netpolicy.Decision
	Record(api.NetworkEvent)
	// Secrets are the headers to set on requests to host (canonical), values resolved.
	Secrets(host string) []api.SecretRule
	// SecretValues are all brokered secret values: none may go to a host that is not its own.
	SecretValues() []string
	// DLP is the mode in force (api.DLP*; "" is off) and whether responses are scanned too.
	DLP() (mode string, responses bool)
	// RangeAllowed reports whether the policy's ceiling opens a (private, loopback...) address.
	RangeAllowed(netip.Addr) bool
}

var _ Guard = (*netpolicy.Guard)(nil)

// Config configures a Proxy.
type Config struct {
	// ListenTCP and ListenDNS are the addresses of the transparent TCP listener and the DNS stub;
	// empty means 127.0.0.1 on a free port (tests).
	ListenTCP, ListenDNS string
	// CADir holds the per-installation CA (CACertFile, CAKeyFile 0600), created on first start.
	// Required: TLS inspection cannot work without it.
	CADir string
	// Resolve pins names to addresses like /etc/hosts (--egress-resolve NAME=IP[:PORT]); a port
	// replaces the one the sandbox asked for. Pinned addresses are classified like any other.
	Resolve []string
	// AllowCIDRs are ranges the ceiling lets sandboxes reach although they are private, loopback or
	// otherwise refused (--egress-allow-cidr). The sandboxes' own range stays refused.
	AllowCIDRs []netip.Prefix
	// UpstreamCAs are PEM files of CAs trusted for upstream servers besides the system roots
	// (--egress-upstream-ca).
	UpstreamCAs []string
	// SandboxRange is the sandboxes' own addresses, never a destination; zero means 10.200.0.0/16.
	SandboxRange netip.Prefix
	// Inspector scans inspected requests and responses (DLP); nil means no scanning, even when a
	// policy asks for it (the request is then refused under DLP "block", see send).
	Inspector Inspector
	// Lookup resolves names that are not pinned; nil means the system resolver.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// MaxBodyBytes bounds the request body the proxy buffers to scan; zero means 8 MiB. Larger
	// bodies are refused (413) when they must be scanned.
	MaxBodyBytes int64
	// DialTimeout bounds an upstream dial; zero means 10 s.
	DialTimeout time.Duration
	// MaxConnsPerSandbox bounds one sandbox's open connections through the proxy (more are reset
	// and recorded as limit:connections); zero means 256.
	MaxConnsPerSandbox int
	// PeekTimeout is how long the proxy waits for a client's first bytes before treating the
	// connection as a server-speaks-first protocol; zero means 2 s.
	PeekTimeout time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) dialTimeout() time.Duration {
	if c.DialTimeout > 0 {
		return c.DialTimeout
	}
	return 10 * time.Second
}

func (c *Config) peekTimeout() time.Duration {
	if c.PeekTimeout > 0 {
		return c.PeekTimeout
	}
	return 2 * time.Second
}

func (c *Config) maxConns() int {
	if c.MaxConnsPerSandbox > 0 {
		return c.MaxConnsPerSandbox
	}
	return 256
}

func (c *Config) maxBody() int64 {
	if c.MaxBodyBytes > 0 {
		return c.MaxBodyBytes
	}
	return 8 << 20
}

// helloTimeout bounds reading a ClientHello or an HTTP request head once the first byte arrived.
const helloTimeout = 10 * time.Second

// Proxy is the egress data plane. Create it with New, then Start it.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	ca        *authority
	pins      map[string]pin
	sandboxes netip.Prefix
	own       map[netip.Addr]bool // the host's own addresses, read at New
	met       metrics

	mu       sync.Mutex
	attached map[netip.Addr]*attachment // guarded by mu: by sandbox source address
	// transports forward inspected and plain HTTP requests, one per Guard: upstream connections
	// are never shared between sandboxes, and each dials under its own policy's ranges.
	transports map[Guard]*guardTransport // guarded by mu
	roots      *x509.CertPool
	self       []netip.AddrPort   // guarded by mu: the listeners' addresses
	tcp        net.Listener       // guarded by mu
	udp        *net.UDPConn       // guarded by mu
	cancel     context.CancelFunc // guarded by mu: ends the connections' context
	closed     bool               // guarded by mu
	stopped    chan struct{}      // closed by Close
	wg         sync.WaitGroup
}

// attachment is a Guard attached to one sandbox address, with the connections it has open.
type attachment struct {
	g Guard

	mu     sync.Mutex
	names  map[netip.Addr]string // guarded by mu: synthetic addresses the DNS stub answered -> name
	addrs  map[string]netip.Addr // guarded by mu: the reverse
	next   uint32                // guarded by mu: the next synthetic address's offset
	conns  map[net.Conn]struct{} // guarded by mu: open connections, closed on detach
	client int                   // guarded by mu: how many of them the sandbox opened
	closed bool                  // guarded by mu
}

// New checks cfg and loads (or creates) the CA; nothing listens until Start.
func New(cfg Config) (*Proxy, error) {
	if cfg.CADir == "" {
		return nil, errors.New("egress: Config.CADir is required (the per-installation CA lives there)")
	}
	pins, err := parsePins(cfg.Resolve)
	if err != nil {
		return nil, err
	}
	ca, err := loadOrCreateCA(cfg.CADir)
	if err != nil {
		return nil, err
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	for _, f := range cfg.UpstreamCAs {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("egress: upstream CA: %w", err)
		}
		if !roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("egress: upstream CA %s: no PEM certificate in it", f)
		}
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Logger,
		ca:        ca,
		pins:      pins,
		sandboxes: cfg.SandboxRange,
		own:       ownAddrs(),
		attached:  map[netip.Addr]*attachment{},
		stopped:   make(chan struct{}),
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if !p.sandboxes.IsValid() {
		p.sandboxes = netip.MustParsePrefix("10.200.0.0/16")
	}
	p.roots = roots
	p.transports = map[Guard]*guardTransport{}
	p.met.init()
	return p, nil
}

// ownAddrs lists the host's interface addresses: the sandboxes may not reach host services.
func ownAddrs() map[netip.Addr]bool {
	own := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				own[ip.Unmap()] = true
			}
		}
	}
	return own
}

// CACertPEM is the CA certificate sandboxes must trust for TLS inspection (bind-mount it as part
// of their CA bundle).
func (p *Proxy) CACertPEM() []byte { return append([]byte(nil), p.ca.certPEM...) }

// Start binds the TCP listener and the DNS stub and serves them until ctx is done or Close.
func (p *Proxy) Start(ctx context.Context) error {
	tcpAddr, dnsAddr := p.cfg.ListenTCP, p.cfg.ListenDNS
	if tcpAddr == "" {
		tcpAddr = "127.0.0.1:0"
	}
	if dnsAddr == "" {
		dnsAddr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", tcpAddr)
	if err != nil {
		return fmt.Errorf("egress: listen: %w", err)
	}
	ua, err := net.ResolveUDPAddr("udp", dnsAddr)
	if err != nil {
		ln.Close()
		return fmt.Errorf("egress: dns listen: %w", err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		ln.Close()
		return fmt.Errorf("egress: dns listen: %w", err)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ln.Close()
		udp.Close()
		return errors.New("egress: proxy closed")
	}
	// Connections live under their own context, cancelled by Close as well as by ctx, so that
	// in-flight upstream requests stop with them.
	ctx, cancel := context.WithCancel(ctx)
	p.tcp, p.udp, p.cancel = ln, udp, cancel
	p.self = []netip.AddrPort{netAddrPort(ln.Addr()), netAddrPort(udp.LocalAddr())}
	p.mu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
			p.Close()
		case <-p.stopped:
		}
	}()
	p.wg.Add(2)
	go func() { defer p.wg.Done(); p.acceptLoop(ctx, ln) }()
	go func() { defer p.wg.Done(); p.serveDNS(udp) }()
	return nil
}

func netAddrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// Addr is the TCP listener's address (zero before Start).
func (p *Proxy) Addr() netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.self) == 0 {
		return netip.AddrPort{}
	}
	return p.self[0]
}

// DNSAddr is the DNS stub's address (zero before Start).
func (p *Proxy) DNSAddr() netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.self) < 2 {
		return netip.AddrPort{}
	}
	return p.self[1]
}

func (p *Proxy) selfAddrs() []netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.self
}

// Close stops the listeners and every open connection, and returns once their goroutines are done.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.stopped)
	ln, udp, cancel := p.tcp, p.udp, p.cancel
	atts := make([]*attachment, 0, len(p.attached))
	for _, a := range p.attached {
		atts = append(atts, a)
	}
	p.attached = map[netip.Addr]*attachment{}
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if udp != nil {
		udp.Close()
	}
	if cancel != nil {
		cancel()
	}
	for _, a := range atts {
		a.close()
	}
	p.wg.Wait()
	p.mu.Lock()
	trs := p.transports
	p.transports = map[Guard]*guardTransport{}
	p.mu.Unlock()
	for _, t := range trs {
		t.tr.CloseIdleConnections()
	}
	return nil
}

// Attach makes g decide for the sandbox whose traffic comes from src, replacing an earlier
// attachment of src. detach removes it and resets the connections it has open; calling it again, or
// after another Attach of src, does nothing to the newer attachment.
func (p *Proxy) Attach(src netip.Addr, g Guard) (detach func()) {
	src = src.Unmap()
	if isNil(g) {
		// Nothing to decide with: the source stays (or becomes) unattached, refused at once.
		p.mu.Lock()
		old := p.attached[src]
		delete(p.attached, src)
		p.mu.Unlock()
		if old != nil {
			old.close()
		}
		return func() {}
	}
	a := newAttachment(g)
	p.mu.Lock()
	old := p.attached[src]
	p.attached[src] = a
	p.mu.Unlock()
	if old != nil {
		old.close()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			if p.attached[src] == a {
				delete(p.attached, src)
			}
			p.mu.Unlock()
			a.close()
		})
	}
}

func (p *Proxy) attachmentOf(src netip.Addr) *attachment {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.attached[src.Unmap()]
}

func (a *attachment) track(c net.Conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.conns[c] = struct{}{}
	return true
}

// admit tracks the sandbox's connection c unless the attachment is gone or at max; full reports
// the latter.
func (a *attachment) admit(c net.Conn, max int) (ok, full bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false, false
	}
	if a.client >= max {
		return false, true
	}
	a.client++
	a.conns[c] = struct{}{}
	return true, false
}

func (a *attachment) release(c net.Conn) {
	a.mu.Lock()
	a.client--
	delete(a.conns, c)
	a.mu.Unlock()
}

func (a *attachment) untrack(c net.Conn) {
	a.mu.Lock()
	delete(a.conns, c)
	a.mu.Unlock()
}

func (a *attachment) close() {
	a.mu.Lock()
	a.closed = true
	conns := a.conns
	a.conns = map[net.Conn]struct{}{}
	a.mu.Unlock()
	for c := range conns {
		reset(c)
	}
}

func (a *attachment) nameOf(ip netip.Addr) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.names[ip.Unmap()]
}

func newAttachment(g Guard) *attachment {
	return &attachment{g: g, names: map[netip.Addr]string{}, addrs: map[string]netip.Addr{}, conns: map[net.Conn]struct{}{}}
}

// synthetic is the range the DNS stub answers from (RFC 2544 benchmarking space, never a real
// destination): one address per name per sandbox.
var synthetic = netip.MustParsePrefix("198.18.0.0/15")

// addrFor returns the sandbox's synthetic address for name, allocating one. The sandbox connects to
// it; nftables brings the connection here; the proxy maps it back to the name and dials what the
// name resolves to. So the name is known even for non-HTTP TCP, a pinned loopback address works from
// inside the sandbox (whose own loopback it would otherwise be), and no real address is disclosed.
func (a *attachment) addrFor(name string) netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.addrs[name]; ok {
		return ip
	}
	size := uint32(1) << (32 - synthetic.Bits())
	if a.next >= size-2 {
		clear(a.names)
		clear(a.addrs)
		a.next = 0
	}
	a.next++
	base := synthetic.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]) + a.next
	ip := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	a.names[ip] = name
	a.addrs[name] = ip
	return ip
}

func (p *Proxy) acceptLoop(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Warn("egress: accept", "err", err)
			}
			return
		}
		src := netAddrPort(c.RemoteAddr()).Addr()
		dst, err := OriginalDst(c)
		if err != nil {
			// Not redirected: someone connected to the proxy's own address. The proxy then
			// refuses to dial itself.
			dst = netAddrPort(c.LocalAddr())
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handleConn(ctx, c, src, dst)
		}()
	}
}

// reset closes c with an RST, the fast and unmistakable refusal for a TCP client.
func reset(c net.Conn) {
	for {
		switch x := c.(type) {
		case *net.TCPConn:
			_ = x.SetLinger(0)
			_ = x.Close()
			return
		case *prefixConn:
			c = x.Conn
		case *tls.Conn:
			c = x.NetConn()
		default:
			_ = c.Close()
			return
		}
	}
}

// handleConn serves one sandbox connection whose original destination was dst. It is the seam the
// transparent listener uses, and tests call directly.
func (p *Proxy) handleConn(ctx context.Context, c net.Conn, src netip.Addr, dst netip.AddrPort) {
	p.met.conn()
	a := p.attachmentOf(src)
	if a == nil {
		p.met.unattached()
		reset(c)
		return
	}
	ok, full := a.admit(c, p.cfg.maxConns())
	if full {
		p.deny(a, c, api.NetworkEvent{Host: dst.Addr().String(), Port: int(dst.Port())}, "limit:connections",
			fmt.Sprintf("the sandbox has %d connections open", p.cfg.maxConns()))
		return
	}
	if !ok {
		p.met.unattached()
		reset(c)
		return
	}
	defer a.release(c)
	defer c.Close()
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(p.cfg.peekTimeout()))
	first, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	switch {
	case err == nil && first[0] == 0x16:
		p.serveTLS(ctx, a, c, br, dst)
	case err == nil && looksHTTP(br):
		p.serveHTTP(ctx, a, withPrefix(c, nil, br), dst)
	case err == nil || isTimeout(err):
		p.serveRaw(ctx, a, c, br, dst)
	default:
		// closed before saying anything
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// looksHTTP reports whether the client's first bytes are (the start of) an HTTP/1 request line's
// method. It looks only at what is buffered, so a raw client that sent a few bytes and waits is not
// held up.
func looksHTTP(br *bufio.Reader) bool {
	b, _ := br.Peek(min(br.Buffered(), 8))
	for _, m := range []string{"GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "PATCH ", "OPTIONS ", "CONNECT ", "TRACE "} {
		n := min(len(m), len(b))
		if n > 0 && string(b[:n]) == m[:n] && (n == len(m) || len(b) < len(m)) {
			return true
		}
	}
	return false
}

// connEvent starts the NetworkEvent of a connection-level decision.
func connEvent(r netpolicy.Request, d netpolicy.Decision) api.NetworkEvent {
	if d.Allow && d.Verdict == "" {
		d.Verdict = api.VerdictAllowed
	}
	host := d.Host
	if host == "" {
		host = r.Host
	}
	if host == "" && r.Addr.IsValid() {
		host = r.Addr.Addr().String()
	}
	return api.NetworkEvent{Host: host, Port: r.Port, Verdict: d.Verdict, Rule: d.Rule, Source: d.Source, Reason: d.Reason}
}

func (p *Proxy) record(g Guard, e api.NetworkEvent) {
	if e.Verdict == "" {
		e.Verdict = api.VerdictDenied
	}
	p.met.event(e)
	g.Record(e)
}

// deny records a connection-level refusal and resets the connection.
func (p *Proxy) deny(a *attachment, c net.Conn, e api.NetworkEvent, rule, reason string) {
	e.Verdict, e.Rule, e.Reason = api.VerdictDenied, rule, reason
	p.record(a.g, e)
	reset(c)
}

func (p *Proxy) serveTLS(ctx context.Context, a *attachment, c net.Conn, br *bufio.Reader, dst netip.AddrPort) {
	_ = c.SetReadDeadline(time.Now().Add(helloTimeout))
	h, consumed, err := peekHello(br)
	_ = c.SetReadDeadline(time.Time{})
	req := netpolicy.Request{Host: h.sni, Port: int(dst.Port()), Addr: dst}
	ev := connEvent(req, netpolicy.Decision{})
	switch {
	case err != nil:
		p.deny(a, c, ev, "tls:bad-hello", "no readable TLS ClientHello")
		return
	case h.ech:
		p.deny(a, c, ev, "tls:ech", "encrypted ClientHello hides the server name")
		return
	case isIPLiteral(h.sni):
		p.deny(a, c, ev, "tls:ip-literal-sni", "the TLS server name is an IP address")
		return
	}
	if h.sni == "" {
		// No name: decided like raw TCP to the address (a name the DNS stub gave it, if any).
		req.Host = a.nameOf(dst.Addr())
	}
	d := a.g.Decide(req)
	ev = connEvent(req, d)
	if !d.Allow {
		p.deny(a, c, ev, d.Rule, d.Reason)
		return
	}
	conn := withPrefix(c, consumed, br)
	switch {
	case d.Inspect && h.sni != "":
		p.inspect(ctx, a, conn, h.sni, dst)
	case d.Inspect:
		// The policy needs to see inside (methods, paths, DLP); without a server name there is
		// no certificate to present, so the connection cannot be inspected: fail closed.
		p.deny(a, c, ev, "tls:no-sni", "the policy inspects this host, and a TLS client that sends no server name cannot be inspected")
	default:
		p.relay(ctx, a, conn, ev, d)
	}
}

func isIPLiteral(s string) bool {
	if s == "" {
		return false
	}
	_, err := netip.ParseAddr(trimBrackets(s))
	return err == nil
}

func trimBrackets(s string) string {
	if len(s) > 1 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

func (p *Proxy) serveRaw(ctx context.Context, a *attachment, c net.Conn, br *bufio.Reader, dst netip.AddrPort) {
	req := netpolicy.Request{Host: a.nameOf(dst.Addr()), Port: int(dst.Port()), Addr: dst}
	d := a.g.Decide(req)
	ev := connEvent(req, d)
	if !d.Allow {
		p.deny(a, c, ev, d.Rule, d.Reason)
		return
	}
	if d.Inspect {
		// Neither TLS nor HTTP: nothing to check methods, paths or bodies in. Hosts reached over
		// other protocols are allowed with no_inspect.
		p.deny(a, c, ev, "inspect:not-http", "the policy inspects this host, and this connection is neither TLS nor HTTP (allow the host with no_inspect)")
		return
	}
	p.relay(ctx, a, withPrefix(c, nil, br), ev, d)
}

// relay dials the checked address for the decided host (or, for a decision on a bare address, the
// address itself once classified) and copies bytes both ways within the decision's budget.
func (p *Proxy) relay(ctx context.Context, a *attachment, c net.Conn, ev api.NetworkEvent, d netpolicy.Decision) {
	host := d.Host
	if host == "" {
		host = ev.Host
	}
	ap, err := p.resolve(ctx, a.g, host, uint16(ev.Port))
	if err != nil {
		p.refuseConn(a, c, ev, err)
		return
	}
	up, err := p.dialChecked(ctx, a.g, ap)
	if err != nil {
		p.refuseConn(a, c, ev, err)
		return
	}
	defer up.Close()
	if !a.track(up) {
		return
	}
	defer a.untrack(up)
	out, in, over := pipe(c, up, d.Budget)
	ev.BytesOut, ev.BytesIn = out, in
	if over {
		ev.Verdict, ev.Reason = api.VerdictDenied, fmt.Sprintf("byte budget of %d exhausted", d.Budget)
	}
	p.met.bytes(out, in)
	p.record(a.g, ev)
}

func (p *Proxy) refuseConn(a *attachment, c net.Conn, ev api.NetworkEvent, err error) {
	if r, ok := refusalOf(err); ok {
		p.deny(a, c, ev, r.rule, r.reason)
		return
	}
	p.deny(a, c, ev, "upstream:unreachable", err.Error())
}

// pipe copies c<->up until either side ends; budget > 0 bounds the bytes of both directions.
// It returns the bytes sent upstream, received from it, and whether the budget cut it off.
func pipe(c, up net.Conn, budget int64) (out, in int64, over bool) {
	var mu sync.Mutex
	var total int64
	overFlag := false
	take := func(n int) bool { // reports whether n more bytes fit
		mu.Lock()
		defer mu.Unlock()
		if budget > 0 && total+int64(n) > budget {
			overFlag = true
			return false
		}
		total += int64(n)
		return true
	}
	copyDir := func(dst, src net.Conn, count *int64) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !take(n) {
					return
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
				*count += int64(n)
			}
			if err != nil {
				return
			}
		}
	}
	done := make(chan struct{}, 2)
	go func() { copyDir(up, c, &out); closeWrite(up); done <- struct{}{} }()
	go func() { copyDir(c, up, &in); closeWrite(c); done <- struct{}{} }()
	<-done
	mu.Lock()
	stop := overFlag
	mu.Unlock()
	if stop {
		reset(c)
		up.Close()
	}
	<-done
	mu.Lock()
	defer mu.Unlock()
	return out, in, overFlag
}

func closeWrite(c net.Conn) {
	for {
		switch x := c.(type) {
		case interface{ CloseWrite() error }:
			_ = x.CloseWrite()
			return
		case *prefixConn:
			c = x.Conn
		default:
			_ = c.Close()
			return
		}
	}
}

// isNil reports a nil Guard, also a typed nil pointer inside the interface.
func isNil(g Guard) bool {
	if g == nil {
		return true
	}
	v := reflect.ValueOf(g)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// guardTransport is one Guard's forwarding transport.
type guardTransport struct {
	tr   *http.Transport
	used time.Time // guarded by Proxy.mu
}

// transportIdle is how long a Guard's transport outlives its last request.
const transportIdle = 2 * time.Minute

// transportFor returns g's transport, creating it; transports idle for transportIdle are dropped
// on the way (a Guard has no end the proxy could see).
func (p *Proxy) transportFor(g Guard) *http.Transport {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, t := range p.transports {
		if k != g && now.Sub(t.used) > transportIdle {
			t.tr.CloseIdleConnections()
			delete(p.transports, k)
		}
	}
	if t, ok := p.transports[g]; ok {
		t.used = now
		return t.tr
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return p.dialHost(ctx, g, addr)
		},
		TLSClientConfig:       &tls.Config{RootCAs: p.roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       60 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		DisableCompression:    true, // pass the upstream's encoding through untouched
	}
	p.transports[g] = &guardTransport{tr: tr, used: now}
	return tr
}
