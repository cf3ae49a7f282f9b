package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

func TestInspectedHTTPS(t *testing.T) {
	r := newRig(t, nil)
	cases := []struct {
		name, url       string
		allow           []string
		h2              bool
		status          int
		verdict, rule   string
		upstreamReached bool
	}{
		{"allowed host is forwarded over HTTP/1.1", "https://api.test/v1/x", []string{"api.test"}, false, 200, api.VerdictAllowed, "allow:api.test", true},
		{"allowed host is forwarded over h2", "https://api.test/v1/x", []string{"api.test"}, true, 200, api.VerdictAllowed, "allow:api.test", true},
		{"host name case and trailing dot are canonical", "https://API.test./v1/x", []string{"api.test"}, false, 200, api.VerdictAllowed, "allow:api.test", true},
		{"denied host is refused at the connection", "https://other.test/", []string{"api.test"}, false, 0, api.VerdictDenied, "default:deny", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard(tc.allow...)
			detach := r.p.Attach(sandboxIP, g)
			defer detach()
			before := r.seenS.count()
			resp, err := r.client(t, sandboxIP, tc.h2).Get(tc.url)
			if tc.status == 0 {
				if err == nil {
					t.Fatalf("want a reset, got %s", resp.Status)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				if resp.StatusCode != tc.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
				}
				wantProto := "HTTP/1.1"
				if tc.h2 {
					wantProto = "HTTP/2.0"
				}
				if resp.Proto != wantProto || !strings.Contains(body, "from api.test") {
					t.Fatalf("proto %s body %q, want %s from api.test", resp.Proto, body, wantProto)
				}
			}
			if got := r.seenS.count() > before; got != tc.upstreamReached {
				t.Fatalf("upstream reached = %v, want %v", got, tc.upstreamReached)
			}
			e := g.lastEvent(t)
			if e.Verdict != tc.verdict || e.Rule != tc.rule {
				t.Fatalf("event %+v, want verdict %s rule %s", e, tc.verdict, tc.rule)
			}
			if tc.upstreamReached && (e.Method != "GET" || e.Path != "/v1/x" || e.Host != "api.test" || e.BytesIn == 0) {
				t.Fatalf("event %+v lacks method, path, host or bytes", e)
			}
		})
	}
}

func TestDomainFrontingIsRefused(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard("api.test", "other.test")
	defer r.p.Attach(sandboxIP, g)()
	for _, h2 := range []bool{false, true} {
		req, _ := http.NewRequest("GET", "https://api.test/", nil)
		req.Host = "other.test" // SNI says api.test
		resp, err := r.client(t, sandboxIP, h2).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 403 || !strings.Contains(body, ruleHostMismatch) {
			t.Fatalf("h2=%v: %d %q, want 403 naming %s", h2, resp.StatusCode, body, ruleHostMismatch)
		}
	}
	if n := r.seenS.count(); n != 0 {
		t.Fatalf("upstream got %d requests", n)
	}
}

// rawTLS sends hello on a connection the proxy handles and reports how it ended.
func rawTLS(t *testing.T, r *rig, hello []byte) error {
	c := r.pair(t, sandboxIP, r.dst)
	defer c.Close()
	if _, err := c.Write(hello); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return err
}

func TestClientHelloRefusals(t *testing.T) {
	r := newRig(t, nil)
	cases := []struct {
		name, rule string
		hello      []byte
	}{
		{"ECH hides the name", "tls:ech", clientHello("api.test", extECH)},
		{"IP literal SNI", "tls:ip-literal-sni", clientHello("127.0.0.2")},
		{"garbage after a handshake byte", "tls:bad-hello", append([]byte{0x16, 3, 1, 0, 5}, "hello"...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard("api.test", "127.0.0.2")
			defer r.p.Attach(sandboxIP, g)()
			err := rawTLS(t, r, tc.hello)
			if !isReset(err) {
				t.Fatalf("want reset, got %v", err)
			}
			if e := g.lastEvent(t); e.Rule != tc.rule || e.Verdict != api.VerdictDenied {
				t.Fatalf("event %+v, want denied by %s", e, tc.rule)
			}
		})
	}
	t.Run("a plain hello with the same builder is allowed", func(t *testing.T) {
		// Guards the table above: the builder's hellos parse, so the refusals are about ECH/IP.
		g := newGuard("api.test")
		g.allow["api.test"] = netpolicy.Decision{Allow: true, Host: "api.test", Rule: "allow:api.test"}
		defer r.p.Attach(sandboxIP, g)()
		_ = rawTLS(t, r, clientHello("api.test"))
		if e := g.lastEvent(t); e.Rule != "allow:api.test" {
			t.Fatalf("event %+v, want the hello decided by allow:api.test", e)
		}
	})
}

func TestPassthroughTLS(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard()
	g.allow["api.test"] = netpolicy.Decision{Allow: true, Host: "api.test", Rule: "allow:api.test"} // no Verdict: an allow is recorded "allowed" all the same
	defer r.p.Attach(sandboxIP, g)()
	// Not inspected: the sandbox sees the upstream's own certificate, so it trusts the upstream CA.
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Cert)
	c := tls.Client(r.pair(t, sandboxIP, r.dst), &tls.Config{ServerName: "api.test", RootCAs: roots})
	defer c.Close()
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake through the relay: %v", err)
	}
	io.WriteString(c, "GET /p HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); !strings.Contains(body, "hello HTTP/1.1") {
		t.Fatalf("body %q", body)
	}
	c.Close()
	e := g.lastEvent(t)
	if e.Verdict != api.VerdictAllowed || e.Method != "" || e.BytesOut == 0 || e.BytesIn == 0 {
		t.Fatalf("event %+v: want an allowed connection event with bytes and no method", e)
	}
}

func TestPlainHTTP(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard("plain.test")
	defer r.p.Attach(sandboxIP, g)()
	cl := r.client(t, sandboxIP, false)
	resp, err := cl.Get("http://plain.test/a")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "from plain.test") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	resp, err = cl.Get("http://example.test/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 403 || !strings.Contains(body, "default:deny") || resp.Header.Get("X-Agentbox-Rule") != "default:deny" {
		t.Fatalf("%d %q, want 403 naming default:deny", resp.StatusCode, body)
	}
	g.eventsEventually(t, 2)
	m := r.p.Metrics()
	if m.Connections < 2 || m.BytesIn == 0 || m.Verdicts[VerdictRule{api.VerdictDenied, "default:deny"}] != 1 ||
		m.Verdicts[VerdictRule{api.VerdictAllowed, "allow:plain.test"}] != 1 {
		t.Fatalf("metrics %+v", m)
	}
}

func TestRedirectToPrivateAddressIsDecidedPerHop(t *testing.T) {
	r := newRig(t, nil)
	cases := []struct{ name, to, rule string }{
		{"private", "http://private.test/x", "ssrf:private"},
		{"metadata", "http://metadata.test/latest/meta-data/", "ssrf:metadata"},
		{"not allowed", "http://example.test/", "default:deny"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard("api.test", "private.test", "metadata.test")
			defer r.p.Attach(sandboxIP, g)()
			resp, err := r.client(t, sandboxIP, false).Get("https://api.test/redirect?to=" + tc.to)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != 403 || !strings.Contains(body, tc.rule) {
				t.Fatalf("%d %q, want 403 naming %s", resp.StatusCode, body, tc.rule)
			}
			// The first hop's event is recorded when its body is done, maybe after the second's.
			ev := g.eventsEventually(t, 2)
			byHost := map[string]api.NetworkEvent{ev[0].Host: ev[0], ev[1].Host: ev[1]}
			hop2 := strings.Split(strings.TrimPrefix(tc.to, "http://"), "/")[0]
			if byHost["api.test"].Verdict != api.VerdictAllowed || byHost[hop2].Rule != tc.rule || byHost[hop2].Verdict != api.VerdictDenied {
				t.Fatalf("events %+v: want the first hop allowed, the second refused by %s", ev, tc.rule)
			}
		})
	}
}

func TestDNSRebindingIsRefused(t *testing.T) {
	answers := map[string][][]netip.Addr{
		// Public-looking (allowed in tests) for the DNS stub, then the metadata address.
		"rebind.test": {{netip.MustParseAddr("127.0.0.2")}, {netip.MustParseAddr("169.254.169.254")}},
		// One answer mixing an allowed and a private address.
		"mixed.test": {{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("10.9.9.9")}},
	}
	var mu sync.Mutex
	calls := map[string]int{}
	r := newRig(t, func(c *Config) {
		c.Lookup = func(_ context.Context, host string) ([]netip.Addr, error) {
			mu.Lock()
			defer mu.Unlock()
			as := answers[host]
			i := min(calls[host], len(as)-1)
			calls[host]++
			return as[i], nil
		}
	})
	g := newGuard("rebind.test", "mixed.test")
	defer r.p.Attach(sandboxIP, g)()
	if ip, rc := dnsAsk(t, r.p, r.p.attachmentOf(sandboxIP), "rebind.test", 1); rc != 0 || !synthetic.Contains(netip.MustParseAddr(ip)) {
		t.Fatalf("stub answered %q rcode %d", ip, rc)
	}
	for _, tc := range []struct{ host, rule string }{{"rebind.test", "ssrf:metadata"}, {"mixed.test", "ssrf:private"}} {
		resp, err := r.client(t, sandboxIP, false).Get("http://" + tc.host + "/")
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != 403 || !strings.Contains(body, tc.rule) {
			t.Fatalf("%s: %d %q, want 403 naming %s", tc.host, resp.StatusCode, body, tc.rule)
		}
	}
}

func TestSecretsBrokering(t *testing.T) {
	r := newRig(t, nil)
	const token = "Bearer s3cr3t-token-value"
	newG := func() *fakeGuard {
		g := newGuard("api.test", "other.test", "plain.test")
		g.secrets = []api.SecretRule{{Host: "api.test", Header: "Authorization", Value: token}}
		return g
	}
	t.Run("injected for its host, replacing the sandbox's header", func(t *testing.T) {
		defer r.p.Attach(sandboxIP, newG())()
		req, _ := http.NewRequest("GET", "https://api.test/v1", nil)
		req.Header.Set("Authorization", "Bearer guest-made-up")
		resp, err := r.client(t, sandboxIP, false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		got, _ := r.seenS.last(t)
		if v := got.Header.Values("Authorization"); len(v) != 1 || v[0] != token {
			t.Fatalf("upstream saw Authorization %q, want only the brokered one", v)
		}
	})
	t.Run("not injected for another host", func(t *testing.T) {
		defer r.p.Attach(sandboxIP, newG())()
		resp, err := r.client(t, sandboxIP, false).Get("https://other.test/")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if got, _ := r.seenS.last(t); got.Header.Get("Authorization") != "" {
			t.Fatalf("other.test got Authorization %q", got.Header.Get("Authorization"))
		}
	})
	t.Run("never injected over cleartext HTTP", func(t *testing.T) {
		g := newG()
		g.secrets = append(g.secrets, api.SecretRule{Host: "plain.test", Header: "X-Key", Value: "plain-secret-123"})
		defer r.p.Attach(sandboxIP, g)()
		req := must(http.NewRequest("GET", "http://plain.test/", nil))
		req.Header.Set("X-Key", "guest-value")
		resp, err := r.client(t, sandboxIP, false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if got, _ := r.seenP.last(t); got.Header.Get("X-Key") != "" {
			t.Fatalf("plain.test got X-Key %q", got.Header.Get("X-Key"))
		}
		if e := g.lastEvent(t); e.Verdict != api.VerdictAllowed || !strings.Contains(e.Reason, "HTTPS only") {
			t.Fatalf("event %+v", e)
		}
	})
	leaks := []struct {
		name string
		req  func() *http.Request
	}{
		{"in the body", func() *http.Request {
			return must(http.NewRequest("POST", "http://plain.test/up", strings.NewReader("x=s3cr3t-token-value")))
		}},
		{"in the query, percent-encoded", func() *http.Request {
			return must(http.NewRequest("GET", "http://plain.test/?t=Bearer%20s3cr3t-token-value", nil))
		}},
		{"in a header, base64", func() *http.Request {
			q := must(http.NewRequest("GET", "https://other.test/", nil))
			q.Header.Set("X-Data", "czNjcjN0LXRva2VuLXZhbHVl")
			return q
		}},
	}
	for _, tc := range leaks {
		t.Run("blocked going elsewhere "+tc.name, func(t *testing.T) {
			g := newG()
			defer r.p.Attach(sandboxIP, g)()
			before := r.seenS.count() + r.seenP.count()
			resp, err := r.client(t, sandboxIP, false).Do(tc.req())
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != 451 || !strings.Contains(body, ruleSecretLeak) || strings.Contains(body, "s3cr3t") {
				t.Fatalf("%d %q, want 451 naming %s without the value", resp.StatusCode, body, ruleSecretLeak)
			}
			if r.seenS.count()+r.seenP.count() != before {
				t.Fatal("the request reached an upstream")
			}
			if e := g.lastEvent(t); e.Verdict != api.VerdictBlockedDLP || len(e.Detectors) != 1 || e.Detectors[0] != detectorSecret {
				t.Fatalf("event %+v", e)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// fakeInspector flags the test card number; it redacts in place.
type fakeInspector struct{}

const testCard = "4111111111111111"

func (fakeInspector) scan(body []byte, mode string) ([]byte, DLPReport) {
	i := strings.Index(string(body), testCard)
	if i < 0 {
		return body, DLPReport{}
	}
	rep := DLPReport{Findings: []DLPFinding{{Type: "card", Rule: "card", Start: i, End: i + len(testCard)}}}
	switch mode {
	case api.DLPBlock:
		rep.Blocked, rep.Reason = true, "payment card number"
	case api.DLPRedact:
		rep.Redacted = true
		body = []byte(strings.ReplaceAll(string(body), testCard, "[REDACTED:card]"))
	}
	return body, rep
}

func (f fakeInspector) ScanRequest(r *http.Request, mode string) (DLPReport, error) {
	b, _ := io.ReadAll(r.Body)
	if strings.Contains(string(b), "undecodable") {
		return DLPReport{}, errors.New("unknown content encoding") // and the body is consumed
	}
	b, rep := f.scan(b, mode)
	r.Body, r.ContentLength = io.NopCloser(strings.NewReader(string(b))), int64(len(b))
	return rep, nil
}

func (f fakeInspector) ScanResponse(r *http.Response, mode string) (DLPReport, error) {
	b, _ := io.ReadAll(r.Body)
	b, rep := f.scan(b, mode)
	r.Body, r.ContentLength = io.NopCloser(strings.NewReader(string(b))), int64(len(b))
	return rep, nil
}

func TestDLP(t *testing.T) {
	r := newRig(t, func(c *Config) { c.Inspector = fakeInspector{} })
	cases := []struct {
		name, mode, path, body string
		responses              bool
		status                 int
		verdict, upstreamBody  string
		reached                bool
		clientBody             string
	}{
		{"block refuses the request with 451", api.DLPBlock, "/x", "card=" + testCard, false, 451, api.VerdictBlockedDLP, "", false, "dlp:card"},
		{"redact rewrites the request body", api.DLPRedact, "/x", "card=" + testCard, false, 200, api.VerdictRedacted, "card=[REDACTED:card]", true, "hello"},
		{"log sends it unchanged and names the detector", api.DLPLog, "/x", "card=" + testCard, false, 200, api.VerdictAllowed, "card=" + testCard, true, "hello"},
		{"clean body passes block", api.DLPBlock, "/x", "nothing here", false, 200, api.VerdictAllowed, "nothing here", true, "hello"},
		{"responses are blocked when scanned", api.DLPBlock, "/card", "", true, 451, api.VerdictBlockedDLP, "", true, "dlp:card"},
		{"responses are redacted when scanned", api.DLPRedact, "/card", "", true, 200, api.VerdictRedacted, "", true, "card [REDACTED:card] here"},
		{"a scan error blocks under block", api.DLPBlock, "/x", "undecodable", false, 451, api.VerdictBlockedDLP, "", false, ruleDLPError},
		{"a scan error passes the original under log", api.DLPLog, "/x", "undecodable", false, 200, api.VerdictAllowed, "undecodable", true, "hello"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard("api.test")
			g.mode, g.resp = tc.mode, tc.responses
			defer r.p.Attach(sandboxIP, g)()
			before := r.seenS.count()
			resp, err := r.client(t, sandboxIP, false).Post("https://api.test"+tc.path, "text/plain", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.clientBody) {
				t.Fatalf("%d %q, want %d containing %q", resp.StatusCode, body, tc.status, tc.clientBody)
			}
			if reached := r.seenS.count() > before; reached != tc.reached {
				t.Fatalf("upstream reached %v, want %v", reached, tc.reached)
			}
			if tc.upstreamBody != "" {
				if _, got := r.seenS.last(t); got != tc.upstreamBody {
					t.Fatalf("upstream body %q, want %q", got, tc.upstreamBody)
				}
			}
			e := g.lastEvent(t)
			if e.Verdict != tc.verdict {
				t.Fatalf("event %+v, want verdict %s", e, tc.verdict)
			}
			if strings.Contains(tc.body+tc.path, testCard) || tc.path == "/card" {
				if len(e.Detectors) != 1 || e.Detectors[0] != "card" {
					t.Fatalf("event detectors %v, want [card]", e.Detectors)
				}
			}
		})
	}
	t.Run("no engine fails closed under block", func(t *testing.T) {
		r := newRig(t, nil)
		g := newGuard("api.test")
		g.mode = api.DLPBlock
		defer r.p.Attach(sandboxIP, g)()
		resp, err := r.client(t, sandboxIP, false).Get("https://api.test/")
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != 451 || !strings.Contains(body, ruleDLPMissing) {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
	if m := r.p.Metrics(); m.DLPHits["card"] < 4 {
		t.Fatalf("metrics %+v: want the card hits counted", m)
	}
}

func TestBudget(t *testing.T) {
	r := newRig(t, nil)
	t.Run("inspected response is cut at the budget", func(t *testing.T) {
		g := newGuard("api.test")
		d := g.allow["api.test"]
		d.Budget = 1000
		g.allow["api.test"] = d
		defer r.p.Attach(sandboxIP, g)()
		resp, err := r.client(t, sandboxIP, false).Get("https://api.test/big")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil {
			t.Fatal("read 64 KiB through a 1000-byte budget")
		}
		e := g.lastEvent(t)
		if e.Verdict != api.VerdictDenied || !strings.Contains(e.Reason, "budget") || e.BytesIn > 1000 {
			t.Fatalf("event %+v", e)
		}
	})
	t.Run("relayed connection is reset at the budget", func(t *testing.T) {
		g := newGuard()
		g.allow["plain.test"] = netpolicy.Decision{Allow: true, Host: "plain.test", Rule: "allow:plain.test", Budget: 2000}
		defer r.p.Attach(sandboxIP, g)()
		// A raw (not HTTP-looking) client: relayed byte for byte. Its name comes from the DNS stub.
		ip, rc := dnsAsk(t, r.p, r.p.attachmentOf(sandboxIP), "plain.test", 1)
		if rc != 0 || ip == "" {
			t.Fatalf("dns %q %d", ip, rc)
		}
		c := r.pair(t, sandboxIP, netip.MustParseAddrPort(ip+":80"))
		defer c.Close()
		_, _ = c.Write([]byte("XGET / HTTP/1.1\r\n" + strings.Repeat("A: b\r\n", 600) + "\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.ReadAll(c)
		e := g.lastEvent(t)
		if e.Verdict != api.VerdictDenied || !strings.Contains(e.Reason, "budget") || e.BytesOut+e.BytesIn > 2000 {
			t.Fatalf("event %+v", e)
		}
	})
}

func TestUnattachedSourceIsReset(t *testing.T) {
	r := newRig(t, nil)
	t.Run("connection handler", func(t *testing.T) {
		err := rawTLS(t, r, clientHello("api.test"))
		if !isReset(err) {
			t.Fatalf("want a reset, got %v", err)
		}
	})
	t.Run("real listener", func(t *testing.T) {
		c, err := net.Dial("tcp", r.p.Addr().String())
		if isReset(err) {
			return // the RST beat connect's completion
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if !isReset(err) {
			t.Fatalf("want a reset, got %v", err)
		}
	})
	t.Run("detach resets open connections", func(t *testing.T) {
		g := newGuard()
		g.allow["plain.test"] = netpolicy.Decision{Allow: true, Host: "plain.test", Rule: "allow:plain.test"}
		detach := r.p.Attach(sandboxIP, g)
		ip, _ := dnsAsk(t, r.p, r.p.attachmentOf(sandboxIP), "plain.test", 1)
		c := r.pair(t, sandboxIP, netip.MustParseAddrPort(ip+":80"))
		defer c.Close()
		c.Write([]byte("X")) // raw: relayed, the upstream waits for more
		time.Sleep(100 * time.Millisecond)
		detach()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		if err != nil && !isReset(err) {
			t.Fatalf("want the connection ended, got %v", err)
		}
		if errors.Is(err, context.DeadlineExceeded) || isTimeoutErr(err) {
			t.Fatal("the connection outlived detach")
		}
	})
	t.Run("attaching a nil guard leaves the source refused", func(t *testing.T) {
		var nilGuard *fakeGuard
		for _, g := range []Guard{nil, nilGuard} {
			r.p.Attach(sandboxIP, newGuard("api.test"))
			r.p.Attach(sandboxIP, g)()
			if err := rawTLS(t, r, clientHello("api.test")); !isReset(err) {
				t.Fatalf("want a reset, got %v", err)
			}
		}
	})
	if m := r.p.Metrics(); m.Unattached < 2 {
		t.Fatalf("metrics %+v: want 2 unattached", m)
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestRoundTripForNano(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard("api.test")
	g.secrets = []api.SecretRule{{Host: "api.test", Header: "X-Key", Value: "k-123456789"}}
	req := must(http.NewRequest("POST", "https://api.test/v1/up?q=1", strings.NewReader("data")))
	resp, err := r.p.RoundTrip(context.Background(), g, req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "from api.test") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	got, body := r.seenS.last(t)
	if got.Header.Get("X-Key") != "k-123456789" || body != "data" || got.URL.RawQuery != "q=1" {
		t.Fatalf("upstream saw %v %q %q", got.Header, body, got.URL.RawQuery)
	}
	if e := g.lastEvent(t); e.Verdict != api.VerdictAllowed || e.Method != "POST" || e.Path != "/v1/up" || e.BytesOut != 4 {
		t.Fatalf("event %+v", e)
	}
	resp, err = r.p.RoundTrip(context.Background(), g, must(http.NewRequest("GET", "http://private.test/", nil)))
	if err != nil {
		t.Fatal(err)
	}
	if readAll(t, resp); resp.StatusCode != 403 {
		t.Fatalf("not allowed host: %d", resp.StatusCode)
	}
	for _, bad := range []string{"ftp://api.test/", "/relative"} {
		if _, err := r.p.RoundTrip(context.Background(), g, must(http.NewRequest("GET", bad, nil))); err == nil {
			t.Fatalf("%s: want an error", bad)
		}
	}
}

func TestLooksHTTP(t *testing.T) {
	cases := []struct {
		in   string
		want bool
	}{
		{"GET / HTTP/1.1\r\n", true},
		{"POST /x", true},
		{"OPTIONS * HTTP/1.1", true},
		{"GE", true}, // a request line split across segments
		{"SSH-2.0-OpenSSH", false},
		{"\x00\x00\x00\x08", false},
		{"get / HTTP/1.1", false},
	}
	for _, tc := range cases {
		t.Run(strings.TrimSpace(tc.in), func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			br.Peek(1)
			if got := looksHTTP(br); got != tc.want {
				t.Fatalf("looksHTTP(%q) = %v", tc.in, got)
			}
		})
	}
}

func TestUpstreamFailures(t *testing.T) {
	r := newRig(t, nil)
	cases := []struct{ name, url, why string }{
		{"nothing listens", "http://down.test/", "refused"},
		{"the upstream certificate does not verify", "https://wrongname.test/", "certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard("down.test", "wrongname.test")
			defer r.p.Attach(sandboxIP, g)()
			resp, err := r.client(t, sandboxIP, false).Get(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, resp); resp.StatusCode != 502 || !strings.Contains(body, tc.why) {
				t.Fatalf("transparent: %d %q, want 502 saying %q", resp.StatusCode, body, tc.why)
			}
			if e := g.lastEvent(t); e.Rule != ruleUpstream || e.Verdict != api.VerdictDenied {
				t.Fatalf("event %+v", e)
			}
			_, err = r.p.RoundTrip(context.Background(), g, must(http.NewRequest("GET", tc.url, nil)))
			if errdefs.ClassOf(err) != errdefs.Unavailable || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("RoundTrip: %v, want unavailable saying %q", err, tc.why)
			}
		})
	}
	t.Run("cancelling the context stops a RoundTrip", func(t *testing.T) {
		// An upstream that accepts and never answers.
		ln, err := net.Listen("tcp", "127.0.0.5:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		r := newRig(t, func(c *Config) { c.Resolve = append(c.Resolve, "hang.test="+ln.Addr().String()) })
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = r.p.RoundTrip(ctx, newGuard("hang.test"), must(http.NewRequest("GET", "http://hang.test/", nil)))
		if err == nil || time.Since(start) > 20*time.Second {
			t.Fatalf("RoundTrip returned %v after %v", err, time.Since(start))
		}
	})
}

func TestConnectIsRefused(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard("api.test")
	defer r.p.Attach(sandboxIP, g)()
	c := r.pair(t, sandboxIP, netip.MustParseAddrPort("198.51.100.7:80"))
	defer c.Close()
	io.WriteString(c, "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 403 || !strings.Contains(body, ruleConnect) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func TestPolicyChangeAppliesToTheNextRequest(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard("api.test")
	defer r.p.Attach(sandboxIP, g)()
	c := r.client(t, sandboxIP, true) // h2: both requests share one inspected connection
	get := func() int {
		resp, err := c.Get("https://api.test/")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		return resp.StatusCode
	}
	if s := get(); s != 200 {
		t.Fatalf("before the change: %d", s)
	}
	g.mu.Lock()
	delete(g.allow, "api.test") // as Guard.Swap would
	g.mu.Unlock()
	if s := get(); s != 403 {
		t.Fatalf("after the change: %d, want 403", s)
	}
	if m := r.p.Metrics(); m.Connections != 1 {
		t.Fatalf("%d connections, want both requests on one", m.Connections)
	}
}

func TestAbsoluteFormIsDecidedOnWhatIsDialled(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard("plain.test")
	defer r.p.Attach(sandboxIP, g)()
	c := r.pair(t, sandboxIP, netip.MustParseAddrPort("198.51.100.7:80"))
	defer c.Close()
	// The request line names another host than the Host header: the one net/http takes (the
	// request line's) is both decided and dialled.
	io.WriteString(c, "GET http://example.test/x HTTP/1.1\r\nHost: plain.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 403 || !strings.Contains(body, "example.test") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if n := r.seenP.count(); n != 0 {
		t.Fatalf("plain.test got %d requests", n)
	}
}

func TestConnectionsPerSandboxAreBounded(t *testing.T) {
	r := newRig(t, func(c *Config) { c.MaxConnsPerSandbox = 2; c.PeekTimeout = time.Minute })
	g := newGuard()
	defer r.p.Attach(sandboxIP, g)()
	// Two connections that say nothing hold their slots (the proxy waits for their first bytes).
	for i := 0; i < 2; i++ {
		c := r.pair(t, sandboxIP, r.dst)
		defer c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	a := r.p.attachmentOf(sandboxIP)
	for {
		a.mu.Lock()
		n := a.client
		a.mu.Unlock()
		if n == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := rawTLS(t, r, clientHello("api.test")); !isReset(err) {
		t.Fatalf("third connection: want a reset, got %v", err)
	}
	if e := g.lastEvent(t); e.Rule != "limit:connections" {
		t.Fatalf("event %+v", e)
	}
}

func TestRelayedConnectionsAreCheckedToo(t *testing.T) {
	r := newRig(t, nil)
	cases := []struct {
		name, host, rule string
		first            []byte
	}{
		{"TLS without inspection to a private address", "private.test", "ssrf:private", clientHello("private.test")},
		{"TLS without inspection to the metadata address", "metadata.test", "ssrf:metadata", clientHello("metadata.test")},
		{"TLS without inspection to a dead upstream", "down.test", "upstream:unreachable", clientHello("down.test")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard()
			g.allow[tc.host] = netpolicy.Decision{Allow: true, Host: tc.host, Rule: "allow:" + tc.host}
			defer r.p.Attach(sandboxIP, g)()
			if err := rawTLS(t, r, tc.first); !isReset(err) {
				t.Fatalf("want a reset, got %v", err)
			}
			if e := g.lastEvent(t); e.Rule != tc.rule || e.Verdict != api.VerdictDenied {
				t.Fatalf("event %+v, want denied by %s", e, tc.rule)
			}
		})
	}
	t.Run("what cannot be inspected is refused when the policy inspects", func(t *testing.T) {
		g := newGuard("plain.test") // Inspect: true
		defer r.p.Attach(sandboxIP, g)()
		ip := r.p.attachmentOf(sandboxIP).addrFor("plain.test")
		for _, tc := range []struct {
			rule  string
			first []byte
		}{{"inspect:not-http", []byte{0, 0, 0, 8}}, {"tls:no-sni", clientHello("")}} {
			c := r.pair(t, sandboxIP, netip.AddrPortFrom(ip, 443))
			c.Write(tc.first)
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !isReset(err) {
				t.Fatalf("%s: want a reset, got %v", tc.rule, err)
			}
			c.Close()
			if e := g.lastEvent(t); e.Rule != tc.rule || e.Host != "plain.test" {
				t.Fatalf("event %+v, want %s for plain.test", e, tc.rule)
			}
		}
	})
	t.Run("raw TCP to a name resolving privately", func(t *testing.T) {
		g := newGuard()
		g.allow["private.test"] = netpolicy.Decision{Allow: true, Host: "private.test", Rule: "allow:private.test"}
		defer r.p.Attach(sandboxIP, g)()
		// The stub refuses the name itself (NXDOMAIN)...
		if _, rc := dnsAsk(t, r.p, r.p.attachmentOf(sandboxIP), "private.test", 1); rc != 3 {
			t.Fatalf("rcode %v, want NXDOMAIN", rc)
		}
		// ...and a connection naming it some other way (an address the sandbox learned elsewhere,
		// mapped to the name) is refused at dial time.
		ip := r.p.attachmentOf(sandboxIP).addrFor("private.test")
		c := r.pair(t, sandboxIP, netip.AddrPortFrom(ip, 5432))
		defer c.Close()
		c.Write([]byte{0, 0, 0, 8})
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("want a reset, got %v", err)
		}
		if e := g.lastEvent(t); e.Rule != "ssrf:private" {
			t.Fatalf("event %+v", e)
		}
	})
}

func TestCancellingStartStopsEverything(t *testing.T) {
	r := newRigUnstarted(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	g := newGuard()
	g.allow["plain.test"] = netpolicy.Decision{Allow: true, Host: "plain.test", Rule: "allow:plain.test"}
	r.p.Attach(sandboxIP, g)
	ip := r.p.attachmentOf(sandboxIP).addrFor("plain.test")
	c := r.pair(t, sandboxIP, netip.AddrPortFrom(ip, 80))
	defer c.Close()
	c.Write([]byte("X")) // a relayed connection the upstream keeps open, waiting for more
	time.Sleep(100 * time.Millisecond)
	cancel()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); isTimeoutErr(err) {
		t.Fatal("the relayed connection outlived the proxy's context")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", r.p.Addr().String())
		if err != nil {
			break // the listener is gone
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts after the context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
