// Package e2b speaks E2B's protocol, so that the official E2B SDKs work unchanged against agentbox
// with E2B_API_URL=http://HOST:PORT/e2b/api, E2B_SANDBOX_URL=http://HOST:PORT/e2b/sandbox and
// E2B_API_KEY=<an agentbox API key> (docs/e2b.md).
//
// A Handler serves three surfaces under those two prefixes:
//   - the control plane (/e2b/api): create, get, list, kill, timeout, connect. An E2B sandbox is an
//     agentbox session, and its E2B timeout an absolute lifetime: the sandbox is killed at its deadline.
//   - the code interpreter (/e2b/sandbox, E2b-Sandbox-Port 49999): POST /execute as an NDJSON stream
//     and the /contexts; the default context is the sandbox's session, a new context a child session.
//   - envd (/e2b/sandbox, E2b-Sandbox-Port 49983): /health, /files and the connect-rpc services
//     filesystem.Filesystem and process.Process.
//
// Sandbox requests are routed by the E2b-Sandbox-Id and E2b-Sandbox-Port headers (which the SDKs send
// when E2B_SANDBOX_URL is set) and authorised by the sandbox's X-Access-Token, or, on requests that
// carry none, by the API key.
package e2b

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// The ports the SDKs name in E2b-Sandbox-Port.
const (
	PortEnvd    = "49983"
	PortJupyter = "49999"
)

// Prefixes the Handler serves under (its URLs are these plus E2B's own paths).
const (
	APIPrefix     = "/e2b/api"
	SandboxPrefix = "/e2b/sandbox"
)

// EnvdVersion is the envd version advertised to the SDKs. It decides what they send: 0.5.7 and
// later may upload files as application/octet-stream (both upload forms are served); below 0.4.0 the
// SDK would add Basic auth and username parameters; metadata headers (0.6.2) are not served.
const EnvdVersion = "0.5.7"

// Session is what this package needs of an agentbox session (*dispatch.Session has it all).
type Session interface {
	ID() string
	Info() api.Session
	Run(ctx context.Context, code string, out dispatch.Output) (*api.Result, error)
	WriteFile(ctx context.Context, p string, data []byte) error
	ReadFile(ctx context.Context, p string, max int64) ([]byte, error)
	ListFiles(ctx context.Context, dir string) ([]api.FileInfo, error)
	Close()

	// Shell commands (heavy; a tier-auto session moves there for its first one).
	Command(ctx context.Context, req api.CommandRequest, out dispatch.Output) (*api.Command, error)
	Commands(ctx context.Context) ([]api.Command, error)
	CommandInput(ctx context.Context, pid int, in api.CommandInput) error
	CommandSignal(ctx context.Context, pid int, sig string) error
	CommandFollow(ctx context.Context, pid int, fn func(stdout, stderr string)) (*api.Command, error)

	// Time travel: E2B's fork and snapshots.
	Steps() api.StepList
	Fork(ctx context.Context, req api.ForkRequest) (Session, error)
	Pin(n int, pin bool) error
}

// Sandboxes starts and finds sessions for the tenant the context acts for (dispatch.TenantOf).
type Sandboxes interface {
	NewSession(ctx context.Context, req api.SessionRequest) (Session, error)
	Session(ctx context.Context, id string) (Session, error)
}

// DispatchSessions is the part of *dispatch.Dispatcher that FromDispatch adapts.
type DispatchSessions interface {
	NewSession(ctx context.Context, req api.SessionRequest) (*dispatch.Session, error)
	Session(ctx context.Context, id string) (*dispatch.Session, error)
}

// FromDispatch serves Sandboxes from agentbox's dispatcher.
func FromDispatch(d DispatchSessions) Sandboxes { return dispatchSandboxes{d} }

type dispatchSandboxes struct{ d DispatchSessions }

func (a dispatchSandboxes) NewSession(ctx context.Context, req api.SessionRequest) (Session, error) {
	s, err := a.d.NewSession(ctx, req)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return dispatchSession{s}, nil
}

func (a dispatchSandboxes) Session(ctx context.Context, id string) (Session, error) {
	s, err := a.d.Session(ctx, id)
	if err != nil {
		return nil, err
	}
	return dispatchSession{s}, nil
}

// dispatchSession is a *dispatch.Session whose forks are Sessions too.
type dispatchSession struct{ *dispatch.Session }

func (s dispatchSession) Fork(ctx context.Context, req api.ForkRequest) (Session, error) {
	f, err := s.Session.Fork(ctx, req)
	if err != nil {
		return nil, err
	}
	return dispatchSession{f}, nil
}

// Config configures a Handler. Zero values are the defaults given per field.
type Config struct {
	// Authenticate names the tenant the request's API key stands for (sent as X-API-KEY, as the SDKs
	// do, or as Authorization: Bearer); it returns an error classed errdefs.Unauthenticated when the
	// key is missing or wrong, errdefs.Forbidden when the key may not use sandboxes. nil means a server
	// without keys: every request is the local tenant.
	Authenticate func(r *http.Request) (dispatch.Tenant, error)
	// Logger receives sandbox kills at their deadline; nil discards.
	Logger *slog.Logger
	// DefaultTimeout is a sandbox's lifetime when create names none; zero means 300 s (E2B's).
	DefaultTimeout time.Duration
	// MaxTimeout caps a requested lifetime; zero means 24 h (E2B's maximum, and agentbox's longest
	// session TTL).
	MaxTimeout time.Duration
	// Keepalive is how often a silent /execute stream gets a keepalive line; zero means 10 s.
	Keepalive time.Duration
	// MaxFileBytes caps a file read through GET /files; zero means 64 MiB.
	MaxFileBytes int64
	// ClientID is the clientID answered on create (the SDKs require the field); empty means "agentbox".
	ClientID string
}

// Handler serves the E2B surface. Mount it at "/e2b/" (and, for the SDK's signed file URLs, which drop
// the path prefix, at "/files"); it serves the paths under APIPrefix and SandboxPrefix.
type Handler struct {
	cfg Config
	sb  Sandboxes
	log *slog.Logger

	api, jupyter, envd *http.ServeMux

	mu    sync.Mutex
	boxes map[string]*sandbox  // by sandbox id; guarded by mu
	snaps map[string]*snapshot // by snapshot id; guarded by mu
}

// New returns a Handler serving sb.
func New(sb Sandboxes, cfg Config) *Handler {
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = 300 * time.Second
	}
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = 24 * time.Hour
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 10 * time.Second
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = 64 << 20
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "agentbox"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{cfg: cfg, sb: sb, log: log, boxes: map[string]*sandbox{}, snaps: map[string]*snapshot{}}
	h.api = h.apiRoutes()
	h.jupyter = h.jupyterRoutes()
	h.envd = h.envdRoutes()
	return h
}

// Close kills every sandbox (the sessions and their lifetime timers).
func (h *Handler) Close() {
	h.mu.Lock()
	all := make([]*sandbox, 0, len(h.boxes))
	for _, b := range h.boxes {
		all = append(all, b)
	}
	h.mu.Unlock()
	for _, b := range all {
		h.kill(b, "server closed")
	}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/files":
		h.signedFiles(w, r)
	case under(p, APIPrefix):
		h.serveAPI(w, r)
	case under(p, SandboxPrefix):
		h.serveSandbox(w, r)
	default:
		h.fail(w, errdefs.With(errdefs.NotFound, fmt.Errorf("no E2B route for %s %s: set E2B_API_URL to http://HOST:PORT%s and E2B_SANDBOX_URL to http://HOST:PORT%s", r.Method, limits.Text(p, 256), APIPrefix, SandboxPrefix)))
	}
}

func under(p, prefix string) bool {
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// strip serves r to mux without the prefix.
func strip(mux *http.ServeMux, prefix string, w http.ResponseWriter, r *http.Request) {
	r2 := new(http.Request)
	*r2 = *r
	u := *r.URL
	u.Path = strings.TrimPrefix(r.URL.Path, prefix)
	u.RawPath = ""
	if u.Path == "" {
		u.Path = "/"
	}
	r2.URL = &u
	mux.ServeHTTP(w, r2)
}

func (h *Handler) serveAPI(w http.ResponseWriter, r *http.Request) {
	t, err := h.authenticate(r)
	if err != nil {
		h.fail(w, err)
		return
	}
	r = r.WithContext(dispatch.WithTenant(r.Context(), t))
	strip(h.api, APIPrefix, w, r)
}

func (h *Handler) authenticate(r *http.Request) (dispatch.Tenant, error) {
	if h.cfg.Authenticate == nil {
		return dispatch.Tenant{}, nil
	}
	return h.cfg.Authenticate(r)
}

// sandboxCtx is the sandbox a request was routed to, in its context.
type sandboxCtx struct{}

func sandboxOf(ctx context.Context) *sandbox {
	b, _ := ctx.Value(sandboxCtx{}).(*sandbox)
	return b
}

// serveSandbox routes a request for a sandbox's envd or code interpreter by its headers, and
// authorises it: the sandbox's X-Access-Token, or, when the request carries none (the JS code
// interpreter's /contexts calls never do), an API key that may see the sandbox.
func (h *Handler) serveSandbox(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("E2b-Sandbox-Id")
	if id == "" {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, errors.New("no E2b-Sandbox-Id header: sandbox requests are routed by it, which the E2B SDKs send when E2B_SANDBOX_URL is set (e2b >= 2.14.1, @e2b/code-interpreter >= 2.7.0; docs/e2b.md)")))
		return
	}
	var mux *http.ServeMux
	switch port := r.Header.Get("E2b-Sandbox-Port"); port {
	case PortEnvd:
		mux = h.envd
	case PortJupyter:
		mux = h.jupyter
	default:
		h.fail(w, errdefs.With(errdefs.NotFound, fmt.Errorf("E2b-Sandbox-Port %q: agentbox serves envd (%s) and the code interpreter (%s), no other sandbox port", limits.Text(port, 32), PortEnvd, PortJupyter)))
		return
	}
	b, err := h.authorise(r, id)
	if err != nil {
		h.fail(w, err)
		return
	}
	ctx := dispatch.WithTenant(r.Context(), b.tenant)
	ctx = context.WithValue(ctx, sandboxCtx{}, b)
	strip(mux, SandboxPrefix, w, r.WithContext(ctx))
}

// errNoSandbox is the answer for a sandbox that does not exist, is another tenant's, or was killed.
func errNoSandbox(id string) error {
	return errdefs.With(errdefs.NotFound, fmt.Errorf("sandbox %q not found (unknown id, killed, or past its timeout)", limits.Text(id, 64)))
}

func (h *Handler) authorise(r *http.Request, id string) (*sandbox, error) {
	h.mu.Lock()
	b := h.boxes[id]
	h.mu.Unlock()
	if b == nil {
		return nil, errGone(id)
	}
	if tok := r.Header.Get("X-Access-Token"); tok != "" {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(b.token)) != 1 {
			// A wrong token for an existing sandbox reads the same as an unknown sandbox's.
			return nil, errdefs.With(errdefs.Unauthenticated, fmt.Errorf("X-Access-Token is not the envdAccessToken of sandbox %q", limits.Text(id, 64)))
		}
		return b, nil
	}
	t, err := h.authenticate(r)
	if err != nil {
		return nil, errdefs.With(errdefs.Unauthenticated, fmt.Errorf("this sandbox request carries no X-Access-Token, and no API key either (X-API-KEY or Authorization: Bearer): %w", err))
	}
	if !(t.Admin || t.ID == b.tenant.ID) {
		return nil, errGone(id)
	}
	return b, nil
}

// errSandboxGone marks a sandbox request for a sandbox that is not there: it answers 502, as E2B's
// proxy does, which the SDKs read as a sandbox past its timeout (isRunning is then false).
var errSandboxGone = errors.New("sandbox is gone")

func errGone(id string) error {
	return fmt.Errorf("sandbox %q: %w (unknown id, killed, or past its timeout)", limits.Text(id, 64), errSandboxGone)
}

// errUnsupported marks what agentbox does not do of E2B's API; it answers 501.
var errUnsupported = errors.New("not supported by agentbox")

func unsupported(what, why string) error {
	return fmt.Errorf("%s is %w: %s (docs/e2b.md)", what, errUnsupported, why)
}

// E2B's error body.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// fail answers err, logging an internal one's details.
func (h *Handler) fail(w http.ResponseWriter, err error) {
	if errdefs.ClassOf(err) == errdefs.Internal && !errors.Is(err, errUnsupported) && !errors.Is(err, errSandboxGone) {
		h.log.Error("e2b: internal error", "err", limits.Text(err.Error(), 16<<10))
	}
	writeError(w, err)
}

// writeError answers with E2B's {code, message} and the status the SDKs map: 401 AuthenticationError,
// 404 NotFoundError, 429 RateLimitError (retried after Retry-After), 503 ServiceBusyError; an
// internal error's details are the server log's, not the answer's.
func writeError(w http.ResponseWriter, err error) {
	status := errdefs.ClassOf(err).HTTPStatus()
	msg := err.Error()
	switch {
	case errors.Is(err, errUnsupported):
		status = http.StatusNotImplemented
	case errors.Is(err, errSandboxGone):
		status = http.StatusBadGateway
	case errors.Is(err, context.DeadlineExceeded):
		status = http.StatusBadGateway // the code interpreter SDK reads 502 as a TimeoutError
	case errdefs.ClassOf(err) == errdefs.Internal:
		msg = "internal error (the details are in the server's log)"
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, errorBody{Code: status, Message: limits.Text(msg, 4<<10)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// decodeJSON reads an optional JSON object body into v (an empty body leaves v as it is).
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errdefs.With(errdefs.TooLarge, fmt.Errorf("request body is larger than %d bytes", tooBig.Limit))
		}
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("invalid JSON body: %w", err))
	}
	return nil
}

func newToken(prefix string, n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}
