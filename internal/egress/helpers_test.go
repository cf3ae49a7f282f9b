package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/egress/egresstest"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// fakeGuard is a policy for tests: allowed hosts with their decisions, everything else denied.
type fakeGuard struct {
	allow   map[string]netpolicy.Decision // by canonical host; guarded by mu once in use
	secrets []api.SecretRule
	mode    string
	resp    bool
	ranges  []netip.Prefix

	mu     sync.Mutex
	events []api.NetworkEvent  // guarded by mu
	asked  []netpolicy.Request // guarded by mu
}

func newGuard(hosts ...string) *fakeGuard {
	g := &fakeGuard{allow: map[string]netpolicy.Decision{}}
	for _, h := range hosts {
		g.allow[h] = netpolicy.Decision{Allow: true, Host: h, Verdict: api.VerdictAllowed, Rule: "allow:" + h, Source: "policy", Inspect: true}
	}
	return g
}

func (g *fakeGuard) Decide(r netpolicy.Request) netpolicy.Decision {
	g.mu.Lock()
	g.asked = append(g.asked, r)
	d, ok := g.allow[canonName(r.Host)]
	g.mu.Unlock()
	if ok {
		return d
	}
	return netpolicy.Decision{Verdict: api.VerdictDenied, Rule: "default:deny", Reason: "not in the allow list"}
}

func (g *fakeGuard) wasAsked(r netpolicy.Request) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, q := range g.asked {
		if q == r {
			return true
		}
	}
	return false
}

func (g *fakeGuard) Record(e api.NetworkEvent) {
	g.mu.Lock()
	g.events = append(g.events, e)
	g.mu.Unlock()
}

func (g *fakeGuard) Secrets(host string) []api.SecretRule {
	var out []api.SecretRule
	for _, s := range g.secrets {
		if s.Host == host {
			out = append(out, s)
		}
	}
	return out
}

func (g *fakeGuard) SecretValues() []string {
	var out []string
	for _, s := range g.secrets {
		out = append(out, s.Value)
	}
	return out
}

func (g *fakeGuard) DLP() (mode string, responses bool) { return g.mode, g.resp }

func (g *fakeGuard) RangeAllowed(a netip.Addr) bool {
	for _, p := range g.ranges {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// eventsEventually returns the events once there are at least n (events of forwarded requests are
// recorded when the body is done, which may trail the client by a moment).
func (g *fakeGuard) eventsEventually(t *testing.T, n int) []api.NetworkEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		ev := append([]api.NetworkEvent(nil), g.events...)
		g.mu.Unlock()
		if len(ev) >= n || time.Now().After(deadline) {
			if len(ev) < n {
				t.Fatalf("want %d events, got %d: %+v", n, len(ev), ev)
			}
			return ev
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (g *fakeGuard) lastEvent(t *testing.T) api.NetworkEvent {
	t.Helper()
	ev := g.eventsEventually(t, 1)
	return ev[len(ev)-1]
}

// seen is what an upstream received.
type seen struct {
	mu   sync.Mutex
	reqs []*http.Request // guarded by mu
	body []string        // guarded by mu
}

func (s *seen) last(t *testing.T) (*http.Request, string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		t.Fatal("the upstream received no request")
	}
	return s.reqs[len(s.reqs)-1], s.body[len(s.body)-1]
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

// upstream is an HTTPS (h2 and HTTP/1.1) server on addr with a certificate for names from ca; it
// echoes the protocol and serves a few special paths.
func upstream(t testing.TB, ca *egresstest.CA, addr string, names ...string) (*httptest.Server, *seen) {
	s := &seen{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, r)
		s.body = append(s.body, string(b))
		s.mu.Unlock()
		switch {
		case strings.HasPrefix(r.URL.Path, "/redirect"):
			http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
		case r.URL.Path == "/big":
			w.Write([]byte(strings.Repeat("x", 64<<10)))
		case r.URL.Path == "/card":
			io.WriteString(w, "card 4111111111111111 here")
		default:
			fmt.Fprintf(w, "hello %s from %s", r.Proto, r.Host)
		}
	}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	if ca != nil {
		srv.EnableHTTP2 = true
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, names...)}}
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv, s
}

func portOf(srv *httptest.Server) string {
	return srv.Listener.Addr().(*net.TCPAddr).AddrPort().String()
}

// rig is a proxy with an HTTPS upstream "api.test" and "other.test" on 127.0.0.2, a plain HTTP
// upstream "plain.test" on 127.0.0.3, both pinned, 127.0.0.0/8 allowed.
type rig struct {
	p            *Proxy
	ca           *egresstest.CA
	https, plain *httptest.Server
	seenS, seenP *seen
	ctx          context.Context
	dst          netip.AddrPort // what the "sandbox" dialled: the proxy must ignore it
}

func newRigUnstarted(t testing.TB, mut func(*Config)) *rig {
	t.Helper()
	ca := egresstest.NewCA(t)
	hs, sh := upstream(t, ca, "127.0.0.2:0", "api.test", "other.test")
	ps, sp := upstream(t, nil, "127.0.0.3:0")
	cfg := Config{
		CADir: filepath.Join(t.TempDir(), "ca"),
		Resolve: []string{"api.test=" + portOf(hs), "other.test=" + portOf(hs), "plain.test=" + portOf(ps), "private.test=10.1.2.3", "metadata.test=169.254.169.254",
			"down.test=127.0.0.4:1", "wrongname.test=" + portOf(hs)},
		AllowCIDRs:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		UpstreamCAs: []string{ca.File},
	}
	if mut != nil {
		mut(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	t.Cleanup(func() { p.Close() })
	return &rig{p: p, ca: ca, https: hs, plain: ps, seenS: sh, seenP: sp, ctx: ctx,
		dst: netip.MustParseAddrPort("198.51.100.7:443")}
}

func newRig(t testing.TB, mut func(*Config)) *rig {
	t.Helper()
	r := newRigUnstarted(t, mut)
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) start() error { return r.p.Start(r.ctx) }

var sandboxIP = netip.MustParseAddr("10.200.0.2")

// pair returns the client end of a loopback TCP connection whose server end the proxy handles as a
// connection from src to dst: the transparent path without nftables.
func (r *rig) pair(t testing.TB, src netip.Addr, dst netip.AddrPort) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go r.p.handleConn(r.ctx, s, src, dst)
	return c
}

// client is a sandbox's HTTP client: every connection goes through the proxy's connection handler
// as if redirected by nftables (port 443 for https, 80 for http), and it trusts the proxy's CA.
func (r *rig) client(t testing.TB, src netip.Addr, h2 bool) *http.Client {
	return r.clientWith(t, src, h2, h2)
}

// clientWith is client with keep-alives chosen (HTTP/1.1 clients in tests open a connection per
// request, so each one is decided and its event recorded promptly).
func (r *rig) clientWith(t testing.TB, src netip.Addr, h2, keepAlive bool) *http.Client {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(r.p.CACertPEM())
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			dst := netip.MustParseAddrPort("198.51.100.7:" + port)
			return r.pair(t, src, dst), nil
		},
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2:   h2,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 64,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return string(b)
}

// isReset reports whether err is the connection being reset or closed without an answer.
func isReset(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "reset") || strings.Contains(s, "EOF") || strings.Contains(s, "broken pipe")
}

// clientHello builds a TLS 1.3 ClientHello record by hand (Go's client never sends an IP literal as
// SNI, nor ECH without a real config), with sni (omitted when empty) and extra extension types.
func clientHello(sni string, extra ...uint16) []byte {
	var ext []byte
	addExt := func(typ uint16, data []byte) {
		ext = binary.BigEndian.AppendUint16(ext, typ)
		ext = binary.BigEndian.AppendUint16(ext, uint16(len(data)))
		ext = append(ext, data...)
	}
	if sni != "" {
		var d []byte
		d = binary.BigEndian.AppendUint16(d, uint16(len(sni)+3))
		d = append(d, 0)
		d = binary.BigEndian.AppendUint16(d, uint16(len(sni)))
		d = append(d, sni...)
		addExt(0, d)
	}
	addExt(43, []byte{2, 0x03, 0x04})                                // supported_versions: TLS 1.3
	addExt(10, []byte{0, 2, 0, 0x1d})                                // supported_groups: x25519
	addExt(13, []byte{0, 2, 0x04, 0x03})                             // signature_algorithms: ecdsa_secp256r1_sha256
	ks := append([]byte{0, 36, 0, 0x1d, 0, 32}, make([]byte, 32)...) // key_share x25519
	addExt(51, ks)
	for _, e := range extra {
		data := []byte{0, 1, 2, 3}
		if e == extECH {
			// An outer ECH extension: type, HPKE suite, config id, enc, payload.
			data = []byte{0, 0, 1, 0, 1, 7, 0, 32}
			data = append(data, make([]byte, 32)...)
			data = append(data, 0, 16)
			data = append(data, make([]byte, 16)...)
		}
		addExt(e, data)
	}
	var body []byte
	body = append(body, 0x03, 0x03)
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0)                   // session id
	body = append(body, 0, 2, 0x13, 0x01)    // TLS_AES_128_GCM_SHA256
	body = append(body, 1, 0)                // null compression
	body = binary.BigEndian.AppendUint16(body, uint16(len(ext)))
	body = append(body, ext...)
	hs := []byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	hs = append(hs, body...)
	rec := []byte{0x16, 0x03, 0x01, byte(len(hs) >> 8), byte(len(hs))}
	return append(rec, hs...)
}
