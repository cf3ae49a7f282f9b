package nano

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/sys"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/hop"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/vfs"
)

// HTTP sends one HTTP request of a nano sandbox's program under g, the sandbox's Guard, through the
// egress data plane's code path (decide, resolve, SSRF checks, secrets, DLP, events). A request the
// policy refuses comes back as a response (403 or 451 with a body naming the rule), as an HTTP
// client behind the proxy sees it; the error is for failures to get any response. Cancelling ctx
// stops the request. The bridge reads and closes the response body.
type HTTP interface {
	RoundTrip(ctx context.Context, g *netpolicy.Guard, req *http.Request) (*http.Response, error)
}

// HTTPFunc adapts a function to HTTP, e.g. a data plane whose RoundTrip takes its own Guard
// interface: HTTPFunc(func(ctx context.Context, g *netpolicy.Guard, r *http.Request) (*http.Response,
// error) { return proxy.RoundTrip(ctx, g, r) }).
type HTTPFunc func(ctx context.Context, g *netpolicy.Guard, req *http.Request) (*http.Response, error)

// RoundTrip calls f.
func (f HTTPFunc) RoundTrip(ctx context.Context, g *netpolicy.Guard, req *http.Request) (*http.Response, error) {
	return f(ctx, g, req)
}

// The guest's side of the bridge: runner.py's _bridge_exchange opens BridgeDevice, writes one request
// and reads the reply until EOF. See docs/egress-nano.md.
const (
	bridgeDir    = "/dev/agentbox"
	bridgeName   = "http"
	BridgeDevice = bridgeDir + "/" + bridgeName

	defaultHTTPRequest  = 8 << 20
	defaultHTTPResponse = 32 << 20
	// bridgeHeadroom is what a request may carry beyond its body cap: the meta line and the request
	// line and headers.
	bridgeHeadroom = 1 << 20
	// maxBridgeOpen bounds the device's open handles per sandbox, each holding up to a request's and a
	// response's cap in host memory; the guest's own code opens one at a time.
	maxBridgeOpen = 4
)

// bridgeMeta is the first line the guest writes: where the request goes (the connection http.client
// would have opened) and its own timeout.
type bridgeMeta struct {
	Scheme  string  `json:"scheme"`
	Host    string  `json:"host"`
	Port    int     `json:"port"`
	Timeout float64 `json:"timeout"` // seconds; zero or less: none but the run's deadline
}

// bridgeStatus is the first line of the reply; a raw HTTP/1.1 response follows when Error is empty.
type bridgeStatus struct {
	Error string `json:"error,omitempty"`
	// Kind classifies Error for the guest's exception: "timeout", "too_large", "offline",
	// "invalid" or "connect".
	Kind string `json:"kind,omitempty"`
}

// bridgeDevice is the sandbox's /dev/agentbox/http.
type bridgeDevice struct{ inst *instance }

func (d bridgeDevice) Open(experimentalsys.Oflag) (experimentalsys.File, experimentalsys.Errno) {
	if d.inst.bridgeOpen.Add(1) > maxBridgeOpen {
		d.inst.bridgeOpen.Add(-1)
		return nil, experimentalsys.EAGAIN
	}
	return &bridgeFile{inst: d.inst}, 0
}

// bridgeFile is one open of the device: the request is written, the first read sends it and the
// reads return the reply. It is used by the goroutine running the guest (wazero runs host calls on
// it), and closed by the module's Close once the guest no longer runs, so it has no lock.
type bridgeFile struct {
	experimentalsys.UnimplementedFile
	inst   *instance
	req    bytes.Buffer
	over   bool   // the request passed its cap; what follows is dropped
	reply  []byte // nil until the first read
	off    int
	closed bool
}

func (f *bridgeFile) Stat() (sys.Stat_t, experimentalsys.Errno) {
	if f.closed {
		return sys.Stat_t{}, experimentalsys.EBADF
	}
	return sys.Stat_t{Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, Nlink: 1}, 0
}

func (f *bridgeFile) Write(p []byte) (int, experimentalsys.Errno) {
	switch {
	case f.closed:
		return 0, experimentalsys.EBADF
	case f.reply != nil:
		return 0, experimentalsys.EINVAL // one request per open
	}
	if !f.over {
		if int64(f.req.Len()+len(p)) > f.inst.eng.httpMaxRequest()+bridgeHeadroom {
			f.over = true
			f.req = bytes.Buffer{}
		} else {
			f.req.Write(p)
		}
	}
	return len(p), 0
}

func (f *bridgeFile) Read(p []byte) (int, experimentalsys.Errno) {
	if f.closed {
		return 0, experimentalsys.EBADF
	}
	if f.reply == nil {
		if f.over {
			f.reply = statusLine(bridgeStatus{Kind: "too_large", Error: fmt.Sprintf("the request is larger than the nano bridge's %d byte cap", f.inst.eng.httpMaxRequest())})
		} else {
			f.reply = f.inst.bridge(f.req.Bytes())
		}
		f.req = bytes.Buffer{}
	}
	n := copy(p, f.reply[f.off:])
	f.off += n
	return n, 0
}

func (f *bridgeFile) Close() experimentalsys.Errno {
	if !f.closed {
		f.closed = true
		f.req, f.reply = bytes.Buffer{}, nil
		f.inst.bridgeOpen.Add(-1)
	}
	return 0
}

func statusLine(s bridgeStatus) []byte {
	b, _ := json.Marshal(s)
	return append(b, '\n')
}

func (e *Engine) httpMaxRequest() int64 {
	if e.cfg.HTTPMaxRequestBytes > 0 {
		return e.cfg.HTTPMaxRequestBytes
	}
	return defaultHTTPRequest
}

func (e *Engine) httpMaxResponse() int64 {
	if e.cfg.HTTPMaxResponseBytes > 0 {
		return e.cfg.HTTPMaxResponseBytes
	}
	return defaultHTTPResponse
}

// networked says whether a program under g has the bridge: a Guard with a policy (nil is offline,
// netpolicy.Guard.Policy) and an HTTP to send through.
func networked(g *netpolicy.Guard, h HTTP) bool {
	return g != nil && h != nil && g.Policy() != nil
}

// bridge sends the request the guest wrote through the engine's HTTP under the run's Guard and
// returns the reply for the guest. While it waits the run gives its CPU slot up, as a sleep does.
// When the run's context ends meanwhile (deadline, output cap, cancellation, Close) it stops the
// guest as instance.sleep does; the guest's own timeout only fails the request.
func (inst *instance) bridge(raw []byte) []byte {
	c := inst.cur
	h := inst.eng.cfg.HTTP
	if c.ctx == nil || !networked(c.guard, h) {
		return statusLine(bridgeStatus{Kind: "offline", Error: "network access is not available in this sandbox (no network policy)"})
	}
	out, meta, refusal, err := parseBridgeRequest(raw, inst.eng.httpMaxRequest())
	if err != nil {
		return statusLine(bridgeStatus{Kind: "invalid", Error: err.Error()})
	}
	if refusal != nil {
		c.guard.Record(*refusal)
		return refusalReply(refusal)
	}
	ctx, cancel := c.ctx, context.CancelFunc(func() {})
	if meta.Timeout > 0 {
		// No run lasts longer than maxTimeout; the clamp keeps a huge value from overflowing.
		ctx, cancel = context.WithTimeout(ctx, time.Duration(min(meta.Timeout, maxTimeout.Seconds())*float64(time.Second)))
	}
	defer cancel()

	gaveUp := c.slot != nil && c.slot.sleep()
	inst.sent++
	reply := inst.roundTrip(ctx, h, c.guard, out)
	var stopped error
	if err := context.Cause(c.ctx); err != nil {
		stopped = err
	}
	if gaveUp {
		stopped = c.slot.wake(c.ctx, stopped)
	}
	if stopped != nil {
		stopGuest(stopped)
	}
	return reply
}

// roundTrip makes the request and writes the reply.
func (inst *instance) roundTrip(ctx context.Context, h HTTP, g *netpolicy.Guard, req *http.Request) []byte {
	// ctx is done here only for the guest's own timeout: when the run's context ends, bridge stops
	// the guest and the reply is never read.
	resp, err := h.RoundTrip(ctx, g, req.WithContext(ctx))
	if err != nil {
		if ctx.Err() != nil {
			return statusLine(bridgeStatus{Kind: "timeout", Error: "timed out"})
		}
		return statusLine(bridgeStatus{Kind: "connect", Error: fmt.Sprintf("%s %s: %v", req.Method, req.URL.Redacted(), err)})
	}
	defer resp.Body.Close()
	max := inst.eng.httpMaxResponse()
	body, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	switch {
	case err != nil && ctx.Err() != nil:
		return statusLine(bridgeStatus{Kind: "timeout", Error: "timed out reading the response"})
	case err != nil:
		return statusLine(bridgeStatus{Kind: "connect", Error: fmt.Sprintf("reading the response of %s %s: %v", req.Method, req.URL.Redacted(), err)})
	case int64(len(body)) > max:
		return statusLine(bridgeStatus{Kind: "too_large", Error: fmt.Sprintf("the response of %s %s is larger than the nano bridge's %d byte cap", req.Method, req.URL.Redacted(), max)})
	}
	var b bytes.Buffer
	b.Write(statusLine(bridgeStatus{}))
	writeResponse(&b, req.Method, resp, body)
	return b.Bytes()
}

// stopGuest unwinds the guest from a host call because its run's context ended (err is why), as
// WithCloseOnContextDone does for running code: Python cannot catch it, and the call into the guest
// returns an error that exec reads by the context's cause.
func stopGuest(err error) {
	if errors.Is(err, ErrClosed) {
		panic(ErrClosed)
	}
	panic(sys.NewExitError(sys.ExitCodeContextCanceled))
}

// parseBridgeRequest reads the meta line and the raw HTTP/1.1 request after it into the request to
// send. A request whose Host header names another host than its destination is refused (domain
// fronting): refusal is then the event to record, and the guest gets a 403 naming it.
func parseBridgeRequest(raw []byte, maxBody int64) (*http.Request, bridgeMeta, *api.NetworkEvent, error) {
	var meta bridgeMeta
	line, rest, ok := bytes.Cut(raw, []byte("\n"))
	if !ok {
		return nil, meta, nil, errors.New("nano bridge: the request has no meta line")
	}
	if err := json.Unmarshal(line, &meta); err != nil {
		return nil, meta, nil, fmt.Errorf("nano bridge: unreadable meta line: %w", err)
	}
	if meta.Scheme != "http" && meta.Scheme != "https" {
		return nil, meta, nil, fmt.Errorf("nano bridge: scheme %q is not http or https", meta.Scheme)
	}
	if meta.Port < 1 || meta.Port > 65535 {
		return nil, meta, nil, fmt.Errorf("nano bridge: port %d is out of range", meta.Port)
	}
	host := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(meta.Host, "["), "]"), ".")
	if host == "" || strings.ContainsAny(host, "/?#@ \t\r\n\\%") {
		return nil, meta, nil, fmt.Errorf("nano bridge: %q is not a host name", meta.Host)
	}
	in, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(rest)))
	if err != nil {
		return nil, meta, nil, fmt.Errorf("nano bridge: unreadable HTTP request: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(in.Body, maxBody+1))
	if err != nil {
		return nil, meta, nil, fmt.Errorf("nano bridge: unreadable request body: %w", err)
	}
	if int64(len(body)) > maxBody {
		return nil, meta, nil, fmt.Errorf("nano bridge: the request body is larger than the %d byte cap", maxBody)
	}
	if in.URL.IsAbs() || in.URL.Host != "" {
		return nil, meta, nil, fmt.Errorf("nano bridge: request target %q must be a path (origin form), not a URL", in.RequestURI)
	}
	authority := host
	if strings.Contains(host, ":") {
		authority = "[" + host + "]"
	}
	if def := map[string]int{"http": 80, "https": 443}[meta.Scheme]; meta.Port != def {
		authority = net.JoinHostPort(host, strconv.Itoa(meta.Port))
	}
	u := &url.URL{Scheme: meta.Scheme, Host: authority, Path: in.URL.Path, RawPath: in.URL.RawPath, RawQuery: in.URL.RawQuery}
	if in.Host != "" {
		name := in.Host
		if h, _, err := net.SplitHostPort(name); err == nil {
			name = h
		}
		name = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(name, "["), "]"), ".")
		if !strings.EqualFold(name, host) {
			return nil, meta, &api.NetworkEvent{Host: host, Port: meta.Port, Method: in.Method, Path: in.URL.Path,
				Verdict: api.VerdictDenied, Rule: "nano:host-mismatch",
				Reason: fmt.Sprintf("the Host header names %q but the request goes to %q", in.Host, host)}, nil
		}
	}
	out, err := http.NewRequest(in.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, meta, nil, fmt.Errorf("nano bridge: %w", err)
	}
	out.Header = in.Header
	hop.Remove(out.Header)
	return out, meta, nil, nil
}

// refusalReply is the 403 the guest gets for a request the bridge itself refused.
func refusalReply(e *api.NetworkEvent) []byte {
	body := fmt.Sprintf("agentbox: request denied by rule %s: %s\n", e.Rule, e.Reason)
	resp := &http.Response{StatusCode: http.StatusForbidden, Status: "403 Forbidden",
		Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Agentbox-Rule": {e.Rule}}}
	var b bytes.Buffer
	b.Write(statusLine(bridgeStatus{}))
	writeResponse(&b, e.Method, resp, []byte(body))
	return b.Bytes()
}

// writeResponse writes resp with body as an HTTP/1.1 response that closes its connection, so that
// http.client reads exactly one.
func writeResponse(w *bytes.Buffer, method string, resp *http.Response, body []byte) {
	status := resp.Status
	if code, _, _ := strings.Cut(status, " "); code != strconv.Itoa(resp.StatusCode) || status == "" {
		status = strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
	}
	fmt.Fprintf(w, "HTTP/1.1 %s\r\n", status)
	h := resp.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	hop.Remove(h)
	if method != http.MethodHead {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	h.Set("Connection", "close")
	h.Write(w)
	w.WriteString("\r\n")
	if method != http.MethodHead {
		w.Write(body)
	}
}

var _ vfs.Device = bridgeDevice{}
