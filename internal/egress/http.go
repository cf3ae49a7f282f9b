package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/hop"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// Inspector is the DLP engine as the proxy uses it (internal/dlp implements it). A scan may read the
// message's body and must leave a readable one behind: the redacted body, with ContentLength fixed,
// when it reports Redacted. mode is one of api.DLPBlock, DLPRedact, DLPLog.
type Inspector interface {
	ScanRequest(r *http.Request, mode string) (DLPReport, error)
	ScanResponse(r *http.Response, mode string) (DLPReport, error)
}

// DLPReport is what a scan found and did.
type DLPReport struct {
	Findings []DLPFinding
	// Blocked says the message must not be sent; Redacted that its body was rewritten.
	Blocked, Redacted bool
	Reason            string
}

// DLPFinding is one detector hit, located by byte span, never carrying the value.
type DLPFinding struct {
	Type, Rule string
	Start, End int
}

// Rules of the refusals the HTTP path makes itself (the policy's come from Decision.Rule).
const (
	ruleHostMismatch = "tls:host-mismatch"
	ruleSecretLeak   = "secret:leak"
	ruleBodyLimit    = "limit:body"
	ruleConnect      = "http:connect"
	ruleUpstream     = "upstream:error"
	ruleDLPMissing   = "dlp:unavailable"
	ruleDLPError     = "dlp:error"
	detectorSecret   = "brokered_secret"
)

// RoundTrip sends one request from a sandbox under g through the same path as intercepted traffic:
// the policy decides, the proxy resolves and classifies the host, brokered secrets are injected,
// DLP scans, the event is recorded when the response body is closed. Refusals come back as responses
// (403 policy, 451 DLP, 413) whose body names the rule, as a transparent client would see them; an
// error means req itself is unusable (errdefs.InvalidArgument) or the destination failed: it did not
// resolve, answer or verify, or ctx ended (errdefs.Unavailable). It is the nano tier's bridge.
func (p *Proxy) RoundTrip(ctx context.Context, g Guard, req *http.Request) (*http.Response, error) {
	if req == nil || req.URL == nil {
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("egress: no request URL"))
	}
	scheme := strings.ToLower(req.URL.Scheme)
	if scheme != "http" && scheme != "https" {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("egress: URL scheme %q: only http and https", req.URL.Scheme))
	}
	if req.URL.Host == "" {
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("egress: the URL has no host"))
	}
	r := req.Clone(ctx)
	if r.Host == "" {
		r.Host = req.URL.Host
	}
	resp, err := p.send(ctx, g, r, scheme, netip.AddrPort{})
	if err != nil {
		return nil, errdefs.With(errdefs.Unavailable, err)
	}
	return resp, nil
}

// serveHTTP serves plain HTTP/1 from a sandbox connection.
func (p *Proxy) serveHTTP(ctx context.Context, a *attachment, c net.Conn, dst netip.AddrPort) {
	p.serveOne(ctx, c, p.handler(ctx, a, "http", dst, ""))
}

// inspect terminates TLS with a leaf for sni and serves HTTP/1.1 or HTTP/2 inside it.
func (p *Proxy) inspect(ctx context.Context, a *attachment, c net.Conn, sni string, dst netip.AddrPort) {
	sni = canonName(sni)
	tc := tls.Server(c, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return p.ca.leaf(sni)
		},
	})
	_ = c.SetDeadline(time.Now().Add(helloTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		// Usually a sandbox that does not trust the installation's CA: say so in the event.
		p.deny(a, c, api.NetworkEvent{Host: sni, Port: int(dst.Port())}, "tls:handshake",
			fmt.Sprintf("TLS inspection handshake failed (does the client trust the agentbox CA?): %v", err))
		return
	}
	_ = c.SetDeadline(time.Time{})
	// net/http serves h2 itself when it is handed the *tls.Conn that negotiated it.
	p.serveOne(ctx, tc, p.handler(ctx, a, "https", dst, sni))
}

// serveOne serves HTTP on the single connection c until it is closed.
func (p *Proxy) serveOne(ctx context.Context, c net.Conn, h http.Handler) {
	l := newConnListener(c)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: helloTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.closed()
			}
		},
	}
	_ = srv.Serve(l)
}

// handler answers a sandbox's requests on one connection; sni, when set, is the TLS server name the
// connection was decided on and every request's Host must equal it (no domain fronting).
func (p *Proxy) handler(ctx context.Context, a *attachment, scheme string, dst netip.AddrPort, sni string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var resp *http.Response
		switch {
		case r.Method == http.MethodConnect:
			resp = p.refuse(a.g, reqEvent(r, dst), http.StatusForbidden, api.VerdictDenied, ruleConnect,
				"CONNECT is not served: connect to the destination directly, the network is transparent")
		case sni != "" && canonName(hostOnly(r.Host)) != sni:
			resp = p.refuse(a.g, reqEvent(r, dst), http.StatusForbidden, api.VerdictDenied, ruleHostMismatch,
				fmt.Sprintf("request host %q differs from the TLS server name %q", hostOnly(r.Host), sni))
		default:
			var err error
			if resp, err = p.send(ctx, a.g, r, scheme, dst); err != nil {
				resp = answer(hostOnly(r.Host), http.StatusBadGateway, ruleUpstream, err.Error())
			}
		}
		writeResponse(w, resp)
	})
}

func writeResponse(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	if resp.ContentLength >= 0 && h.Get("Content-Length") == "" {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush() // streamed responses (server-sent events) reach the sandbox as they come
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			// Cut off (budget, upstream failure): abort, so the client sees a broken response
			// rather than a complete short one.
			panic(http.ErrAbortHandler)
		}
	}
}

func reqEvent(r *http.Request, dst netip.AddrPort) api.NetworkEvent {
	host, port := splitHost(r.Host, "")
	if port == 0 {
		port = int(dst.Port())
	}
	return api.NetworkEvent{Host: canonName(host), Port: port, Method: r.Method, Path: r.URL.Path}
}

// send is the one path every HTTP request takes (intercepted plain HTTP, inspected TLS, the nano
// bridge). Refusals come back as synthesised responses, already recorded; a forwarded response
// records its event when its body is done; an error is a destination that failed (recorded too).
func (p *Proxy) send(ctx context.Context, g Guard, r *http.Request, scheme string, dst netip.AddrPort) (*http.Response, error) {
	// The port: the Host header's, else the one the sandbox dialled, else the scheme's.
	host, port := splitHost(r.Host, "")
	if port == 0 && dst.IsValid() {
		port = int(dst.Port())
	}
	if port == 0 {
		_, port = splitHost("", scheme)
	}
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	d := g.Decide(netpolicy.Request{Host: host, Port: port, Addr: dst, Method: r.Method, Path: path})
	target := d.Host // canonical, as the policy matched it
	if target == "" {
		target = canonName(host)
	}
	ev := api.NetworkEvent{Host: target, Port: port, Method: r.Method, Path: r.URL.Path,
		Verdict: d.Verdict, Rule: d.Rule, Source: d.Source, Reason: d.Reason}
	if !d.Allow {
		return p.refuse(g, ev, http.StatusForbidden, api.VerdictDenied, d.Rule, d.Reason), nil
	}
	if ev.Verdict == "" {
		ev.Verdict = api.VerdictAllowed
	}

	body, err := readBody(r, p.cfg.maxBody())
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return p.refuse(g, ev, http.StatusRequestEntityTooLarge, api.VerdictDenied, ruleBodyLimit,
				fmt.Sprintf("request bodies above %d bytes are not forwarded", p.cfg.maxBody())), nil
		}
		return p.refuse(g, ev, http.StatusBadRequest, api.VerdictDenied, "http:bad-body", err.Error()), nil
	}
	ev.BytesOut = int64(len(body))
	if d.Budget > 0 && int64(len(body)) > d.Budget {
		return p.refuse(g, ev, http.StatusForbidden, api.VerdictDenied, d.Rule,
			fmt.Sprintf("byte budget of %d exhausted", d.Budget)), nil
	}

	// The sandbox's own request is checked before the proxy adds anything to it: a brokered value
	// may only ever reach the host it is for.
	secrets := g.Secrets(target)
	own := map[string]bool{}
	for _, s := range secrets {
		own[s.Value] = true
	}
	for _, v := range g.SecretValues() {
		if !own[v] && leaks(r, body, v) {
			ev.Detectors = []string{detectorSecret}
			return p.refuse(g, ev, http.StatusUnavailableForLegalReasons, api.VerdictBlockedDLP, ruleSecretLeak,
				"the request carries a brokered secret of another host"), nil
		}
	}
	mode, scanResponses := g.DLP()
	if mode == api.DLPOff {
		mode = ""
	}
	if mode != "" {
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		if resp := p.scanRequest(g, &ev, r, mode); resp != nil {
			return resp, nil
		}
		if ev.Verdict == api.VerdictRedacted {
			if body, err = readBody(r, p.cfg.maxBody()+1<<20); err != nil {
				return p.refuse(g, ev, http.StatusUnavailableForLegalReasons, api.VerdictBlockedDLP, ruleDLPError, err.Error()), nil
			}
			ev.BytesOut = int64(len(body))
		}
	}

	out, err := http.NewRequestWithContext(ctx, r.Method, (&url.URL{
		Scheme: scheme, Host: joinHost(target, port, scheme), Opaque: r.URL.Opaque,
		Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery,
	}).String(), bytes.NewReader(body))
	if err != nil {
		return p.refuse(g, ev, http.StatusBadRequest, api.VerdictDenied, "http:bad-request", err.Error()), nil
	}
	out.Header = r.Header.Clone()
	hop.Remove(out.Header)
	out.ContentLength = int64(len(body))
	if len(body) == 0 {
		out.Body = http.NoBody
	}
	if scheme == "https" {
		for _, s := range secrets {
			out.Header.Set(s.Header, s.Value) // replaces whatever the sandbox sent under that name
		}
	} else if len(secrets) > 0 {
		// A brokered secret never crosses the network in clear text.
		for _, s := range secrets {
			out.Header.Del(s.Header)
		}
		ev.Reason = "brokered secrets are injected over HTTPS only; this request went without them"
	}
	resp, err := p.transportFor(g).RoundTrip(out)
	if err != nil {
		if rf, ok := refusalOf(err); ok && !strings.HasPrefix(rf.rule, "resolve:") {
			return p.refuse(g, ev, http.StatusForbidden, api.VerdictDenied, rf.rule, rf.reason), nil
		}
		// Not a refusal: the destination failed (resolution, dial, TLS verification, cancellation).
		ev.Verdict, ev.Rule, ev.Source, ev.Reason = api.VerdictDenied, ruleUpstream, "", err.Error()
		p.record(g, ev)
		return nil, fmt.Errorf("egress: %s: %w", target, err)
	}
	hop.Remove(resp.Header)
	if scanResponses && mode != "" {
		if refused := p.scanResponse(g, &ev, resp, mode); refused != nil {
			return refused, nil
		}
	}
	var left int64 = -1
	if d.Budget > 0 {
		left = d.Budget - ev.BytesOut
	}
	resp.Body = &eventBody{rc: resp.Body, left: left, done: func(in int64, over bool) {
		ev.BytesIn = in
		if over {
			ev.Verdict, ev.Reason = api.VerdictDenied, fmt.Sprintf("byte budget of %d exhausted", d.Budget)
		}
		p.met.bytes(ev.BytesOut, in)
		p.record(g, ev)
	}}
	return resp, nil
}

// scanRequest runs DLP on r; a non-nil response is the refusal to send instead.
func (p *Proxy) scanRequest(g Guard, ev *api.NetworkEvent, r *http.Request, mode string) *http.Response {
	if p.cfg.Inspector == nil {
		if mode == api.DLPLog {
			return nil
		}
		return p.refuse(g, *ev, http.StatusUnavailableForLegalReasons, api.VerdictBlockedDLP, ruleDLPMissing,
			"the policy asks for DLP but this server has no DLP engine")
	}
	rep, err := p.cfg.Inspector.ScanRequest(r, mode)
	if err != nil && mode == api.DLPLog {
		ev.Reason = fmt.Sprintf("DLP could not scan the request: %v", err) // log mode never blocks
		return nil
	}
	if err != nil {
		return p.refuse(g, *ev, http.StatusUnavailableForLegalReasons, api.VerdictBlockedDLP, ruleDLPError,
			fmt.Sprintf("DLP could not scan the request: %v", err))
	}
	return p.applyReport(g, ev, rep)
}

func (p *Proxy) scanResponse(g Guard, ev *api.NetworkEvent, resp *http.Response, mode string) *http.Response {
	if p.cfg.Inspector == nil {
		if mode == api.DLPLog {
			return nil
		}
		resp.Body.Close()
		return p.refuse(g, *ev, http.StatusUnavailableForLegalReasons, api.VerdictBlockedDLP, ruleDLPMissing,
			"the policy asks for DLP but this server has no DLP engine")
	}
	rep, err := p.cfg.Inspector.ScanResponse(resp, mode)
	if err != nil && mode == api.DLPLog {
		ev.Reason = fmt.Sprintf("DLP could not scan the response: %v", err)
		return nil
	}
	if err != nil {
		resp.Body.Close()
		return p.refuse(g, *ev, http.StatusUnavailableForLegalReasons, api.VerdictBlockedDLP, ruleDLPError,
			fmt.Sprintf("DLP could not scan the response: %v", err))
	}
	if refused := p.applyReport(g, ev, rep); refused != nil {
		resp.Body.Close()
		return refused
	}
	if rep.Redacted {
		resp.Header.Del("Content-Length")
		if resp.ContentLength >= 0 {
			resp.Header.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		}
	}
	return nil
}

// applyReport folds a DLP report into ev; a non-nil response is the 451 to answer with.
func (p *Proxy) applyReport(g Guard, ev *api.NetworkEvent, rep DLPReport) *http.Response {
	for _, f := range rep.Findings {
		if !containsStr(ev.Detectors, f.Type) {
			ev.Detectors = append(ev.Detectors, f.Type)
		}
	}
	switch {
	case rep.Blocked:
		rule := "dlp"
		if len(rep.Findings) > 0 {
			rule = "dlp:" + rep.Findings[0].Type
		}
		reason := rep.Reason
		if reason == "" {
			reason = "DLP found " + strings.Join(ev.Detectors, ", ")
		}
		return p.refuse(g, *ev, http.StatusUnavailableForLegalReasons, api.VerdictBlockedDLP, rule, reason)
	case rep.Redacted:
		ev.Verdict = api.VerdictRedacted
	}
	return nil
}

func containsStr(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// refuse records ev as refused by rule and returns the answer the sandbox gets.
func (p *Proxy) refuse(g Guard, ev api.NetworkEvent, status int, verdict, rule, reason string) *http.Response {
	if rule == "" {
		rule = "default:deny"
	}
	if rule != ev.Rule {
		ev.Source = "" // the refusal is the proxy's own, not the rule or grant that allowed the host
	}
	ev.Verdict, ev.Rule, ev.Reason = verdict, rule, reason
	p.record(g, ev)
	return answer(ev.Host, status, rule, reason)
}

// answer is the proxy's own response to the sandbox: status, the rule in X-Agentbox-Rule and a body.
func answer(host string, status int, rule, reason string) *http.Response {
	msg := fmt.Sprintf("agentbox egress: %s refused by rule %s: %s\n", host, rule, reason)
	if status == http.StatusBadGateway {
		msg = fmt.Sprintf("agentbox egress: %s failed (%s): %s\n", host, rule, reason)
	}
	return &http.Response{
		StatusCode:    status,
		Status:        fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Agentbox-Rule": {rule}},
		Body:          io.NopCloser(strings.NewReader(msg)),
		ContentLength: int64(len(msg)),
	}
}

var errTooLarge = errors.New("egress: request body too large")

func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	defer r.Body.Close()
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("egress: reading the request body: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, errTooLarge
	}
	return b, nil
}

// leaks reports whether the sandbox's request carries value (a brokered secret) or its token part,
// raw, percent-encoded or base64-encoded, in its URL, headers or body.
func leaks(r *http.Request, body []byte, value string) bool {
	var needles []string
	for _, v := range []string{value, lastField(value)} {
		if len(v) < 8 {
			continue // too short to tell from ordinary text
		}
		needles = append(needles, v, url.QueryEscape(v), base64.StdEncoding.EncodeToString([]byte(v)),
			base64.RawURLEncoding.EncodeToString([]byte(v)))
	}
	hay := []string{r.URL.String(), r.Host}
	if u, err := url.PathUnescape(r.URL.RawQuery); err == nil {
		hay = append(hay, u)
	}
	for k, vs := range r.Header {
		hay = append(hay, k)
		hay = append(hay, vs...)
	}
	for _, n := range needles {
		if bytes.Contains(body, []byte(n)) {
			return true
		}
		for _, h := range hay {
			if strings.Contains(h, n) {
				return true
			}
		}
	}
	return false
}

func lastField(s string) string {
	f := strings.Fields(s)
	if len(f) < 2 {
		return ""
	}
	return f[len(f)-1]
}

// eventBody counts a forwarded response's bytes, cuts it at the budget, and reports once at EOF or
// Close.
type eventBody struct {
	rc   io.ReadCloser
	left int64 // bytes still allowed; -1: no budget
	done func(in int64, over bool)

	mu   sync.Mutex
	n    int64 // guarded by mu
	over bool  // guarded by mu
	once sync.Once
}

var errBudget = errors.New("egress: byte budget exhausted")

func (b *eventBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.over {
		b.mu.Unlock()
		return 0, errBudget
	}
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	b.mu.Lock()
	if b.left >= 0 && b.n+int64(n) > b.left {
		n = int(max(b.left-b.n, 0))
		b.over, err = true, errBudget
	}
	b.n += int64(n)
	b.mu.Unlock()
	if err != nil {
		b.finish()
	}
	return n, err
}

func (b *eventBody) Close() error {
	err := b.rc.Close()
	b.finish()
	return err
}

func (b *eventBody) finish() {
	b.once.Do(func() {
		b.mu.Lock()
		n, over := b.n, b.over
		b.mu.Unlock()
		b.done(n, over)
	})
}

// canonName lower-cases and strips one trailing dot: the proxy's own comparisons (Host against SNI,
// secret hosts); the policy canonicalises names fully before matching.
func canonName(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

func hostOnly(hostport string) string {
	h, _ := splitHost(hostport, "")
	return h
}

// splitHost splits "host[:port]" (brackets kept off IPv6), defaulting the port by scheme.
func splitHost(hostport, scheme string) (string, int) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		host, ps = hostport, ""
	}
	port, _ := strconv.Atoi(ps)
	if port == 0 {
		switch scheme {
		case "http":
			port = 80
		case "https":
			port = 443
		}
	}
	return trimBrackets(host), port
}

func joinHost(host string, port int, scheme string) string {
	if (scheme == "http" && port == 80) || (scheme == "https" && port == 443) || port == 0 {
		if strings.Contains(host, ":") {
			return "[" + host + "]"
		}
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// connListener serves exactly one connection to an http.Server, then reports closed once the
// server is done with that connection (http.Server.ConnState calls closed).
type connListener struct {
	mu   sync.Mutex
	c    net.Conn // guarded by mu: nil once handed out
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newConnListener(c net.Conn) *connListener {
	return &connListener{c: c, done: make(chan struct{}), addr: c.LocalAddr()}
}

func (l *connListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *connListener) closed()        { l.once.Do(func() { close(l.done) }) }
func (l *connListener) Close() error   { return nil }
func (l *connListener) Addr() net.Addr { return l.addr }
